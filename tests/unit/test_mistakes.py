"""What a client does that is not the gateway's fault is counted, never logged above DEBUG; real faults are."""

from __future__ import annotations

import logging

import pytest
from geventwebsocket.exceptions import WebSocketError
from prometheus_client import REGISTRY

from gateway.errors import ClientMistake
from gateway.mistakes import LibraryLog, client_gone, is_client_gone, library_reason


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def gone() -> float:
    return sample("gateway_send_failures_total", reason="client_gone")


def mistakes(reason: str) -> float:
    return sample("gateway_client_errors_total", reason=reason)


def loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno > logging.DEBUG]


@pytest.mark.parametrize("exc", [BrokenPipeError(), ConnectionResetError(), ConnectionAbortedError(),
                                 WebSocketError("closed"), AssertionError("write() before start_response")])
def test_a_departed_client_is_recognised(exc: BaseException) -> None:
    assert is_client_gone(exc)


@pytest.mark.parametrize("exc", [OSError("disk full"), AssertionError("seq went backwards"), ValueError("x"),
                                 TimeoutError()])
def test_anything_else_is_not_taken_for_a_departure(exc: BaseException) -> None:
    assert not is_client_gone(exc)


def test_a_departure_is_counted_once_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    before = gone()
    client_gone(BrokenPipeError(), sid="s1")
    assert gone() == before + 1
    assert loud(caplog) == [] and "BrokenPipeError" in caplog.text


@pytest.mark.parametrize(("message", "reason"), [
    ("Invalid transport", "bad_transport"),
    ("The client is using an unsupported version of the Socket.IO or Engine.IO protocols", "bad_version"),
    ("Invalid session abc", "bad_session"),
    ("Method PUT not supported", "bad_request"),
    ("abc is not connected to namespace /", "not_connected"),
])
def test_what_the_libraries_say_of_a_client_is_counted_under_its_reason(
    message: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert library_reason(message) == reason
    before = mistakes(reason)
    LibraryLog("engineio.server").error(message)
    assert mistakes(reason) == before + 1
    assert loud(caplog) == []


def test_a_refused_origin_and_a_send_to_a_departed_client_are_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused, departed = sample("gateway_connect_refused_total", reason="bad_origin"), gone()
    library = LibraryLog("engineio.server")
    library.warning("%s is not an accepted origin.", "https://evil.example")
    library.warning("Cannot send to sid %s", "abc")
    assert sample("gateway_connect_refused_total", reason="bad_origin") == refused + 1
    assert gone() == departed + 1
    assert loud(caplog) == []


def test_anything_else_the_libraries_say_passes_on_at_its_level_under_their_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    LibraryLog("socketio.server").error("pubsub listen() exited unexpectedly")
    (record,) = loud(caplog)
    assert (record.name, record.levelname, record.getMessage()) == (
        "socketio.server", "ERROR", "pubsub listen() exited unexpectedly")


def test_a_library_exception_is_a_traceback_only_when_it_is_a_real_fault(caplog: pytest.LogCaptureFixture) -> None:
    library = LibraryLog("socketio.server")
    departed, bad = gone(), mistakes("bad_packet")
    for exc in (ConnectionResetError(), ClientMistake("bad_packet")):
        try:
            raise exc
        except (ConnectionResetError, ClientMistake):
            library.exception("Handler error")
    assert gone() == departed + 1 and mistakes("bad_packet") == bad + 1
    assert loud(caplog) == []
    try:
        raise KeyError("handler bug")
    except KeyError:
        library.exception("Handler error")
    (record,) = loud(caplog)
    assert record.levelname == "ERROR" and record.exc_info is not None
