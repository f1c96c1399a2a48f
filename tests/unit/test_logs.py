"""Log formats (text and json) with context from ``extra=``, and FaultOnce."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from gateway import logs

Capture = Callable[[str], tuple[logging.Logger, io.StringIO]]


@pytest.fixture
def capture(request: pytest.FixtureRequest) -> Iterator[Capture]:
    """Build a private logger writing through ``logs.handler(format)`` into a string."""
    attached: list[tuple[logging.Logger, logging.Handler]] = []

    def build(log_format: str) -> tuple[logging.Logger, io.StringIO]:
        stream = io.StringIO()
        handler = logs.handler(log_format)
        handler.setStream(stream)
        logger = logging.getLogger(f"tests.logs.{request.node.name}.{log_format}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler)
        attached.append((logger, handler))
        return logger, stream

    yield build
    for logger, handler in attached:
        logger.removeHandler(handler)
        logger.propagate = True


CONTEXT = {"user": "4", "sid": "abc123", "worker": "w-1", "topic": "balance"}


def test_json_format_is_one_object_per_line(capture: Capture) -> None:
    logger, stream = capture("json")
    logger.info("first")
    logger.warning("second\nwith a newline")
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["first", "second\nwith a newline"]


def test_json_format_carries_level_logger_and_context(capture: Capture) -> None:
    logger, stream = capture("json")
    logger.info("subscribed %s", "balance", extra=CONTEXT)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "subscribed balance"
    assert entry["level"] == "INFO"
    assert entry["logger"] == logger.name
    assert {key: entry[key] for key in CONTEXT} == CONTEXT


def test_json_format_leaves_out_absent_context(capture: Capture) -> None:
    logger, stream = capture("json")
    logger.info("plain")
    entry = json.loads(stream.getvalue())
    assert not set(logs.CONTEXT_KEYS) & set(entry)
    assert "traceback" not in entry


def test_json_format_adds_traceback_for_exceptions(capture: Capture) -> None:
    logger, stream = capture("json")
    try:
        raise ConnectionError("redis away")
    except ConnectionError:
        logger.exception("publish failed", extra={"user": "4"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "ERROR"
    assert entry["traceback"].startswith("Traceback")
    assert "ConnectionError: redis away" in entry["traceback"]


def test_json_format_survives_context_that_is_not_json(capture: Capture) -> None:
    logger, stream = capture("json")
    logger.info("odd", extra={"user": object()})
    assert json.loads(stream.getvalue())["user"].startswith("<object object")


def test_text_format_shows_context_pairs(capture: Capture) -> None:
    logger, stream = capture("text")
    logger.info("subscribed", extra={"user": "4", "sid": "abc123"})
    line = stream.getvalue().rstrip("\n")
    assert " INFO " in line
    assert line.endswith("subscribed user=4 sid=abc123")


def test_text_format_without_context_ends_with_the_message(capture: Capture) -> None:
    logger, stream = capture("text")
    logger.info("plain")
    assert stream.getvalue().rstrip("\n").endswith(f"{logger.name}: plain")


# -- FaultOnce ---------------------------------------------------------------

FAULT_LOGGER = "tests.logs.fault_once"


def fail(fault: logs.FaultOnce) -> None:
    try:
        raise ConnectionError("redis away")
    except ConnectionError:
        fault.fault(worker="w-1")


@pytest.fixture
def fault(caplog: pytest.LogCaptureFixture) -> logs.FaultOnce:
    caplog.set_level(logging.DEBUG, logger=FAULT_LOGGER)
    return logs.FaultOnce(logging.getLogger(FAULT_LOGGER), "redis is away")


def levels(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.levelname for record in caplog.records if record.name == FAULT_LOGGER]


def test_fault_once_logs_error_once_then_debug(fault: logs.FaultOnce, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3):
        fail(fault)
    assert levels(caplog) == ["ERROR", "DEBUG", "DEBUG"]


def test_fault_once_error_has_traceback_and_context(fault: logs.FaultOnce, caplog: pytest.LogCaptureFixture) -> None:
    fail(fault)
    record = caplog.records[0]
    assert record.exc_info is not None and record.exc_info[0] is ConnectionError
    assert record.getMessage() == "redis is away"
    assert record.worker == "w-1"  # type: ignore[attr-defined]


def test_fault_once_clear_logs_recovered_warning(fault: logs.FaultOnce, caplog: pytest.LogCaptureFixture) -> None:
    fail(fault)
    fault.clear()
    assert levels(caplog) == ["ERROR", "WARNING"]
    assert "recovered" in caplog.records[-1].getMessage()
    assert "redis is away" in caplog.records[-1].getMessage()


def test_fault_once_clear_without_fault_logs_nothing(fault: logs.FaultOnce, caplog: pytest.LogCaptureFixture) -> None:
    fault.clear()
    assert levels(caplog) == []


def test_fault_once_logs_error_again_after_recovery(fault: logs.FaultOnce, caplog: pytest.LogCaptureFixture) -> None:
    fail(fault)
    fail(fault)
    fault.clear()
    fault.clear()
    fail(fault)
    assert levels(caplog) == ["ERROR", "DEBUG", "WARNING", "ERROR"]
