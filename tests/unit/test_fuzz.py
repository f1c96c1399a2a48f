"""Property tests: whatever a client sends, each parser ends in its own refusal, never in another exception.

Hypothesis generates the input and, on a failure, shrinks it to the smallest
one that still fails. The ``ci`` profile is derandomized and bounded, so that
a run is the same on every machine; ``HYPOTHESIS_PROFILE=deep`` searches
longer on a developer's machine.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import TokenVerifier
from gateway.config import Config
from gateway.errors import AuthError, BadRequest, ClientMistake
from gateway.inbound import InboundLimits, engineio_refusal
from gateway.protocol import parse_subscribe, parse_unsubscribe, token_from
from gateway.sessions import StrictPacket
from gateway.websocket import WebSocket

settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CORPUS = json.loads((Path(__file__).parents[1] / "hostile_packets.json").read_text())
SEEDS = [case["packet"] for case in CORPUS["socketio_refused"]] + CORPUS["socketio_accepted"]
TOPICS = frozenset({"balance", "positions", "pnl", "orders"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
#: Text with lone surrogates and control characters, as a client's JSON may carry.
any_text = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF))
#: Seeds from the corpus, cut and spliced, and text from nothing.
packets = st.one_of(
    any_text,
    st.sampled_from(SEEDS),
    st.tuples(st.sampled_from(SEEDS), st.integers(0, 64), any_text).map(lambda t: t[0][: t[1]] + t[2]),
    st.tuples(st.sampled_from("0123456"), json_values).map(lambda t: t[0] + json.dumps(t[1])),
)


@given(packets)
def test_socketio_decoding_ends_in_a_client_mistake_or_a_packet(encoded: str) -> None:
    try:
        packet = StrictPacket(encoded_packet=encoded)
    except ClientMistake as exc:
        assert exc.reason in ("bad_packet", "binary")
    else:
        assert packet.namespace in (None, "/")
        assert packet.packet_type in (0, 1, 2)


@given(any_text)
def test_engineio_refusal_is_a_reason_or_none(message: str) -> None:
    assert engineio_refusal(message) in (None, "bad_packet", "binary")


@given(json_values)
def test_subscribe_payloads_end_in_a_request_or_bad_request(payload: Any) -> None:
    try:
        request = parse_subscribe(payload, TOPICS)
    except BadRequest as exc:
        assert exc.code in ("invalid_payload", "invalid_topics", "invalid_since")
    else:
        assert set(request.topics) <= TOPICS


@given(json_values)
def test_unsubscribe_payloads_end_in_topics_or_bad_request(payload: Any) -> None:
    try:
        topics = parse_unsubscribe(payload, TOPICS)
    except BadRequest as exc:
        assert exc.code in ("invalid_payload", "invalid_topics")
    else:
        assert topics is None or set(topics) <= TOPICS


VERIFIER = TokenVerifier(Config.from_env({"GATEWAY_JWT_SECRET": "k" * 32}, server=False))
jwt_like = st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_=+/", max_size=40), min_size=1, max_size=4).map(".".join)


@given(st.one_of(any_text, jwt_like, json_values.map(lambda v: json.dumps(v))))
def test_any_token_ends_in_a_contract_reason(token: str) -> None:
    try:
        VERIFIER.verify(token)
    except AuthError as exc:
        assert exc.reason in ("missing_token", "invalid_token", "expired_token")


@given(json_values, st.one_of(st.none(), any_text), st.dictionaries(st.text(max_size=8), any_text, max_size=3))
def test_any_connect_payload_gives_a_token_or_none(auth: Any, header: str | None, query: dict[str, str]) -> None:
    token = token_from(auth, header, query)
    assert token is None or isinstance(token, str)


class _Peer:
    def send(self, data: bytes, flags: int = 0, timeout: float | None = None) -> int:
        return len(data)

    def shutdown(self, how: int) -> None:
        pass

    def settimeout(self, seconds: float) -> None:
        pass


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(st.binary(max_size=4096))
def test_the_websocket_reader_survives_any_bytes(data: bytes) -> None:
    ws = WebSocket({}, _Peer(), io.BufferedReader(io.BytesIO(data)), InboundLimits.for_messages_of(1024),
                   check=engineio_refusal)
    for _ in range(len(data) + 1):
        message = ws.receive()
        if message is None:
            break
        assert isinstance(message, str) and len(message.encode()) <= 1024
    assert ws.receive() is None
