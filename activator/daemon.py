"""``activator serve``: the process around the manager.

Rule 1: the order of start-up is fixed by what forks. Sockets passed in by socket activation are
taken first (and ``LISTEN_*`` removed from the environment, so nothing started later sees them),
then the spawner is launched, before trio and before any thread exists; only then does trio
start, recover the pool, and let the manager bind and serve. ``--daemon`` detaches between the
first two steps (:mod:`activator.detach`), once the log target is open: the spawner is the
daemon's child, and what the daemon inherits is exactly the sockets and the log.

Rule 2: activator never resolves its own dynamic users through NSS
(:func:`activator.uidstore.bypass_own_userdb`): a lookup that reached our own userdb socket would
wait on our own event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
from collections.abc import AsyncIterator, Sequence

import trio

from activator import detach, listener, logs, loopwatch, uidstore
from activator.catalog import Catalog
from activator.collector import collect_when_quiet
from activator.instances import EnabledUnits
from activator.loader import load_catalog
from activator.manager import Manager, log_problems
from activator.metrics import start_metrics
from activator.settings import Settings
from activator.spawner import Spawner
from activator.startup import load_enabled, open_runtime, start_control

logger = logging.getLogger(__name__)


def serve(
    settings: Settings,
    directories: Sequence[str],
    *,
    strict: bool = False,
    pidfile: str | None = None,
    ready_timeout: float = detach.DEFAULT_READY_TIMEOUT,
) -> int:
    """Serve every unit of ``directories`` until SIGTERM or SIGINT; the exit code (0 after a
    clean stop, 2 when ``strict`` and a unit has errors or a socket cannot be made). Blocking:
    it owns the process.

    With ``pidfile``, detach as a daemon first (:mod:`activator.detach`): this call then returns
    in the command the user ran once the daemon is ready (0) or has failed (its exit code), and
    in the daemon when it stops (or 1 in the command when it is not ready after
    ``ready_timeout`` seconds). The log goes to ``[log] target``, which must not be stderr.

    Raises:
        LogTargetError: ``[log] target`` cannot be opened (before anything starts).
        DaemonError: with ``pidfile``: a daemon runs already with that pidfile, or it cannot be
            made (before detaching).
    """
    logs.configure(settings.log.format, target=settings.log.target)
    inherited = listener.inherited_sockets(os.environ, os.getpid())
    if pidfile is None:
        return _serve(settings, directories, strict, inherited)
    keep = [*logs.descriptors(), *(sock.fileno() for sock, _ in inherited)]
    started = detach.start(pidfile, keep, ready_timeout=ready_timeout)
    if isinstance(started, int):  # the command the user ran: the daemon is ready, or failed
        return started
    with started:
        try:
            code = _serve(settings, directories, strict, inherited)
        except Exception:  # stderr is /dev/null: the log is the only place a traceback can go
            logger.exception("serve failed")
            code = 1
        started.exit(code)
        return code


def _serve(
    settings: Settings,
    directories: Sequence[str],
    strict: bool,
    inherited: list[tuple[socket.socket, str | None]],
) -> int:
    catalog = load_catalog(directories)
    if strict and any(problem.is_error for problem in catalog.problems):
        log_problems(catalog)
        logger.error("--strict: not serving, the units have errors")
        return 2
    uidstore.bypass_own_userdb()
    _raise_nofile()  # before the spawner, which inherits it
    spawner = Spawner.launch()
    fatal = trio.run(
        _main,
        settings,
        list(directories),
        catalog,
        spawner,
        inherited,
        strict,
        instruments=loopwatch.instruments(),  # off unless $ACTIVATOR_LOOP_WATCH names a file
    )
    if fatal is not None:  # only with --strict: a socket that could not be made
        logger.error("--strict: not serving: %s", fatal)
        return 2
    return 0


async def _main(
    settings: Settings,
    directories: list[str],
    catalog: Catalog,
    spawner: Spawner,
    inherited: list[tuple[socket.socket, str | None]],
    strict: bool,
) -> str | None:
    # Signals are ours from the first moment: a SIGHUP during crash recovery must not kill us.
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:
                runtime = await open_runtime(nursery, settings, spawner, userdb=True)
                store = EnabledUnits(settings.units.enabled_directory)
                enabled = await trio.to_thread.run_sync(load_enabled, store)
                manager = Manager(
                    runtime,
                    lambda: load_catalog(directories),
                    inherited=inherited,
                    strict=strict,
                    enabled=enabled,
                )
                await start_control(nursery, settings, manager, runtime.leases, store, enabled)
                nursery.start_soon(_handle_signals, signals, manager)
                nursery.start_soon(collect_when_quiet, lambda: len(manager.live))
                unserved = None  # the metrics address could not be bound
                if settings.metrics.listen is not None:
                    unserved = await start_metrics(
                        nursery, settings.metrics.listen, runtime, manager,
                        userdb_path=runtime.userdb, strict=strict,
                    )  # fmt: skip
                if unserved is None or not strict:
                    await manager.serve(catalog)
                    # Per-connection units leave empty cgroup directories of their own behind.
                    await trio.to_thread.run_sync(runtime.cgroups.remove_empty)
                nursery.cancel_scope.cancel()
            runtime.leases.abandon()  # only leases whose teardown failed are left
            return unserved if strict and unserved is not None else manager.fatal
        finally:
            with trio.CancelScope(shield=True):
                await spawner.aclose()


def _raise_nofile() -> None:
    """The soft RLIMIT_NOFILE up to the hard one, as systemd does for itself: a live connection
    holds two descriptors (its pidfd, and the connection until the handler has it), and a full
    pool is 4336 of them (a handler gets its own LimitNOFILE= from its plan)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _handle_signals(signals: AsyncIterator[int], manager: Manager) -> None:
    """SIGHUP reloads; SIGTERM and SIGINT stop (a second one kills every handler at once)."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            manager.request_reload()
        else:
            manager.request_stop()
