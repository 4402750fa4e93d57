"""The daemon's log formats: one line per record, events as JSON fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from activator import logs
from activator.settings import LogFormat


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    root = logging.getLogger("activator")
    saved = (list(root.handlers), root.level, root.propagate)
    yield logging.getLogger("activator.test"), stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


def test_an_event_in_json_carries_its_name_and_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logs.configure(LogFormat.JSON, stream)
    logs.event(
        logger, logging.INFO, "reject", "echo.socket: rejected", unit="echo.socket", uid=None
    )
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "reject"
    assert record["unit"] == "echo.socket"
    assert record["uid"] is None
    assert record["level"] == "info"
    assert record["message"] == "echo.socket: rejected"
    assert record["time"].endswith("Z")


def test_a_traceback_stays_on_one_line_in_both_formats(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    for log_format in LogFormat:
        stream.seek(0)
        stream.truncate()
        logs.configure(log_format, stream)
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            logger.exception("handling x")
        (line,) = stream.getvalue().splitlines()
        assert "boom" in line
        if log_format is LogFormat.JSON:
            assert "RuntimeError" in json.loads(line)["exception"]
        else:
            assert line.startswith("activator: error: handling x: Traceback")


def test_plain_lines_name_warnings_and_hide_debug(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logs.configure(LogFormat.PLAIN, stream)
    logger.warning("careful")
    logger.info("fine")
    logger.debug("noise")
    assert stream.getvalue().splitlines() == ["activator: warning: careful", "activator: fine"]
