"""Structured logs: one JSON object a line with service, level, correlation id and extras."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hookbus_common.logs import JsonFormatter, TextFormatter, correlated, correlation_id


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing through the JSON formatter into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("router"))
    logger = logging.getLogger("hookbus.test.logs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.handlers[:] = []
        logger.propagate = True


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_level_service_and_message(capture):
    logger, stream = capture

    logger.warning("disk at %d%%", 93)
    logger.info("second")

    first, second = records(stream)
    assert first["msg"] == "disk at 93%"
    assert first["level"].upper() == "WARNING"
    assert second["level"].upper() == "INFO"
    assert first["service"] == "router"
    assert first["logger"] == "hookbus.test.logs"
    assert first["ts"].endswith("Z")


def test_extra_fields_are_included(capture):
    logger, stream = capture

    logger.info("consuming", extra={"consumer": "router", "deliveries": 3, "ok": True})

    (rec,) = records(stream)
    assert rec["consumer"] == "router"
    assert rec["deliveries"] == 3
    assert rec["ok"] is True


def test_extra_values_that_json_cannot_hold_are_written_as_text(capture):
    logger, stream = capture

    logger.info("path", extra={"where": Path("/srv/app"), "ids": {"a"}})

    (rec,) = records(stream)
    assert rec["where"] == "/srv/app"
    assert rec["ids"] == str({"a"})


def test_standard_record_attributes_are_not_repeated(capture):
    logger, stream = capture

    logger.info("x")

    (rec,) = records(stream)
    for noise in ("args", "msecs", "levelno", "pathname", "lineno", "thread", "processName"):
        assert noise not in rec


def test_correlation_id_is_included_inside_correlated(capture):
    logger, stream = capture

    logger.info("before")
    with correlated("evt_chain_1"):
        logger.info("during")
    logger.info("after")

    before, during, after = records(stream)
    assert during["correlation_id"] == "evt_chain_1"
    assert "correlation_id" not in before
    assert "correlation_id" not in after


def test_nested_correlated_restores_the_outer_id(capture):
    logger, stream = capture

    with correlated("outer"):
        with correlated("inner"):
            logger.info("a")
        logger.info("b")
    assert correlation_id.get() is None

    a, b = records(stream)
    assert a["correlation_id"] == "inner"
    assert b["correlation_id"] == "outer"


def test_correlated_resets_even_when_the_block_raises():
    with pytest.raises(RuntimeError), correlated("evt_x"):
        raise RuntimeError("boom")

    assert correlation_id.get() is None


def test_exceptions_are_logged_in_the_same_json_line(capture):
    logger, stream = capture

    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("failed")

    (rec,) = records(stream)
    assert rec["level"].upper() == "ERROR"
    assert "ValueError: bad value" in rec["exc"]
    assert len(stream.getvalue().splitlines()) == 1


def test_text_formatter_shows_service_extras_and_correlation():
    record = logging.LogRecord("hookbus.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.consumer = "router"

    with correlated("evt_c"):
        line = TextFormatter("executor").format(record)

    assert "executor" in line
    assert "hello you" in line
    assert "consumer=router" in line
    assert "correlation_id=evt_c" in line
