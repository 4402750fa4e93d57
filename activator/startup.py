"""What every trio process of activator sets up before it runs an invocation: the cgroup
hierarchies, the lease service (crash recovery first), and the userdb service.

Rule 1: crash recovery comes before anything is handed out: :func:`open_runtime` replays the
lease directory, kills what a crashed activator left in its cgroups, clears the kernel keys of
those UIDs, and only then starts the pool's background scan.

Rule 2: the spawner is started by the caller, before trio and before any thread
(:meth:`activator.spawner.Spawner.launch`), and is served in the caller's nursery.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable

import trio

from activator import directories, teardown, uidstore
from activator.commands import Commands
from activator.control import ControlSocketError, serve_control
from activator.instances import EnabledUnits
from activator.invocation import Runtime
from activator.leases import LeaseService
from activator.manager import Manager
from activator.settings import Settings
from activator.sockfile import clear_stale_siblings
from activator.spawner import Spawner, SpawnerDied, SpawnFailed
from activator.userdb import SOCKET_PATH, UserdbSocketError, serve_userdb

logger = logging.getLogger(__name__)


async def open_runtime(
    nursery: trio.Nursery, settings: Settings, spawner: Spawner, *, userdb: bool
) -> Runtime:
    """Start the spawner's reader, recover and start the pool, and (with ``userdb``) serve our
    users to NSS; every task runs in ``nursery``. The caller closes ``runtime.leases`` when the
    nursery is done."""
    await nursery.start(spawner.serve)
    cgroups = await trio.to_thread.run_sync(teardown.Cgroups.detect)
    leases = LeaseService(
        settings.pool.first,
        settings.pool.last,
        on_exhausted=settings.pool.on_exhausted,
        wait_timeout=settings.pool.wait_timeout_sec,
        max_waiting=settings.pool.max_waiting,
        reuse_delay=settings.pool.reuse_delay_sec,
        reclaim=lambda record: reclaim(cgroups, spawner, record),
    )
    await trio.to_thread.run_sync(leases.recover, trio.current_time())
    await nursery.start(leases.run)
    userdb_path = None
    if userdb and settings.userdb.enabled:
        userdb_path = await start_userdb(nursery, leases)
    return Runtime(spawner, leases, cgroups, userdb=userdb_path)


async def start_userdb(nursery: trio.Nursery, leases: LeaseService) -> str:
    """Serve our users through NSS on the main socket, or, when another activator answers there
    (``activator serve`` owns it while it runs), on a socket of our own beside it; the path.

    The sockets of our own that crashed runs left beside it (``….run-PID``, nobody answering)
    are removed first: nss-systemd would try each of them at every lookup."""
    directory, name = os.path.split(SOCKET_PATH)
    await clear_stale_siblings(directory, f"{name}.run-", "userdb socket")
    try:
        await nursery.start(serve_userdb, leases, SOCKET_PATH)
    except UserdbSocketError as error:
        path = f"{SOCKET_PATH}.run-{os.getpid()}"
        logger.info("%s; serving %s instead", error, path)
        # Our own lookups must skip this socket too (they never wait on our own loop).
        uidstore.bypass_own_userdb(os.path.basename(path))
        await nursery.start(serve_userdb, leases, path)
        return path
    return SOCKET_PATH


def load_enabled(store: EnabledUnits) -> list[str]:
    """The enabled instances (blocking: it lists the directory); problems are logged."""
    try:
        names, warnings = store.load()
    except OSError as error:
        logger.error("enabled instances in %s: %s; none started", store.directory, error)
        return []
    for warning in warnings:
        logger.warning("%s", warning)
    return names


async def start_control(
    nursery: trio.Nursery,
    settings: Settings,
    manager: Manager,
    leases: LeaseService,
    store: EnabledUnits,
    enabled: Iterable[str],
) -> Commands | None:
    """Serve the control socket of ``settings`` in ``nursery``; None (logged) when it cannot
    be bound: activator serves on without it, as with a socket unit that cannot bind."""
    commands = Commands(manager, leases, store, set(enabled))
    path = settings.control.socket
    try:
        await nursery.start(
            functools.partial(serve_control, path, settings.control.group, commands.dispatch)
        )
    except ControlSocketError as error:
        logger.error("control socket: %s; serving without it", error)
        return None
    return commands


def reclaim(cgroups: teardown.Cgroups, spawner: Spawner, record: dict[str, object] | None) -> None:
    """Kill what a stale lease's invocation left running, then clear the kernel keys its UID
    still owns (in a worker thread, at start). A UID whose keys cannot be cleared stays out of
    the pool: its probe reports them."""
    if record is None:
        return
    recorded = record.get("cgroup")
    if isinstance(recorded, str):
        # The record names the cgroup of each holder (unit/invocation), one per line; older
        # records held its first path.
        names = set(recorded.split("\n"))
        for cgroup in cgroups.leftovers():
            if cgroup.name in names or names.intersection(cgroup.paths):
                trio.from_thread.run(teardown.kill_and_wait, cgroups, cgroup)
    uid = record.get("uid")
    if not isinstance(uid, int) or isinstance(uid, bool):
        return
    # Runtime directories the dead invocation left under /run (the record does not name them).
    removed = directories.remove_owned_runtime_entries(uid)
    for path in removed:
        logger.info("removed %s, left by UID %d before a crash", path, uid)
    if uidstore.has_keys(uid):
        try:
            trio.from_thread.run(spawner.clear_keyrings, uid)
        except (SpawnFailed, SpawnerDied, ValueError) as error:
            logger.warning("clearing the kernel keys of reclaimed UID %d: %s", uid, error)
