"""The daemon's log formats: one line per record, events as JSON fields."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

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


# --- targets: a real file and a real syslog socket ----------------------------------------------


@pytest.fixture
def restored() -> Iterator[None]:
    """The ``activator`` logger as it was, after a test that configures real targets (whose
    handlers are closed, so no file or socket is left open)."""
    root = logging.getLogger("activator")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


def test_a_file_target_is_appended_to_created_0640_and_reopened_after_logrotate_moves_it(
    restored: None, tmp_path: Path
) -> None:
    path = tmp_path / "activator.log"
    path.write_text("earlier line\n", encoding="utf-8")
    logger = logging.getLogger("activator.test")
    logs.configure(LogFormat.PLAIN, target=str(path))
    logger.info("first")
    assert path.read_text(encoding="utf-8") == "earlier line\nactivator: first\n"
    path.rename(tmp_path / "activator.log.1")  # what logrotate does, then no signal at all
    logger.info("second")
    assert path.read_text(encoding="utf-8") == "activator: second\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (tmp_path / "activator.log.1").read_text(encoding="utf-8").endswith("first\n")
    path.unlink()  # removed outright: made again
    logger.warning("third")
    assert path.read_text(encoding="utf-8") == "activator: warning: third\n"


def test_a_file_target_that_cannot_be_opened_is_an_error_naming_it(
    restored: None, tmp_path: Path
) -> None:
    target = str(tmp_path / "missing" / "activator.log")
    with pytest.raises(logs.LogTargetError) as caught:
        logs.configure(LogFormat.PLAIN, target=target)
    assert str(caught.value) == f"[log] target {target!r}: open: No such file or directory"


def test_syslog_gets_facility_daemon_the_level_and_the_activator_tag(
    restored: None, tmp_path: Path
) -> None:
    address = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslogd:
        syslogd.bind(address)
        syslogd.settimeout(5)
        logger = logging.getLogger("activator.test")
        for log_format in LogFormat:
            logs.configure(log_format, target="syslog", syslog_address=address)
            logger.error("broken")
            logger.info("fine\nsecond line")
            error, info = syslogd.recv(4096).decode(), syslogd.recv(4096).decode()
            tag = f"activator[{os.getpid()}]: "
            # <PRI> = facility daemon (3) * 8 + severity (err 3, info 6)
            assert error.startswith(f"<27>{tag}")
            assert info.startswith(f"<30>{tag}")
            if log_format is LogFormat.PLAIN:
                assert error == f"<27>{tag}error: broken"
                assert info == f"<30>{tag}fine\\nsecond line"
            else:
                assert json.loads(info.removeprefix(f"<30>{tag}"))["message"] == "fine\nsecond line"
        (handler,) = logging.getLogger("activator").handlers
        assert isinstance(handler, logs.SyslogHandler)
        assert logs.descriptors() == [handler.socket.fileno()]


def test_syslog_that_is_not_listening_is_an_error_at_start(restored: None, tmp_path: Path) -> None:
    address = str(tmp_path / "no-syslog")
    with pytest.raises(logs.LogTargetError) as caught:
        logs.configure(LogFormat.PLAIN, target="syslog", syslog_address=address)
    assert str(caught.value) == (
        f"[log] target 'syslog': syslog at {address}: No such file or directory"
    )


def test_syslog_never_blocks_a_full_queue_drops_lines_and_says_how_many(
    restored: None, tmp_path: Path
) -> None:
    address = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslogd:
        syslogd.bind(address)
        logger = logging.getLogger("activator.test")
        logs.configure(LogFormat.PLAIN, target="syslog", syslog_address=address)
        # Nobody reads: the queue fills (a few hundred datagrams) and sending must not block.
        for n in range(5000):
            logger.info("line %d", n)
        handler = logging.getLogger("activator").handlers[0]
        assert isinstance(handler, logs.SyslogHandler)
        dropped = handler.dropped
        assert dropped > 0
        syslogd.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                syslogd.recv(4096)
        logger.info("after")
        syslogd.settimeout(5)
        lost, after = syslogd.recv(4096).decode(), syslogd.recv(4096).decode()
        assert lost.endswith(f"warning: {dropped} log lines lost: the syslog socket was full")
        assert after.endswith("]: after")


def test_once_trio_runs_a_file_is_written_by_a_thread_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "activator.log"
    handler = logs.LogFileHandler(str(path))
    handler.setFormatter(logs.PlainFormatter())
    logger = logging.getLogger("activator.test.writer")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before trio")  # at once, no thread (Rule 4)
        assert path.read_text(encoding="utf-8") == "activator: warning: before trio\n"
        assert not any(t.name == "activator-log-writer" for t in threading.enumerate())

        async def main() -> None:
            for n in range(100):
                logger.warning("line %d", n)
            assert any(t.name == "activator-log-writer" for t in threading.enumerate())

        trio.run(main)
    finally:
        logger.removeHandler(handler)
        handler.close()  # writes what is queued
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == ["activator: warning: before trio"] + [
        f"activator: warning: line {n}" for n in range(100)
    ]


def test_a_file_that_takes_no_more_drops_lines_and_says_how_many_never_blocking(
    tmp_path: Path,
) -> None:
    """A full FIFO nobody reads stands for a disk that stalls: logging goes on (the writer
    thread waits, the queue fills, lines are dropped and counted), and once it drains, the file
    says how many were lost; every line is either written or counted."""
    path = tmp_path / "activator.log"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    stuffer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(stuffer, b"\n" * 4096)  # the pipe is full: the writer will wait
    os.close(stuffer)
    handler = logs.LogFileHandler(str(path), queue_size=10)
    handler.setFormatter(logs.PlainFormatter())
    logger = logging.getLogger("activator.test.stalled")
    logger.addHandler(handler)
    logger.propagate = False
    got = b""

    def drain() -> bytes | None:
        """What the FIFO holds now (b"" at its end); None when it is empty for now."""
        try:
            return os.read(reader, 1 << 16)
        except BlockingIOError:
            time.sleep(0.01)
            return None

    try:

        async def main() -> None:
            for n in range(300):
                logger.warning("line %d", n)

        trio.run(main)  # returns: nothing waited on the stalled file
        deadline = time.monotonic() + 30
        while b"log lines lost" not in got:
            assert time.monotonic() < deadline, got[-300:]
            got += drain() or b""
    finally:
        logger.removeHandler(handler)
        handler.close()  # what is queued is written, and the FIFO's last writer closes
    deadline = time.monotonic() + 30
    while (chunk := drain()) != b"":  # the end: the handler closed the FIFO's last writer
        assert time.monotonic() < deadline, got[-300:]
        got += chunk or b""
    lines = [line for line in got.decode().splitlines() if line]
    notices = [line for line in lines if "log lines lost" in line]  # one per stall seen
    lost = sum(int(line.removeprefix("activator: warning: ").split()[0]) for line in notices)
    written = [line for line in lines if line.startswith("activator: warning: line ")]
    assert lost > 0
    assert len(written) + lost == 300
    assert handler.dropped == 0
