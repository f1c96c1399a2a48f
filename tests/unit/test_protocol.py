"""The sans-I/O core: client payloads, names and the update envelope."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from pathlib import Path

import pytest

from gateway import protocol
from gateway.errors import BadRequest

ALLOWED = frozenset({"balance", "positions", "pnl", "orders"})
MALFORMED = json.loads((Path(__file__).parents[1] / "malformed_subscribe.json").read_text())


# -- subscribe ---------------------------------------------------------------


@pytest.mark.parametrize("case", MALFORMED, ids=[case["name"] for case in MALFORMED])
def test_malformed_subscribe_is_refused_with_its_code(case: dict[str, object]) -> None:
    with pytest.raises(BadRequest) as caught:
        protocol.parse_subscribe(case["payload"], ALLOWED)
    assert caught.value.code == case["error"]


def test_bad_request_ack_keeps_the_connection_informed() -> None:
    with pytest.raises(BadRequest) as caught:
        protocol.parse_subscribe(12, ALLOWED)
    ack = caught.value.ack()
    assert ack["ok"] is False
    assert ack["error"] == "invalid_payload"
    assert isinstance(ack["message"], str) and ack["message"]


def test_subscribe_object_with_topics_and_since() -> None:
    request = protocol.parse_subscribe({"topics": ["balance", "pnl"], "since": {"balance": 41}}, ALLOWED)
    assert request.topics == ("balance", "pnl")
    assert request.since == {"balance": 41}
    assert request.rejected == {}


def test_subscribe_object_without_since_has_no_marks() -> None:
    assert protocol.parse_subscribe({"topics": ["pnl"]}, ALLOWED).since == {}


def test_subscribe_bare_list() -> None:
    assert protocol.parse_subscribe(["orders", "balance"], ALLOWED).topics == ("orders", "balance")


def test_subscribe_single_string() -> None:
    assert protocol.parse_subscribe("pnl", ALLOWED).topics == ("pnl",)


def test_subscribe_object_with_single_string_topic() -> None:
    assert protocol.parse_subscribe({"topics": "pnl"}, ALLOWED).topics == ("pnl",)


def test_subscribe_dedupes_keeping_first_order() -> None:
    request = protocol.parse_subscribe(["pnl", "balance", "pnl", "balance", "orders"], ALLOWED)
    assert request.topics == ("pnl", "balance", "orders")


def test_subscribe_unknown_topics_are_rejected_one_by_one() -> None:
    request = protocol.parse_subscribe(["balance", "foo", "Bar_1"], ALLOWED)
    assert request.topics == ("balance",)
    assert request.rejected == {"foo": "unknown_topic", "Bar_1": "unknown_topic"}


def test_subscribe_only_unknown_topics_is_not_malformed() -> None:
    request = protocol.parse_subscribe(["foo"], ALLOWED)
    assert request.topics == ()
    assert request.rejected == {"foo": "unknown_topic"}


def test_subscribe_since_is_filtered_to_known_requested_topics() -> None:
    payload = {"topics": ["balance", "foo"], "since": {"balance": 3, "foo": 7, "orders": 2}}
    assert protocol.parse_subscribe(payload, ALLOWED).since == {"balance": 3}


def test_subscribe_since_zero_is_accepted() -> None:
    assert protocol.parse_subscribe({"topics": ["pnl"], "since": {"pnl": 0}}, ALLOWED).since == {"pnl": 0}


def test_subscribe_accepts_the_maximum_number_of_topics() -> None:
    names = [f"t{i}" for i in range(protocol.MAX_TOPICS_PER_REQUEST)]
    assert len(protocol.parse_subscribe(names, ALLOWED).rejected) == protocol.MAX_TOPICS_PER_REQUEST


# -- unsubscribe -------------------------------------------------------------


@pytest.mark.parametrize("payload", [None, {}, [], {"topics": None}, {"topics": []}], ids=repr)
def test_unsubscribe_without_topics_means_all(payload: object) -> None:
    assert protocol.parse_unsubscribe(payload, ALLOWED) is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"topics": ["pnl", "balance"]}, ("pnl", "balance")),
        (["orders"], ("orders",)),
        ("pnl", ("pnl",)),
        ({"topics": "pnl"}, ("pnl",)),
        (["pnl", "pnl"], ("pnl",)),
    ],
    ids=repr,
)
def test_unsubscribe_accepted_shapes(payload: object, expected: tuple[str, ...]) -> None:
    assert protocol.parse_unsubscribe(payload, ALLOWED) == expected


def test_unsubscribe_drops_unknown_topics() -> None:
    assert protocol.parse_unsubscribe(["pnl", "foo"], ALLOWED) == ("pnl",)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (5, "invalid_payload"),
        (True, "invalid_payload"),
        ([1], "invalid_topics"),
        ({"topics": 3}, "invalid_topics"),
        ({"topic": ["pnl"]}, "invalid_topics"),
    ],
    ids=repr,
)
def test_malformed_unsubscribe_is_refused(payload: object, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        protocol.parse_unsubscribe(payload, ALLOWED)
    assert caught.value.code == code


# -- user ids and rooms ------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(4, "4"), (0, "0"), (10**12, "1000000000000"), ("42", "42")])
def test_user_id_wire_form_is_a_string(value: object, expected: str) -> None:
    assert protocol.user_id(value) == expected


@pytest.mark.parametrize("value", ["alice@example.com", "u-1.a|b:c", "user_4", "A" * 128])
def test_user_id_accepts_allowed_characters(value: str) -> None:
    assert protocol.user_id(value) == value


@pytest.mark.parametrize("value", [True, False, 4.0, None, ["4"], b"4"], ids=repr)
def test_user_id_refuses_non_string_non_int(value: object) -> None:
    with pytest.raises(ValueError):
        protocol.user_id(value)


@pytest.mark.parametrize("value", ["", "a b", "a/b", "ü", "-lead", ".lead", "a\n", "A" * 129], ids=repr)
def test_user_id_refuses_bad_characters_and_length(value: str) -> None:
    with pytest.raises(ValueError):
        protocol.user_id(value)


def test_room_name_joins_topic_and_user() -> None:
    assert protocol.room_name("balance", "4") == "balance_4"


# -- update data and envelope ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"usd": Decimal("1.5")},
        {"at": datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)},
        {"raw": b"\x00"},
        {"ids": {1, 2}},
        {"usd": float("nan")},
        {"usd": float("inf")},
        {"usd": float("-inf")},
    ],
    ids=["decimal", "datetime", "bytes", "set", "nan", "inf", "-inf"],
)
def test_encode_data_refuses_what_json_cannot_carry(data: object) -> None:
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        protocol.encode_data(data)


def test_encode_data_keeps_unicode_unescaped() -> None:
    text = protocol.encode_data({"name": "Zoë ✓ 日本"})
    assert "Zoë ✓ 日本" in text
    assert json.loads(text) == {"name": "Zoë ✓ 日本"}


def _envelope(data: object, ts: float = 1764000000.123) -> protocol.Envelope:
    return protocol.update_envelope(topic="balance", user="4", ts=ts, data_json=protocol.encode_data(data))


def test_update_message_reads_back_as_the_update_it_carries() -> None:
    envelope = _envelope({"usd": "1020.50"})
    routed = protocol.parse_routed(envelope.with_seq(7).encode())
    assert (routed.topic, routed.user, routed.ts, routed.seq, routed.room) == (
        "balance", "4", 1764000000.123, 7, "balance_4"
    )
    assert json.loads(routed.payload) == {
        "topic": "balance",
        "user_id": "4",
        "seq": 7,
        "ts": 1764000000.123,
        "data": {"usd": "1020.50"},
    }


def test_update_message_carries_the_payload_kept_as_history_byte_for_byte() -> None:
    envelope = _envelope({"usd": "1", "note": "two\nlines"})
    assert protocol.parse_routed(envelope.with_seq(12)).payload == envelope.payload(12)


def test_routed_update_is_the_socketio_event_packet_clients_decode() -> None:
    routed = protocol.parse_routed(_envelope({"usd": "1"}).with_seq(3))
    packet = routed.socketio_packet()
    assert packet.startswith("2")
    assert json.loads(packet[1:]) == ["balance", json.loads(routed.payload)]


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b'{"method":"emit"}',
        b"u1 balance 4 1764000000.1 7",  # no payload
        b"u1 balance 4 1764000000.1\n{}",  # no seq
        b"u1 balance 4 1764000000.1 seven\n{}",
        b"u1 balance 4 never 7\n{}",
        b"u1 Balance 4 1764000000.1 7\n{}",
        b"u1 balance <4> 1764000000.1 7\n{}",
        b"u2 balance 4 1764000000.1 7\n{}",
    ],
)
def test_parse_routed_refuses_what_is_not_an_update_message(message: bytes) -> None:
    with pytest.raises(ValueError):
        protocol.parse_routed(message)


def test_update_envelope_is_not_confused_by_seq_text_in_user_data() -> None:
    data = {"note": '"seq":99\n', "nested": {"seq": 5}}
    payload = json.loads(protocol.parse_routed(_envelope(data).with_seq(7)).payload)
    assert payload["seq"] == 7
    assert payload["data"] == data


def test_update_envelope_refuses_non_finite_ts() -> None:
    with pytest.raises(ValueError):
        _envelope({}, ts=float("nan"))


# -- tokens in the handshake -------------------------------------------------


def test_token_from_prefers_handshake_auth() -> None:
    assert protocol.token_from({"token": "a"}, "Bearer h", {"token": "q"}) == "a"


def test_token_from_uses_bearer_header_before_query() -> None:
    assert protocol.token_from(None, "Bearer h", {"token": "q"}) == "h"


def test_token_from_falls_back_to_query() -> None:
    assert protocol.token_from(None, None, {"token": "q"}) == "q"


@pytest.mark.parametrize("auth", [{"token": 123}, {"token": ["a"]}, {"token": ""}, "a", ["a"]], ids=repr)
def test_token_from_ignores_unusable_auth(auth: object) -> None:
    assert protocol.token_from(auth, "Bearer h", {}) == "h"


@pytest.mark.parametrize("query", [{}, {"token": ""}], ids=repr)
def test_token_from_without_any_token_is_none(query: dict[str, str]) -> None:
    assert protocol.token_from({}, None, query) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer    ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Token abc", None),
        ("Bearerabc", None),
    ],
    ids=repr,
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert protocol.bearer_token(header) == expected


# -- configured topics -------------------------------------------------------


def test_parse_topics_strips_and_dedupes_in_order() -> None:
    assert protocol.parse_topics(" pnl, balance ,pnl,,orders ") == ("pnl", "balance", "orders")


def test_parse_topics_accepts_a_32_character_name() -> None:
    assert protocol.parse_topics("a" * 32) == ("a" * 32,)


@pytest.mark.parametrize("text", ["", " , ", "Balance", "bal_ance", "bal:ance", "1pnl", "-pnl", "a" * 33], ids=repr)
def test_parse_topics_refuses_bad_names(text: str) -> None:
    with pytest.raises(ValueError):
        protocol.parse_topics(text)


def test_parse_topics_error_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="bal_ance"):
        protocol.parse_topics("balance,bal_ance")


def test_a_kick_message_names_one_user_and_nothing_else_passes_for_one() -> None:
    assert protocol.kick_message(4) == "k1 4"
    assert protocol.parse_kick(protocol.kick_message("alice@example.com").encode()) == "alice@example.com"
    for data in (b"k1 ", b"k1 two users", b"k1 \xff", b"u1 balance 4 1.0 1\n{}", b'{"method": "emit"}'):
        assert protocol.parse_kick(data) is None, data
    with pytest.raises(ValueError):
        protocol.kick_message(True)
