"""One invocation, start to end: identity, directories, cgroup, plan, spawn, teardown, release.

Rule 1: every step that took something gives it back, in reverse order, whatever failed: a lease
is released only after the invocation's processes are proven gone (:class:`leases.Vacated`), the
cgroup is removed only when empty, the runtime directory is removed after the last process.

Rule 2: the event loop never blocks: directory set-up and chown, static user lookups and a
cgroup needing several hierarchies run in worker threads; a cgroup of one or two directories
(tens of microseconds, less than a thread's round trip) is made on the loop; the spawner forks,
never this process.

Rule 3: one invocation's failure is its own: :func:`run_invocation` returns an
:class:`Outcome` for every way an invocation can end (spawn failure, pool exhaustion, a
directory error) and raises only for cancellation.

Theory of operation (DESIGN.md, "One connection, start to end", steps 3-8): the identity is a fresh
lease for ``DynamicUser=yes`` (unless ``User=`` names a static user), the static ``User=``
otherwise, or root. The connections of an Accept=yes socket whose service has a directory that is
the same for every connection share one lease, the template's user, as systemd's instances do.
Directories come next (the lease's UID must own them), then a cgroup for the invocation, whose
``cgroup.procs`` files go into the plan so the child joins it before exec. Once the handler runs,
the wait is bounded by ``RuntimeMaxSec=``: at expiry the handler gets ``KillSignal=``, then SIGKILL
after ``TimeoutStopSec=``. The handler is PID 1 of its own PID namespace, so when it is reaped the
kernel has already killed and reaped every other process of the namespace; the cgroup is killed and
drained anyway (a second, independent proof) before the lease is released.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import pwd
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import attrs
import trio

from activator import directories, teardown, uidstore, values
from activator.leases import LeaseService, PoolExhausted, Vacated, new_invocation_id
from activator.model import SECOND, ServiceUnit, SharedDirectories
from activator.plan import (
    Descriptors,
    HostFacts,
    Identity,
    Peer,
    PlanError,
    build_plan,
    stdio_files,
)
from activator.spawner import ExitStatus, Handler, Spawner, SpawnerDied, SpawnFailed
from activator.uidpool import Lease, user_name

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The shell and home of every dynamic user (systemd's choice).
NOLOGIN = "/usr/sbin/nologin"


@attrs.frozen
class Outcome:
    """How an invocation ended.

    Attributes:
        invocation: its id.
        unit: its unit.
        status: the handler's exit, or None when it never ran.
        failure: a one-line reason when it never ran or could not be torn down cleanly.
        stage: where it failed (``lease``, ``directories``, ``cgroup``, ``plan``, or the
            spawner's stage such as ``mount`` or ``exec``), else None.
        uid: the UID it ran as (None when it never had one).
        user: the user name.
        seconds: from start to release.
        reason: a bounded label of the failure, for metrics and logs: the pool's
            (``exhausted``, ``queue_full``, ``wait_timeout``) or the stage; None on success.
        timings: seconds spent in each step that ran (``identity``, ``directories``, ``cgroup``,
            ``spawn``, ``run``, ``teardown``), in order.
        stopped: the handler was stopped on request (a drain or ``stop``), not by its own end.
    """

    invocation: str
    unit: str
    status: ExitStatus | None
    failure: str | None = None
    stage: str | None = None
    uid: int | None = None
    user: str | None = None
    seconds: float = 0.0
    reason: str | None = None
    timings: tuple[tuple[str, float], ...] = ()
    stopped: bool = False

    @property
    def exit_code(self) -> int:
        """A shell's view: the exit code, 128+signal, or 127 when it never ran."""
        if self.status is None:
            return 127
        if self.status.signal is not None:
            return 128 + self.status.signal
        return self.status.code or 0


@attrs.define(eq=False)
class Runtime:
    """What invocations share: the spawner, the lease service and the cgroup hierarchy.

    Attributes:
        spawner: the spawner client.
        leases: the lease service (the UID pool).
        cgroups: the cgroup hierarchies.
        memory_total: physical memory in bytes (MemoryMax= percentages).
        pid_max: the kernel's pid limit (TasksMax= percentages).
        host: facts of this host a plan needs (our hard RLIMIT_NOFILE caps LimitNOFILE=).
        on_started: called with (unit, invocation, spawn seconds) once a handler runs.
        on_finished: called with every :class:`Outcome`.
        on_chown: called with what each directories step did (skipped or not).
        runtime_directories: the services whose runtime directories the last holder of a shared
            lease removes, by UID (one per distinct set of directories).
        userdb: the userdb socket this process serves, None when userdb is off.
    """

    spawner: Spawner
    leases: LeaseService
    cgroups: teardown.Cgroups
    memory_total: int = attrs.field(factory=lambda: _memory_total())
    pid_max: int = attrs.field(factory=lambda: _pid_max())
    host: HostFacts = attrs.field(
        factory=lambda: HostFacts(nofile_hard=_infinity_as_minus_one(_nofile_hard()))
    )
    on_started: Callable[[str, str, float], None] | None = None
    on_finished: Callable[[Outcome], None] | None = None
    on_chown: Callable[[directories.ChownStats], None] | None = None
    runtime_directories: dict[int, dict[tuple[object, ...], ServiceUnit]] = attrs.field(
        factory=dict
    )
    userdb: str | None = None


class _Failed(Exception):
    def __init__(self, stage: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.reason = reason or stage


@attrs.define(eq=False)
class StopRequest:
    """A way to stop one invocation from outside (a drain, ``activator stop``): the handler
    gets ``KillSignal=`` and, after ``TimeoutStopSec=``, SIGKILL, as at ``RuntimeMaxSec=``;
    with ``kill=True``, SIGKILL at once. A request made before the handler runs applies as
    soon as it does."""

    requested: bool = False
    kill: bool = False
    #: No handler may start any more (a drain): one that already did is left alone.
    no_start: bool = False
    _scopes: set[trio.CancelScope] = attrs.field(factory=set)
    _kill_scopes: set[trio.CancelScope] = attrs.field(factory=set)

    def request(self, *, kill: bool = False) -> None:
        """Ask the invocation to stop (idempotent; ``kill`` only makes it harsher: a stop
        under way waits no longer for ``TimeoutStopSec=``)."""
        self.requested = True
        self.kill = self.kill or kill
        for scope in self._scopes | (self._kill_scopes if self.kill else set()):
            scope.cancel()

    @contextlib.contextmanager
    def cancels(self, scope: trio.CancelScope, *, kill_only: bool = False) -> Iterator[None]:
        """Within the block, a request (with ``kill_only``, a kill request) cancels ``scope``,
        at once if one was made already."""
        if self.kill or (self.requested and not kill_only):
            scope.cancel()
        scopes = self._kill_scopes if kill_only else self._scopes
        scopes.add(scope)
        try:
            yield
        finally:
            scopes.discard(scope)


async def run_invocation(
    runtime: Runtime,
    service: ServiceUnit,
    *,
    descriptors: Descriptors,
    fds: Sequence[int],
    peer: Peer | None = None,
    per_connection: bool = False,
    invocation: str | None = None,
    on_spawned: Callable[[], None] | None = None,
    stop_request: StopRequest | None = None,
    on_identity: Callable[[int, str], None] | None = None,
    on_not_spawned: Callable[[], None] | None = None,
    shared: SharedDirectories | None = None,
) -> Outcome:
    """Run one invocation of ``service`` to its end and give back everything it took.

    Args:
        runtime: the shared spawner, leases and cgroups.
        service: the unit (an instance already has its ``%i`` resolved).
        descriptors: how the passed descriptors map onto the handler's.
        fds: the descriptors to pass (the caller keeps and closes its copies).
        peer: the connection's peer, for the environment.
        per_connection: an Accept=yes invocation (its user name gets a unique suffix).
        invocation: the id, or None for a fresh one.
        on_spawned: called once the handler has its copies of ``fds`` (the caller may close
            its own, as the listener does with a connection).
        stop_request: stops the handler early when requested (see :class:`StopRequest`).
        on_identity: called with the UID and user name once they are known (for status).
        on_not_spawned: called, before the teardown, when no handler will run (the caller may
            close what it kept for the handler: a client then sees the end at once, not after
            a teardown that waits out a shortage of descriptors).
        shared: for a ``per_connection`` invocation, the directories every instance of its
            template shares (:func:`activator.model.shared_directories`). With any, or with
            ``User=``, the user is the same for every connection, as systemd's: the template's
            (``foo`` for ``foo@.service``), one lease held by every connection at once, so
            those directories keep one owner and the last holder removes the shared runtime
            directories; each connection's own runtime directories go with it.
    """
    invocation = invocation or new_invocation_id()
    unit = service.name.name
    started = time.perf_counter()
    clock = _Clock(started)
    lease: Lease | None = None
    identity: Identity | None = None
    cgroup: teardown.Cgroup | None = None
    status: ExitStatus | None = None
    failure: _Failed | None = None
    vacated_how = "never ran"
    spawned = False
    try:
        try:
            identity, lease = await _identity(runtime, service, invocation, per_connection, shared)
            clock.lap("identity")
            if on_identity is not None:
                on_identity(identity.uid, identity.user)
            if service.directory_environment:  # any Runtime/State/Cache/LogsDirectory=
                stats = await _in_thread(
                    "directories",
                    directories.prepare_directories,
                    service,
                    identity.uid,
                    identity.gid,
                )
                if runtime.on_chown is not None:
                    runtime.on_chown(stats)
                if not stats.skipped:
                    logger.info(
                        "%s: chowned %d files to %d in %.3f s",
                        unit, stats.files, identity.uid, stats.seconds,
                    )  # fmt: skip
                clock.lap("directories")
            limits = teardown.limits_for(
                service, memory_total=runtime.memory_total, pid_max=runtime.pid_max
            )
            if lease is not None:
                # Recorded before it exists: a crash in between still leaves a record that names
                # the cgroup, so the next start can kill what runs in it.
                name = (
                    f"{teardown.escape_cgroup_name(unit)}/{teardown.escape_cgroup_name(invocation)}"
                )
                try:
                    lease = runtime.leases.record_cgroup(lease, name)
                except OSError as error:
                    raise _Failed(stage="lease", message=_os_error_text(error)) from error
            cgroup = await _create_cgroup(runtime.cgroups, unit, invocation, limits)
            clock.lap("cgroup")
            extra_env: list[tuple[str, str]] = []
            opened: list[tuple[str, int]] = []
            if service.environment_files:
                extra_env = await _in_thread("environment", _read_environment_files, service)
            if stdio_files(service):
                opened = await _in_thread("stdio", _open_stdio_files, service)
                descriptors = attrs.evolve(
                    descriptors,
                    files=tuple((path, len(fds) + n) for n, (path, _) in enumerate(opened)),
                )
                fds = (*fds, *(fd for _, fd in opened))
            try:
                try:
                    plan = build_plan(
                        service,
                        identity,
                        invocation=invocation,
                        descriptors=descriptors,
                        peer=peer,
                        cgroup_procs=cgroup.procs_files,
                        extra_env=extra_env,
                        host=runtime.host,
                    )
                except (PlanError, ValueError) as error:
                    raise _Failed(stage="plan", message=str(error)) from error
                if stop_request is not None and (stop_request.requested or stop_request.no_start):
                    # Asked to stop while it waited for a UID or its directories: no handler.
                    why = "stopped before its handler started"
                    raise _Failed(stage="stopped", message=why, reason="stopping")
                spawn_started = time.perf_counter()
                try:
                    handler = await runtime.spawner.spawn(plan, fds)
                except SpawnFailed as error:
                    raise _Failed(error.stage, str(error)) from error
                except ValueError as error:  # a plan the spawner cannot carry (size, fds)
                    raise _Failed(stage="plan", message=str(error)) from error
                except SpawnerDied as error:
                    raise _Failed(stage="spawner", message=str(error)) from error
            finally:
                for _, fd in opened:  # the handler has its copies, or never will
                    os.close(fd)
            clock.lap("spawn")
            spawned = True
            if on_spawned is not None:
                on_spawned()
            if runtime.on_started is not None:
                runtime.on_started(unit, invocation, time.perf_counter() - spawn_started)
            try:
                status = await _wait(handler, service, stop_request)
                clock.lap("run")
            except SpawnerDied as error:  # it ran: not a refusal of the connection
                raise _Failed(stage="spawner", message=str(error), reason="spawner_died") from error
            vacated_how = "pid namespace"
        except _Failed as error:
            failure = error
        except PoolExhausted as error:
            failure = _Failed(stage="lease", message=str(error), reason=error.reason)
        finally:
            if not spawned and on_not_spawned is not None:
                on_not_spawned()
            with trio.CancelScope(shield=True):
                await _teardown(runtime, service, cgroup, lease, vacated_how, unit, shared)
            clock.lap("teardown")
    except (teardown.TeardownError, OSError) as error:
        # The lease stays held (this process keeps its lock): a UID is never released while
        # anything of it may live. A restart reclaims it.
        logger.error("%s %s: teardown failed, UID kept: %s", unit, invocation, error)
        if failure is None:
            failure = _Failed(stage="teardown", message=str(error))
        else:  # the first failure is the story; the teardown's is its epilogue
            failure = _Failed(
                failure.stage, f"{failure}; then teardown failed: {error}", failure.reason
            )
    # Stopped on request: a handler that ran and was stopped, or one that never started because
    # a stop (or a drain) came first.
    never_started = failure is not None and failure.stage == "stopped"
    stopped = never_started or (
        stop_request is not None and stop_request.requested and status is not None
    )
    outcome = Outcome(
        invocation=invocation,
        unit=unit,
        status=status,
        failure=None if failure is None else str(failure),
        stage=None if failure is None else failure.stage,
        uid=None if identity is None else identity.uid,
        user=None if identity is None else identity.user,
        seconds=time.perf_counter() - started,
        reason=None if failure is None else failure.reason,
        timings=tuple(clock.laps.items()),
        stopped=stopped,
    )
    if runtime.on_finished is not None:
        runtime.on_finished(outcome)
    return outcome


async def _identity(
    runtime: Runtime,
    service: ServiceUnit,
    invocation: str,
    per_connection: bool,
    shared: SharedDirectories | None = None,
) -> tuple[Identity, Lease | None]:
    """Who the handler runs as: a lease, a static user, or root.

    systemd's rule: with ``DynamicUser=yes``, a user name (``User=``, else the one made from the
    unit name) that names an existing static user runs as that user, with no lease.
    Per-connection names (with their random suffix) are not looked up: they are made fresh.
    A per-connection invocation whose user is the same for every connection (``User=``, or a
    directory every connection shares: ``shared``) takes systemd's name, the template's
    (``foo`` for ``foo@.service``), and holds one lease with every other connection.
    """
    together = per_connection and (service.user is not None or bool(shared))
    name = service.user
    if name is None and service.dynamic_user and (together or not per_connection):
        name = user_name(_template_user_unit(service) if together else service.name.name)
    if name is not None:
        static = await _in_thread("user", _static_user, name)
        if static is not None and runtime.leases.first <= static.uid <= runtime.leases.last:
            # A UID of the pool is a dynamic user (another activator's, seen through NSS),
            # never a static one to share: as systemd, which ignores users in its dynamic range.
            static = None
        if static is not None or not service.dynamic_user:
            if static is None:
                msg = f"User={name}: no such user"
                raise _Failed(stage="user", message=msg)
            return static, None
    if not service.dynamic_user:
        return Identity(0, 0, "root", "root", home="/root", shell="/bin/sh", dynamic=False), None
    owner = None
    if service.state_directory or service.cache_directory or service.logs_directory:
        # A stat per directory, in a thread: skipped (a thread round trip saved) when none.
        owner = await _in_thread("directories", directories.state_directory_owner, service)
    try:
        lease = await runtime.leases.acquire(
            service.name.name,
            invocation,
            # The shared lease of a template's connections is keyed by the user's name
            # (``user:foo``), as systemd's units that name one dynamic user share its UID.
            user=name if together else service.user,
            per_connection=per_connection and not together,
            state_owner=owner,
            share=together or not per_connection,
        )
    except OSError as error:
        raise _Failed(stage="lease", message=_os_error_text(error)) from error
    identity = Identity(lease.uid, lease.gid, lease.user, lease.user, home="/", shell=NOLOGIN)
    return identity, lease


def _template_user_unit(service: ServiceUnit) -> str:
    """The plain unit whose user every instance of ``service``'s template shares, as systemd
    names it (unit_name_to_prefix): ``foo.service`` for ``foo@3-127.0.0.1:80-....service``."""
    return service.name.with_instance(None).name


def _static_user(name: str) -> Identity | None:
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        return None
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)) - {entry.pw_gid}))
    return Identity(
        entry.pw_uid,
        entry.pw_gid,
        entry.pw_name,
        entry.pw_name,
        home=entry.pw_dir or "/",
        shell=entry.pw_shell or NOLOGIN,
        groups=groups,
        dynamic=False,
    )


async def _wait(
    handler: Handler, service: ServiceUnit, stop_request: StopRequest | None
) -> ExitStatus:
    """Wait for the handler; past ``RuntimeMaxSec=`` or on request, stop it as systemd does."""
    limit = math.inf if service.runtime_max_sec is None else service.runtime_max_sec / SECOND
    with trio.move_on_after(limit) as scope:
        if stop_request is None:
            return await handler.wait()
        with stop_request.cancels(scope):
            return await handler.wait()
    if stop_request is None or not stop_request.requested:
        logger.info("%s: RuntimeMaxSec= reached, stopping", handler.invocation)
    return await stop(handler, service, stop_request)


async def stop(
    handler: Handler, service: ServiceUnit, stop_request: StopRequest | None = None
) -> ExitStatus:
    """Stop a running handler as systemd does: ``KillSignal=``, then SIGKILL after
    ``TimeoutStopSec=``, or at once when ``stop_request`` asks for a kill (before or during
    the wait).

    The handler is PID 1 of its PID namespace, and the kernel drops a signal to it that it has
    no handler for: when ``/proc/PID/status`` shows it does not catch ``KillSignal=``, waiting
    could only end in SIGKILL, so SIGKILL is sent at once.
    """
    killing = stop_request is not None and stop_request.kill
    if not killing and _catches(handler.pid, service.kill_signal):
        await handler.kill(service.kill_signal)
        grace = math.inf if service.timeout_stop_sec is None else service.timeout_stop_sec / SECOND
        with trio.move_on_after(grace) as scope:
            if stop_request is None:
                return await handler.wait()
            with stop_request.cancels(scope, kill_only=True):
                return await handler.wait()
    await handler.kill(signal.SIGKILL)
    return await handler.wait()


async def _teardown(
    runtime: Runtime,
    service: ServiceUnit,
    cgroup: teardown.Cgroup | None,
    lease: Lease | None,
    how: str,
    unit: str,
    shared: SharedDirectories | None = None,
) -> None:
    """Kill and drain the cgroup, remove runtime directories, clear the UID's kernel keys, then
    release the lease. Of a lease shared with invocations still running (one customer's
    concurrent connections, or the connections of a template with a shared directory), only the
    cgroup goes, and the runtime directories that are this connection's alone (``shared``
    tells them apart): its last holder does the rest, the shared runtime directories of every
    holder included."""
    if cgroup is not None:
        try:
            await _patiently(unit, teardown.kill_and_wait, runtime.cgroups, cgroup)
        except BaseException:
            if lease is not None:  # something of it may live on: its UID is never released
                runtime.leases.give_up(lease)
            raise
        how = "cgroup" if how == "never ran" else f"{how} and cgroup"
    services = [service] if service.runtime_directory else []
    if lease is not None and shared is not None and service.runtime_directory:
        # A connection's own runtime directories (x/%i) go now: kept for the last holder, they
        # would pile up for as long as connections overlap.
        own = tuple(d for d in service.runtime_directory if d not in shared.runtime)
        common = tuple(d for d in service.runtime_directory if d in shared.runtime)
        services = [attrs.evolve(service, runtime_directory=common)] if common else []
        if own:
            try:
                await _patiently(
                    unit, _remove_runtime_directories, attrs.evolve(service, runtime_directory=own)
                )
            except BaseException:  # files of the UID may stay under /run: it is never released
                runtime.leases.give_up(lease)
                raise
    if lease is not None:
        pending = runtime.runtime_directories.setdefault(lease.uid, {})
        for each in services:
            pending[each.runtime_directory, each.runtime_directory_preserve] = each
        if not runtime.leases.detach(lease, None if cgroup is None else cgroup.name):
            return  # a shared lease: the invocations still holding it keep its user as it is
        services = list(runtime.runtime_directories.pop(lease.uid, {}).values())
    released = False
    try:
        for each in services:
            await _patiently(unit, _remove_runtime_directories, each)
        if lease is not None:
            await _patiently(unit, _clear_keys, runtime, lease.uid, unit)
            await _patiently(unit, runtime.leases.release, lease, Vacated(lease.uid, how))
            released = True
    finally:
        if lease is not None and not released:
            runtime.leases.give_up(lease)


async def _remove_runtime_directories(service: ServiceUnit) -> None:
    try:
        await trio.to_thread.run_sync(directories.remove_runtime_directories, service)
    except (OSError, directories.DirectoryError) as error:
        # Files of the UID would stay reachable under /run: the lease is kept.
        msg = f"removing the runtime directory: {error}"
        raise teardown.TeardownError(msg) from error


#: Errors that say "not now" (out of descriptors, memory or buffers), not "never".
_SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long a teardown step retries through a shortage before the UID is given up on.
SHORTAGE_PATIENCE = 300.0


async def _patiently(unit: str, step: Callable[..., Awaitable[None]], *args: object) -> None:
    """Run a teardown step; while it fails for a shortage of descriptors or memory, retry it
    with a growing pause (a burst that exhausts descriptors must not cost the pool its UIDs;
    every step is safe to repeat). Other errors, and a shortage that outlasts
    :data:`SHORTAGE_PATIENCE`, are raised (the lease is kept)."""
    deadline = trio.current_time() + SHORTAGE_PATIENCE
    delay = 0.01
    while True:
        try:
            await step(*args)
            return
        except (teardown.TeardownError, OSError) as error:
            cause = _shortage(error)
            if cause is None or trio.current_time() + delay > deadline:
                raise
            logger.warning("%s: teardown: %s; retrying in %.2f s", unit, cause, delay)
        await trio.sleep(delay)
        delay = min(delay * 2, 1.0)


def _shortage(error: BaseException | None) -> str | None:
    """The text of a shortage error in ``error`` or its causes, else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _SHORTAGE_ERRNOS:
            return os.strerror(error.errno)
        error = error.__cause__ or error.__context__
    return None


#: How long teardown waits for the kernel to free the keys of a cleared UID.
KEYS_TIMEOUT = 1.0
_KEYS_POLL = 0.01


async def _clear_keys(runtime: Runtime, uid: int, unit: str) -> None:
    """Leave no kernel key of ``uid`` behind: keys in its user keyrings outlive every process
    (the kernel keeps a UID's ``@u`` and ``@us`` for as long as the host's user namespace),
    so the next invocation leased the same UID would read them.

    The check reads /proc/key-users on the loop (30 µs; a worker thread round trip costs 270
    µs). The handler's own session keyring is root's (the spawner makes it before dropping
    privileges), so it is not counted here. When the UID owns keys, a process of the UID clears both
    keyrings (the spawner forks it: 2.7 ms) and the kernel frees what they held asynchronously
    (20-45 ms here), polled for at most :data:`KEYS_TIMEOUT`.

    Raises:
        teardown.TeardownError: the UID still owns keys (a handler can take its own write
            permission on ``@u`` away, or link keys into another UID's keyring): the lease is
            not released, so the UID is never handed out again by this process.
    """
    try:
        if not uidstore.has_keys(uid):
            return
        try:
            await runtime.spawner.clear_keyrings(uid)
        except (SpawnFailed, SpawnerDied) as error:
            logger.warning("%s: clearing the keyrings of UID %d: %s", unit, uid, error)
        deadline = trio.current_time() + KEYS_TIMEOUT
        while uidstore.has_keys(uid):
            if trio.current_time() >= deadline:
                usage = uidstore.key_usage(uid)
                msg = (
                    f"UID {uid} still owns kernel keys {KEYS_TIMEOUT:g} s after its keyrings "
                    f"were cleared ({usage}): its lease is kept"
                )
                raise teardown.TeardownError(msg)
            await trio.sleep(_KEYS_POLL)
    except OSError as error:
        msg = f"kernel keys of UID {uid}: {error}"
        raise teardown.TeardownError(msg) from error


#: How many cgroup directories :meth:`teardown.Cgroups.create` may make on the event loop: one
#: mkdir in cgroupfs takes 20-60 us here, less than a worker thread's round trip (100-300 us of
#: CPU under load); with v1 controllers for limits (several mkdirs and limit writes), a thread.
_CGROUP_DIRS_ON_LOOP = 2


async def _create_cgroup(
    cgroups: teardown.Cgroups, unit: str, invocation: str, limits: teardown.CgroupLimits
) -> teardown.Cgroup:
    """The invocation's cgroup: made on the loop when it is a directory or two, else in a
    worker thread (Rule 2: the loop never waits long)."""
    try:
        if len(cgroups.hierarchies_for(limits)) <= _CGROUP_DIRS_ON_LOOP:
            return cgroups.create(unit, invocation, limits)
    except teardown.TeardownError as error:
        raise _Failed(stage="cgroup", message=str(error)) from error
    return await _in_thread("cgroup", cgroups.create, unit, invocation, limits)


async def _in_thread(stage: str, function: Callable[..., _T], *args: object) -> _T:
    try:
        return await trio.to_thread.run_sync(function, *args)
    except OSError as error:
        raise _Failed(stage=stage, message=_os_error_text(error)) from error
    except (directories.DirectoryError, teardown.TeardownError) as error:
        raise _Failed(stage=stage, message=str(error)) from error


class _Clock:
    """Seconds per step: each :meth:`lap` records the time since the previous one."""

    def __init__(self, started: float) -> None:
        self.last = started
        self.laps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        if step in self.laps:
            return
        now = time.perf_counter()
        self.laps[step] = now - self.last
        self.last = now


def _os_error_text(error: OSError) -> str:
    """``path: No such file or directory``, as a user reads it."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt:`` in its status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _read_environment_files(service: ServiceUnit) -> list[tuple[str, str]]:
    """The assignments of ``EnvironmentFile=``, in order; a missing ``-`` file is skipped."""
    out: list[tuple[str, str]] = []
    for entry in service.environment_files:
        try:
            with open(entry.path, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            if entry.ignore_missing:
                continue
            raise
        except UnicodeDecodeError as error:
            msg = f"EnvironmentFile={entry.path}: not UTF-8 ({error.reason})"
            raise _Failed(stage="environment", message=msg) from error
        try:
            out.extend(values.parse_environment_file(text))
        except ValueError as error:
            msg = f"EnvironmentFile={entry.path}: {error}"
            raise _Failed(stage="environment", message=msg) from error
    return out


#: How each kind of StandardInput=/StandardOutput= file is opened (as root, as systemd does).
_STDIO_FLAGS = {
    "read": os.O_RDONLY,
    "write": os.O_WRONLY | os.O_CREAT,
    "append": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "truncate": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "readwrite": os.O_RDWR | os.O_CREAT,
}


def _open_stdio_files(service: ServiceUnit) -> list[tuple[str, int]]:
    """Open the ``file:``/``append:``/``truncate:`` streams; the caller closes them."""
    opened: list[tuple[str, int]] = []
    try:
        for path, how in stdio_files(service):
            flags = _STDIO_FLAGS[how] | os.O_CLOEXEC | os.O_NOCTTY
            opened.append((path, os.open(path, flags, 0o666)))
    except OSError:
        for _, fd in opened:
            os.close(fd)
        raise
    return opened


def _nofile_hard() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _infinity_as_minus_one(limit: int) -> int:
    return -1 if limit == resource.RLIM_INFINITY else limit


def _memory_total() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 32768
