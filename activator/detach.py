"""``activator serve --daemon``: detach from the terminal, hold a locked pidfile, and tell the
command the user ran whether the daemon started.

Rule 1: the caller learns the outcome. The command the user ran (the parent) waits until the
daemon is ready (every socket listening) or has failed, prints the warnings and errors the daemon
logged on the way, and exits 0 only once it is ready; otherwise with the daemon's exit code, or 1
when the daemon died without giving one, was stopped (SIGTERM) before it was ready, or is not
ready after ``ready_timeout`` seconds (``daemon PID N not ready after 90 s``: it goes on
starting; its log says what it does).

Rule 2: the daemon never waits for the parent. The report pipe's write end is non-blocking, and
a line is written whole or not at all (at most ``PIPE_BUF`` bytes, longer lines cut): when the
parent does not read (stopped, gone), lines are dropped, never queued on the daemon's loop.

Rule 3: one daemon per pidfile. The parent locks the pidfile (``flock``) before it forks, so a
second start fails while the user still sees it, naming the running PID; the lock passes to the
daemon with the open file (a lock belongs to the open file description, which fork shares). The
file holds the daemon's PID once it has detached, and is removed, then unlocked, when it exits. A
file left by a crash (``kill -9``) is unlocked, so it never blocks a start.

Rule 4: daemonizing changes nothing else the handlers inherit: DaemonContext gets an empty signal
map (trio owns the signals; python-daemon's default would turn SIGTERM into SystemExit and ignore
SIGTSTP, SIGTTIN and SIGTTOU in every handler), leaves RLIMIT_CORE alone, and keeps exactly the
descriptors the caller names, its pidfile and the report pipe. Working directory ``/``, umask 022.

This is the only module that imports python-daemon.

Theory of operation: the parent forks a child that enters ``DaemonContext(detach_process=True)``
(fork, ``setsid``, fork: the daemon is no session leader and can never get a terminal back) and
the intermediate processes exit at once. The daemon writes lines on a pipe to the parent:
``pid N`` once detached, ``log TEXT`` for each warning or error until it is ready, then
``ready``, or ``exit N`` when it stops before. End of file without either means it died.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import sys
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Final, TextIO

import attrs
import daemon

from activator import logs
from activator.errors import ActivatorError

#: Where ``serve --daemon`` keeps its PID unless ``--pidfile`` says otherwise.
DEFAULT_PIDFILE: Final = "/run/activator/activator.pid"

#: A pidfile that another process replaces or removes under us is opened again, this often.
_LOCK_ATTEMPTS: Final = 5
#: Seconds ``serve --daemon`` waits for the daemon to be ready (``--ready-timeout``): crash
#: recovery and the pool's first scan come before it, on a large pool a minute or so.
DEFAULT_READY_TIMEOUT: Final = 90.0


class DaemonError(ActivatorError):
    """The daemon cannot start: its pidfile is locked by a running daemon, or cannot be made.

    Attributes:
        pidfile: the pidfile's path.
        pid: the running daemon's PID, when that is why (None otherwise).
    """

    def __init__(self, message: str, *, pidfile: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pidfile = pidfile
        self.pid = pid


@attrs.define(eq=False)
class PidFile:
    """A pidfile locked with ``flock`` for as long as the daemon lives.

    :meth:`lock` takes it in the parent; entering writes this process's PID (DaemonContext enters
    it once detached); exiting removes the file, then closes it, which releases the lock.
    """

    path: str
    fd: int

    @classmethod
    def lock(cls, path: str) -> PidFile:
        """Open (make, mode 0644, with its missing parent directories 0755) and lock ``path``.

        Raises:
            DaemonError: another process holds the lock (the message names its PID), or the
                file cannot be made.
        """
        for _ in range(_LOCK_ATTEMPTS):
            try:
                os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                msg = f"pidfile {path}: {e.strerror or e}"
                raise DaemonError(msg, pidfile=path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _read_pid(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    msg = f"pidfile {path}: lock: {e.strerror or e}"
                    raise DaemonError(msg, pidfile=path) from None
                who = f"PID {pid}" if pid is not None else "another process"
                msg = f"already running as {who} (pidfile {path} is locked)"
                raise DaemonError(msg, pidfile=path, pid=pid) from None
            # The holder before us may have removed the file after we opened it: a lock on a
            # file no longer at the path guards nothing. Open the path again.
            if _same_file(fd, path):
                return cls(path, fd)
            os.close(fd)
        msg = f"pidfile {path}: replaced while being locked, {_LOCK_ATTEMPTS} times"
        raise DaemonError(msg, pidfile=path)

    def __enter__(self) -> PidFile:
        data = f"{os.getpid()}\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the file if it is still ours, then release the lock (idempotent)."""
        if self.fd < 0:
            return
        if _same_file(self.fd, self.path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1

    def hand_over(self) -> None:
        """The parent's side: close our descriptor and keep the lock, which the daemon holds
        through its own (same open file)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() else None


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class _Relay(logging.Handler):
    """The daemon's side of the report pipe: copies warnings and errors (plain lines) to the
    parent until the ``ready`` event, which it reports and then goes quiet."""

    def __init__(self, fd: int) -> None:
        super().__init__()  # every level: the ready event is INFO
        self.fd = fd
        self.plain = logs.PlainFormatter()
        #: Lines dropped because the pipe was full (Rule 2).
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if logs.event_name(record) == "ready":
            self.send("ready")
            self.finish()
        elif record.levelno >= logging.WARNING:
            self.send("log " + self.plain.format(record))

    def send(self, line: str) -> None:
        """Write ``line`` whole, or drop it when the pipe is full (Rule 2)."""
        if self.fd < 0:
            return
        data = line.encode("utf-8", "backslashreplace")[: select.PIPE_BUF - 1] + b"\n"
        try:
            os.write(self.fd, data)  # at most PIPE_BUF bytes: all of it, or EAGAIN
        except BlockingIOError:
            self.dropped += 1
        except OSError:  # the parent is gone (Ctrl-C): nobody to tell
            self.finish()

    def finish(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@attrs.define(eq=False)
class Daemon:
    """What :func:`start` returns in the daemon: use it as a context manager around the serving,
    and :meth:`exit` with the exit code when serving ends."""

    context: daemon.DaemonContext
    relay: _Relay

    def __enter__(self) -> Daemon:
        logging.getLogger("activator").addHandler(self.relay)
        return self

    def exit(self, code: int) -> None:
        """Tell the parent ``code`` if it still waits (the daemon stopped before it was ready)."""
        self.relay.send(f"exit {code}")
        self.relay.finish()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.relay.finish()
        logging.getLogger("activator").removeHandler(self.relay)
        self.context.close()  # removes the pidfile


def start(
    pidfile: str,
    keep: Sequence[int],
    *,
    err: TextIO = sys.stderr,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
) -> int | Daemon:
    """Detach as a daemon, as ``fork()`` does: return twice, in two processes.

    Args:
        pidfile: the pidfile's path (absolute).
        keep: descriptors the daemon keeps (listening sockets passed in, the log's file or
            socket); every other one is closed, and stdin, stdout and stderr become /dev/null.
        err: where the parent prints what the daemon relays.
        ready_timeout: seconds the parent waits for the daemon to be ready (Rule 1).

    Returns:
        In the parent, its exit code once the daemon is ready (0) or has failed (Rule 1). In the
        daemon, a :class:`Daemon`, with the pidfile written.

    Raises:
        DaemonError: in the parent, before anything forked: the pidfile is locked or cannot be
            made.
    """
    lock = PidFile.lock(pidfile)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        lock.remove()
        raise
    if child:  # the parent
        os.close(write_end)
        lock.hand_over()
        try:
            code = _wait_for_report(read_end, err, ready_timeout)
        finally:
            os.close(read_end)
        os.waitpid(child, 0)  # the intermediate process, gone as soon as the daemon forked
        return code
    os.close(read_end)
    os.set_blocking(write_end, False)  # Rule 2
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o022,
        prevent_core=False,
        detach_process=True,
        files_preserve=[*keep, lock.fd, write_end],
        pidfile=lock,
        signal_map={},
    )
    try:
        context.open()  # returns in the daemon only; the processes in between exit here
    except BaseException as e:  # reported; this process must not go on in either case
        relay = _Relay(write_end)
        relay.send(f"log activator: error: cannot detach: {e}")
        relay.send("exit 1")
        os._exit(1)
    relay = _Relay(write_end)
    relay.send(f"pid {os.getpid()}")
    return Daemon(context, relay)


def _wait_for_report(fd: int, err: TextIO, timeout: float) -> int:
    """Relay the daemon's report lines from ``fd`` until it is ready, stops, dies, or
    ``timeout`` seconds pass (Rule 1); the exit code."""
    deadline = time.monotonic() + timeout
    pid: str | None = None
    for line in _lines(fd, deadline):
        word, _, rest = line.partition(" ")
        if word == "pid":
            pid = rest
        elif word == "log":
            print(rest, file=err, flush=True)
        elif word == "ready":
            return 0
        elif word == "exit" and rest.isdecimal():
            if rest != "0":
                return int(rest)
            print("activator: the daemon was stopped before it was ready", file=err)
            return 1
    if time.monotonic() >= deadline:
        who = f"daemon PID {pid}" if pid is not None else "the daemon"
        print(
            f"activator: {who} not ready after {timeout:g} s (it goes on starting; its log "
            "says what it does)",
            file=err,
        )
        return 1
    print("activator: the daemon ended before it was ready; its log says why", file=err)
    return 1


def _lines(fd: int, deadline: float) -> Iterator[str]:
    """The lines read from ``fd`` until its end or ``deadline`` (``time.monotonic()``)."""
    buffer = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(max(1, int(left * 1000))):
            continue
        data = os.read(fd, 65536)
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "backslashreplace")
