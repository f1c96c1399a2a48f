"""The gateway's exceptions and the one table of codes a client reads."""

from __future__ import annotations

import json
import re

from gateway.errors import AuthError, BadRequest, Code, ConfigError


def test_every_code_is_its_snake_case_string_on_the_wire() -> None:
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in Code)
    assert json.dumps({"error": Code.INVALID_TOPICS}) == '{"error": "invalid_topics"}'
    assert f"{Code.EXPIRED_TOKEN}" == "expired_token"


def test_the_contract_reasons_of_connect_error_are_codes() -> None:
    assert {"missing_token", "invalid_token", "expired_token", "too_many_connections"} <= set(Code)


def test_a_bad_request_is_the_contract_error_ack() -> None:
    ack = BadRequest(Code.INVALID_SINCE, "since must map topic names to seqs.").ack()
    assert json.loads(json.dumps(ack)) == {"ok": False, "error": "invalid_since",
                                           "message": "since must map topic names to seqs."}


def test_errors_name_what_is_wrong() -> None:
    assert str(ConfigError("GATEWAY_BIND", "must be HOST:PORT")) == "GATEWAY_BIND: must be HOST:PORT"
    assert AuthError(Code.INVALID_TOKEN, "not a JWT").reason == "invalid_token"
