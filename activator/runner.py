"""``activator run``: one transient invocation with the full sandbox, like ``systemd-run``.

Theory of operation: the spawner starts first, before trio and before any thread (it is the only
process that forks handlers). Then, on trio: the cgroup hierarchies are found, the lease
directory is replayed (a stale lease of a crashed activator is killed and freed), the pool is
scanned, the userdb answers for this process's dynamic user while it runs, and the one
invocation runs through :func:`activator.invocation.run_invocation`, exactly as a connection's
would. The exit status is the command's (128+N for a signal, 127 when it never ran).

Standard streams: ``--pipe`` passes ours (stdin, stdout, stderr) to the command, so it works in
a pipeline; ``--pty`` gives it a new pseudo-terminal, relayed to ours in raw mode; without
either, stdin is ``/dev/null`` and its output goes to our stderr (where a unit's journal output
goes).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import logging
import os
import secrets
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Final

import trio

from activator import uidstore
from activator.invocation import Outcome, Runtime, run_invocation
from activator.model import ServiceUnit
from activator.plan import Descriptors
from activator.settings import Settings
from activator.spawner import Spawner
from activator.startup import open_runtime

logger = logging.getLogger(__name__)

_RELAY_CHUNK: Final = 65536


class StreamMode(enum.Enum):
    """How the command's standard streams connect to ours."""

    LOG = "log"
    PIPE = "pipe"
    PTY = "pty"


def transient_name() -> str:
    """A fresh transient unit name, ``run-<8 hex>.service``."""
    return f"run-{secrets.token_hex(4)}.service"


def run_transient(settings: Settings, service: ServiceUnit, mode: StreamMode) -> Outcome:
    """Run ``service`` once, to its end; blocking (it owns the process: spawner, trio run)."""
    uidstore.bypass_own_userdb()
    spawner = Spawner.launch()
    return trio.run(_main, settings, service, mode, spawner)


async def _main(
    settings: Settings, service: ServiceUnit, mode: StreamMode, spawner: Spawner
) -> Outcome:
    try:
        async with trio.open_nursery() as nursery:
            runtime = await open_runtime(nursery, settings, spawner, userdb=service.dynamic_user)
            outcome = await _invoke(runtime, service, mode)
            nursery.cancel_scope.cancel()
        runtime.leases.abandon()  # only leases whose teardown failed are left
        return outcome
    finally:
        with trio.CancelScope(shield=True):
            await spawner.aclose()


async def _invoke(runtime: Runtime, service: ServiceUnit, mode: StreamMode) -> Outcome:
    if mode is StreamMode.PIPE:
        return await run_invocation(
            runtime, service, descriptors=Descriptors(stdin=0, stdout=1, stderr=2), fds=(0, 1, 2)
        )
    if mode is StreamMode.LOG:
        return await run_invocation(runtime, service, descriptors=Descriptors(log=0), fds=(2,))
    master, slave = os.openpty()
    try:
        _copy_window_size(sys.stdin.fileno(), master)
        with _raw_terminal(sys.stdin.fileno()):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_relay_input, master)
                nursery.start_soon(_relay_output, master)
                nursery.start_soon(_relay_winch, master)
                outcome = await run_invocation(
                    runtime,
                    service,
                    descriptors=Descriptors(stdin=0, stdout=0, stderr=0, terminal=True),
                    fds=(slave,),
                )
                os.close(slave)
                slave = -1
                nursery.cancel_scope.cancel()
        return outcome
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


async def _relay_input(master: int) -> None:
    source = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    target = trio.lowlevel.FdStream(os.dup(master))
    async with source, target:
        while data := await source.receive_some(_RELAY_CHUNK):
            await target.send_all(data)


async def _relay_output(master: int) -> None:
    source = trio.lowlevel.FdStream(os.dup(master))
    target = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    async with source, target:
        while True:
            try:
                data = await source.receive_some(_RELAY_CHUNK)
            except trio.BrokenResourceError as error:
                if isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.EIO:
                    return  # every slave descriptor is closed: the command is gone
                raise
            if not data:
                return
            await target.send_all(data)


async def _relay_winch(master: int) -> None:
    with trio.open_signal_receiver(signal.SIGWINCH) as signals:
        async for _ in signals:
            _copy_window_size(sys.stdin.fileno(), master)


def _copy_window_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
