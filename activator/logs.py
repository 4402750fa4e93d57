"""The daemon's log: plain lines or JSON objects, one per line, on stderr.

Rule 1: an event is a log record with a name and fields (:func:`event`). Plain output shows its
message only (``activator: echo.socket: listening on ListenStream=127.0.0.1:7007``); JSON output
shows ``time``, ``level``, ``message``, ``event`` and every field, so scripts and tests never
parse prose.

Rule 2: one record is one line, in both formats: a traceback is folded into the JSON object's
``exception`` field, and a message's newlines are escaped in plain output.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Final, TextIO

from activator.settings import LogFormat

#: The attribute of a log record that carries an event's name and fields.
_EVENT: Final = "activator_event"


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: object) -> None:
    """Log ``message`` as the event ``name`` with ``fields`` (JSON values)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", message, extra={_EVENT: (name, fields)})


class PlainFormatter(logging.Formatter):
    """``activator: message``; warnings and errors say so; one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += ": " + self.formatException(record.exc_info)
        prefix = ""
        if record.levelno >= logging.ERROR:
            prefix = "error: "
        elif record.levelno >= logging.WARNING:
            prefix = "warning: "
        return "activator: " + prefix + text.replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``message``, and for an
    event its ``event`` name and fields."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": _level_name(record.levelno),
            "message": record.getMessage(),
        }
        attached = getattr(record, _EVENT, None)
        if attached is not None:
            name, fields = attached
            out["event"] = name
            for key, value in fields.items():
                out.setdefault(key, value)  # an event never overwrites time, level or message
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def configure(log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Send every ``activator`` log record of level INFO and above to ``stream`` (stderr) in
    ``log_format``; replaces what an earlier call set."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else PlainFormatter())
    root = logging.getLogger("activator")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
