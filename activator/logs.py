"""The daemon's log: plain lines or JSON objects, one per line, to stderr, syslog or a file.

Rule 1: an event is a log record with a name and fields (:func:`event`). Plain output shows its
message only (``activator: echo.socket: listening on ListenStream=127.0.0.1:7007``); JSON output
shows ``time``, ``level``, ``message``, ``event`` and every field, so scripts and tests never
parse prose.

Rule 2: one record is one line, in both formats: a traceback is folded into the JSON object's
``exception`` field, and a message's newlines are escaped in plain output.

Rule 3: a target that cannot be opened is an error when logging is configured (at start, before
anything serves), never a silent fallback: :func:`configure` raises :class:`LogTargetError`. Once
open, writing never blocks the event loop: on syslog, a full ``/dev/log`` queue drops lines and
says how many, at the next line that gets through; a file is written by a thread of its own once
trio runs (a slow disk never stalls an accept loop), through a bounded queue that drops lines
when full and says how many the same way. Writing never stops on a moved file: the file is
reopened, at its path, when logrotate has moved or removed it (no signal needed).

Rule 4: no thread before trio. ``serve`` forks the spawner and, with ``--daemon``, detaches
before trio starts: the file's writer thread starts with the first line logged while trio runs
(in its thread); lines before that are written at once, in the thread that logs them.

Theory of operation: ``target`` is ``stderr``, ``syslog`` or the absolute path of a file
(``[log] target``). Syslog is RFC 3164 over the ``/dev/log`` datagram socket, facility daemon,
tag ``activator[PID]``, with the record's level as the priority and no host or time (the syslog
daemon adds both); the file is opened ``O_APPEND`` (several writers never interleave within a
line), created mode 0640 when missing, and reopened when its path no longer names the open file
(:class:`logging.handlers.WatchedFileHandler`: one ``stat`` per line).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import logging.handlers
import os
import queue
import socket
import sys
import threading
from typing import Any, Final, TextIO

import trio

from activator.errors import ActivatorError
from activator.settings import LogFormat

#: The attribute of a log record that carries an event's name and fields.
_EVENT: Final = "activator_event"

#: Where the syslog daemon (rsyslog, syslog-ng, journald) listens on Linux.
SYSLOG_ADDRESS: Final = "/dev/log"
#: The mode of a log file activator creates: its group (adm, on Debian) may read it.
LOG_FILE_MODE: Final = 0o640


class LogTargetError(ActivatorError):
    """The configured log target cannot be opened.

    The message names the target and the reason: ``[log] target '/var/log/x/activator.log':
    No such file or directory``.

    Attributes:
        target: the target as configured.
    """

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"[log] target {target!r}: {reason}")
        self.target = target


def event_name(record: logging.LogRecord) -> str | None:
    """The event name of ``record`` (``ready``, ``invocation``...), None for a plain message."""
    attached = getattr(record, _EVENT, None)
    return None if attached is None else str(attached[0])


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


class SyslogFormatter(logging.Formatter):
    """``activator[PID]: `` and the line ``inner`` makes of the record (its ``activator: `` prefix
    dropped: the tag says it)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record).removeprefix("activator: ")
        return f"activator[{record.process}]: {text}"


class SyslogHandler(logging.Handler):
    """Syslog over a Unix datagram socket that never blocks: when the syslog daemon's queue is
    full, the line is dropped and counted, and the next line that gets through is preceded by
    one that says how many were lost. A send that fails otherwise (the syslog daemon restarted)
    reconnects once, then drops.

    Raises:
        OSError: nothing listens at ``address`` (when made).
    """

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.dropped = 0
        self.socket = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"<{_priority(record.levelno)}>{self.format(record)}"
        except Exception:  # logging's rule: a bad record never raises
            self.handleError(record)
            return
        if self.dropped:
            lost = f"<{_priority(logging.WARNING)}>activator[{os.getpid()}]: warning: " \
                f"{self.dropped} log lines lost: the syslog socket was full"  # fmt: skip
            if not self._send(lost):
                self.dropped += 1
                return
            self.dropped = 0
        if not self._send(line):
            self.dropped += 1

    def _send(self, line: str) -> bool:
        data = line.encode("utf-8", "backslashreplace")
        try:
            self.socket.send(data)
        except BlockingIOError:
            return False
        except OSError:
            try:
                self.socket.close()
                self.socket = self._connect()
                self.socket.send(data)
            except OSError:
                return False
        return True

    def close(self) -> None:
        self.socket.close()
        super().close()


def _priority(levelno: int) -> int:
    """RFC 3164 PRI: facility daemon (3) times 8, plus the severity (err 3, warning 4, info 6,
    debug 7)."""
    if levelno >= logging.ERROR:
        severity = 3
    elif levelno >= logging.WARNING:
        severity = 4
    elif levelno >= logging.INFO:
        severity = 6
    else:
        severity = 7
    return 3 * 8 + severity


class LogFileHandler(logging.handlers.WatchedFileHandler):
    """Appends to a file created mode 0640 (whatever the umask), and reopens it at its path when
    logrotate has moved or removed it.

    Once trio runs, lines go through a queue of ``queue_size`` lines to a writer thread (Rules 3
    and 4): a line that finds the queue full is dropped and counted, and the writer says how many
    were lost before its next line.
    """

    def __init__(self, path: str, *, queue_size: int = 10_000) -> None:
        super().__init__(path, encoding="utf-8", errors="backslashreplace")
        self._lines: queue.Queue[str | None] = queue.Queue(queue_size)
        self._writer: threading.Thread | None = None
        #: Lines dropped since the writer last said so, under their own lock: the writer never
        #: takes the handler's (``logging.shutdown`` holds it while it closes the handler).
        self.dropped = 0
        self._dropped_lock = threading.Lock()

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY
        fd = os.open(self.baseFilename, flags, LOG_FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's lock: one emit at a time, whatever the thread.
        if self._writer is None:
            if not trio.lowlevel.in_trio_run():
                super().emit(record)  # before trio (Rule 4): at once
                return
            self._writer = threading.Thread(
                target=self._write_all, name="activator-log-writer", daemon=True
            )
            self._writer.start()
        try:
            line = self.format(record)
        except Exception:  # logging's rule: a bad record never raises
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            with self._dropped_lock:
                self.dropped += 1

    def _write_all(self) -> None:
        """The writer thread: every queued line, until None."""
        while (line := self._lines.get()) is not None:
            with self._dropped_lock:
                lost, self.dropped = self.dropped, 0
            try:
                if lost:
                    notice = logging.makeLogRecord(
                        {
                            "name": __name__,
                            "levelno": logging.WARNING,
                            "levelname": "WARNING",
                            "msg": f"{lost} log lines lost: the log file was written too slowly",
                        }
                    )
                    self._write(self.format(notice))
                self._write(line)
            except Exception:  # a full disk: the line is lost, said later; the writer goes on
                with self._dropped_lock:
                    self.dropped += 1

    def _write(self, line: str) -> None:
        self.reopenIfNeeded()
        if self.stream is None:  # closed
            return
        self.stream.write(line + self.terminator)
        self.stream.flush()

    def flush(self) -> None:
        """Flush, unless the writer thread owns the file (it flushes every line)."""
        if self._writer is None:
            super().flush()

    def close(self) -> None:
        """Write what is queued (for a few seconds at most), then close the file. A writer still
        stuck on the file after that keeps it: closing it would wait on the writer for ever."""
        writer = self._writer
        if writer is not None and writer.is_alive():
            with contextlib.suppress(queue.Full):
                self._lines.put(None, timeout=5.0)
            writer.join(5.0)
            if writer.is_alive():
                logging.Handler.close(self)
                return
        super().close()


def open_handler(
    log_format: LogFormat,
    target: str = "stderr",
    *,
    stream: TextIO | None = None,
    syslog_address: str = SYSLOG_ADDRESS,
) -> logging.Handler:
    """A handler writing ``log_format`` lines to ``target``.

    Args:
        log_format: plain or JSON lines.
        target: ``stderr``, ``syslog`` or the absolute path of a file (``[log] target``).
        stream: where ``stderr`` lines go instead of ``sys.stderr`` (tests).
        syslog_address: the syslog daemon's datagram socket (a test binds its own).

    Raises:
        LogTargetError: the file cannot be opened, or nothing listens at ``syslog_address``.
    """
    inner: logging.Formatter = JsonFormatter() if log_format is LogFormat.JSON else PlainFormatter()
    handler: logging.Handler
    if target == "stderr":
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(inner)
        return handler
    try:
        if target == "syslog":
            handler = SyslogHandler(syslog_address)
            handler.setFormatter(SyslogFormatter(inner))
            return handler
        handler = LogFileHandler(target)
    except OSError as e:
        where = f"syslog at {syslog_address}" if target == "syslog" else "open"
        raise LogTargetError(target, f"{where}: {e.strerror or e}") from None
    handler.setFormatter(inner)
    return handler


def configure(
    log_format: LogFormat,
    stream: TextIO | None = None,
    *,
    target: str = "stderr",
    syslog_address: str = SYSLOG_ADDRESS,
) -> logging.Handler:
    """Send every ``activator`` log record of level INFO and above to ``target`` in
    ``log_format``; replaces (and closes) what an earlier call set.

    Args: as :func:`open_handler`.

    Returns:
        The handler now in place (:func:`descriptors` lists what it holds open).

    Raises:
        LogTargetError: ``target`` cannot be opened; the earlier configuration stays.
    """
    handler = open_handler(log_format, target, stream=stream, syslog_address=syslog_address)
    root = logging.getLogger("activator")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()  # a log file or syslog socket is closed; a stream handler leaves its stream
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    return handler


def descriptors() -> list[int]:
    """The file descriptors the ``activator`` logger's handlers hold open now (a log file, the
    syslog socket, stderr): what a daemonizing process must keep."""
    out: list[int] = []
    for handler in logging.getLogger("activator").handlers:
        held: Any = getattr(handler, "socket", None)
        if held is None:
            held = getattr(handler, "stream", None)
        try:
            fd = held.fileno() if held is not None else -1
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(fd, int) and fd >= 0:
            out.append(fd)
    return out
