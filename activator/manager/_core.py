"""The manager itself: see the package docstring."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import trio

from activator import listener, logs
from activator.admission import Admission, Limits, RateLimit, Source
from activator.catalog import Catalog
from activator.errors import ConfigError
from activator.invocation import Outcome, Runtime, StopRequest, run_invocation
from activator.leases import new_invocation_id
from activator.listener import ListenError, ListenSpec
from activator.model import (
    SECOND,
    ServiceUnit,
    SharedDirectories,
    SocketUnit,
    every_directory,
    shared_directories,
)
from activator.plan import Descriptors, Peer
from activator.units import UnitName, parse_unit_name

from ._events import log_outcome, log_problems, log_reject, relay_output
from ._rules import describe_peer, instance_name, peer_ip, should_restart, writes_to_log
from ._state import Hooks, Live, ManagerError, ReloadReport, ServiceRun, SocketState

logger = logging.getLogger("activator.manager")

#: accept() errors that mean "out of resources for now": back off and retry (trio's list).
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: The first and the longest pause after a capacity error of accept().
BACKOFF_FIRST: Final = 0.05
BACKOFF_MAX: Final = 1.0
#: systemd's DefaultStartLimitIntervalSec= and DefaultStartLimitBurst=, for Restart=.
START_LIMIT_INTERVAL: Final = 10.0
START_LIMIT_BURST: Final = 5
#: accept() errors that concern one pending connection only: accept the next one at once
#: (accept(2): "Linux accept() passes already-pending network errors on the new socket").
ACCEPT_CONNECTION_ERRNOS: Final = frozenset({
    errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
    errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
    errno.EINTR,
})  # fmt: skip
#: Failures that are a refusal of the connection (no UID, no spawner, stopping), not a failure
#: of the service.
_REJECT_REASONS: Final = frozenset(
    {"exhausted", "queue_full", "wait_timeout", "spawner", "stopping"}
)


class Manager:
    """Every socket unit, every live invocation, reload and drain.

    Args:
        runtime: the spawner, pool and cgroups invocations share.
        load: loads the catalog afresh (blocking: it reads the units directories); called in a
            worker thread at start and at each reload.
        inherited: sockets passed to activator by socket activation, with their names; each
            serves the unit whose spec it matches, the rest are closed.
        strict: a socket that cannot be made at start is fatal (:meth:`serve` returns at once,
            with :attr:`fatal` set) instead of leaving its unit out.
        enabled: template instances to run from the start (``foo@alice.socket`` listens,
            ``foo@alice.service`` is started), as ``activator enable`` recorded them.
    """

    def __init__(
        self,
        runtime: Runtime,
        load: Callable[[], Catalog],
        *,
        inherited: Sequence[tuple[socket.socket, str | None]] = (),
        strict: bool = False,
        enabled: Sequence[str] = (),
    ) -> None:
        self.runtime = runtime
        self._load = load
        self._inherited = list(inherited)
        self.catalog: Catalog | None = None
        self.sockets: dict[str, SocketState] = {}
        self.services: dict[str, ServiceRun] = {}
        self.live: dict[str, Live] = {}
        self._loops: trio.Nursery | None = None
        self._invocations: trio.Nursery | None = None
        self._idle = trio.Event()
        self._idle.set()
        self._reloading = trio.Lock()
        self._service_stops: set[StopRequest] = set()
        self._stop_requested = trio.Event()
        self._reload_queued = False
        self._reload_early = False
        self.strict = strict
        #: Why :meth:`serve` returned without serving (``strict`` and a socket failed), or None.
        self.fatal: str | None = None
        self.serving = False
        self.draining = False
        #: Callbacks for the metrics (accepted and rejected connections).
        self.hooks = Hooks()
        #: Socket instances of templates that listen besides the socket units of the catalog.
        self.instances: set[str] = {n for n in enabled if n.endswith(".socket")}
        self._enabled_services = [n for n in enabled if n.endswith(".service")]
        #: Why each socket unit left out by the last apply could not run (its one-line error).
        self.errors: dict[str, str] = {}

    # --- the whole life ------------------------------------------------------------------------

    async def serve(
        self,
        catalog: Catalog,
        *,
        task_status: trio.TaskStatus[ReloadReport] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on every socket of ``catalog``'s socket units and serve until SIGTERM, SIGINT
        or :meth:`request_stop`, then drain. SIGHUP reloads. Started with ``nursery.start``, it
        reports what it bound once every socket listens."""
        try:
            async with trio.open_nursery() as invocations:
                self._invocations = invocations
                async with trio.open_nursery() as loops:
                    self._loops = loops
                    try:
                        report = await self._apply(catalog, strict=self.strict)
                    except ListenError as error:  # strict: nothing serves, serve() returns
                        self.fatal = str(error)
                        loops.cancel_scope.cancel()
                        return
                    self._close_unused_inherited()
                    count = sum(len(s.listening) for s in self.sockets.values())
                    logs.event(
                        logger, logging.INFO, "ready",
                        f"ready: {count} sockets of {len(self.sockets)} units listening",
                        sockets=count, units=len(self.sockets),
                    )  # fmt: skip
                    listener.notify(f"READY=1\nSTATUS=listening on {count} sockets")
                    self.serving = True
                    task_status.started(report)
                    if self._reload_early:  # asked for while starting: the units may have changed
                        self.request_reload()
                    for name in self._enabled_services:
                        try:
                            await self.start(name)
                        except ManagerError as error:
                            logger.error("enabled service %s: %s", name, error)
                    await self._stop_requested.wait()
                    await self.drain()
                    loops.cancel_scope.cancel()
        finally:
            self._close_all()
        logs.event(logger, logging.INFO, "stopped", "stopped")

    def request_reload(self) -> None:
        """Reload soon, as SIGHUP does: requests made while one waits to run are one reload."""
        if self.draining or self._stop_requested.is_set():
            logger.info("reload asked for while stopping: ignored")
            return
        if self._loops is None or not self.serving:  # once serving begins
            self._reload_early = True
            return
        if self._reload_queued:
            return
        self._reload_queued = True
        self._loops.start_soon(self._queued_reload)

    async def _queued_reload(self) -> None:
        async with self._reloading:
            self._reload_queued = False
            if self.draining:  # the stop came first
                return
            try:
                await self._reload()
            except Exception:  # a bug must cost this reload, never the server
                logger.exception("reload failed; units as they were before it, where possible")

    def request_stop(self) -> None:
        """Make :meth:`serve` drain and return, as SIGTERM does; asked again while draining,
        kill every handler at once (a second Ctrl-C)."""
        if self._stop_requested.is_set():
            logger.warning("asked to stop again: killing %d invocations now", len(self.live))
            for live in list(self.live.values()):
                live.stop.request(kill=True)
            return
        self._stop_requested.set()

    async def drain(self) -> None:
        """Stop accepting, stop services, give connections ``TimeoutStopSec=`` to finish, then
        kill them; returns when every invocation is over and its lease released."""
        if self.draining:
            return
        self.draining = True
        logs.event(
            logger, logging.INFO, "stopping",
            f"stopping: {len(self.live)} invocations still running",
            invocations=len(self.live),
        )  # fmt: skip
        listener.notify("STOPPING=1")
        async with trio.open_nursery() as timers:
            # Every stop first (a reload waiting for a service to stop is not waited for).
            for stop in list(self._service_stops):
                stop.request()
            for live in list(self.live.values()):
                if live.per_connection:
                    live.stop.no_start = True  # not started yet: it never will
                    timers.start_soon(_kill_after, live)  # started: TimeoutStopSec= to finish
                else:
                    live.stop.request()
            async with self._reloading:  # then a reload under way finishes
                states = list(self.sockets.values())
                for state in states:
                    state.scope.cancel()
                for state in states:
                    if state.service is None:  # its loop waits on its sockets: it ends at once
                        await state.done.wait()
                # New clients get a refusal now, not a hang until the last invocation ends (an
                # Accept=no service still running has copies of its own).
                self._close_all()
            await self._idle.wait()
            for state in states:
                await state.done.wait()
            timers.cancel_scope.cancel()

    async def reload(self) -> ReloadReport:
        """Load the units again and apply them (module docstring, Rule 2); what changed.

        Raises:
            ManagerError: activator is stopping.
        """
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> ReloadReport:
        if self.draining:  # nothing may bind or listen again once a drain began
            msg = "activator is stopping: not reloading"
            raise ManagerError(msg)
        if not self.serving:  # serve() applies the units itself, and its loops run them
            msg = "activator is not serving yet: try again in a moment"
            raise ManagerError(msg)
        listener.notify("RELOADING=1")
        try:
            try:
                catalog = await trio.to_thread.run_sync(self._load)
            except Exception as error:  # the units directories could not be read
                logger.error("reload failed, keeping every unit as it was: %s", error)
                return ReloadReport()
            with trio.CancelScope(shield=True):  # half a reload would leak sockets or units
                report = await self._apply(catalog)
            logs.event(
                logger, logging.INFO, "reload",
                "reloaded: " + ", ".join(
                    f"{k} {' '.join(v) or '-'}" for k, v in attrs.asdict(report).items()
                ),
                **{k: list(v) for k, v in attrs.asdict(report).items()},
            )  # fmt: skip
            return report
        finally:
            if not self.draining:
                listener.notify("READY=1")

    # --- applying a catalog -------------------------------------------------------------------

    async def _apply(self, catalog: Catalog, *, strict: bool = False) -> ReloadReport:
        """Make the running socket units those of ``catalog`` (module docstring, Rule 2).

        Raises:
            ListenError: ``strict`` and a socket could not be made (nothing is left bound).
        """
        log_problems(catalog, self.catalog)
        wanted = {
            name: loaded.unit
            for name, loaded in catalog.units.items()
            if isinstance(loaded.unit, SocketUnit)
        }
        unloadable = set(catalog.failed)
        self.errors = {}
        for name in sorted(self.instances - wanted.keys()):
            try:
                wanted[name] = _instance_socket(catalog, name)
            except ManagerError as error:
                logger.error("%s", error)
                unloadable.add(name)
                self.errors[name] = str(error)
        added: list[str] = []
        removed: list[str] = []
        changed: list[str] = []
        kept: list[str] = []
        failed: list[str] = []
        for name in list(self.sockets):
            if name not in wanted:
                (failed if name in unloadable else removed).append(name)
        for name, unit in wanted.items():
            old = self.sockets.get(name)
            if old is None:
                added.append(name)
            elif old.unit == unit:
                kept.append(name)
                old.catalog = catalog  # a changed service applies to new connections
            else:
                changed.append(name)
        # Stop what goes or changes; keep its sockets for reuse by spec.
        spare: dict[ListenSpec, list[socket.socket]] = {}
        stopped: dict[str, SocketState] = {}
        async with trio.open_nursery() as stopping:  # all at once: Accept=no services take time
            for name in (*removed, *changed):
                stopped[name] = self.sockets.pop(name)
                stopping.start_soon(self._stop_state, stopped[name])
        for state in stopped.values():
            for spec, sock in state.listening:
                spare.setdefault(spec, []).append(sock)
        new_paths: set[str] = set()
        for name in (*added, *changed):
            for spec in listener.specs_of(wanted[name]):
                path = _path(spec)
                if path is not None:
                    new_paths.add(path)
        # An old socket on an address whose options changed must go before its successor can
        # bind there (no two listening sockets share an address without ReusePort=).
        closed: set[ListenSpec] = set()
        needed = {spec for name in (*added, *changed) for spec in listener.specs_of(wanted[name])}
        for spec in [s for s in spare if s not in needed]:
            if any(n.listen == spec.listen for n in needed):
                for sock in spare.pop(spec):
                    _close(sock)
                closed.add(spec)
        for name in (*added, *changed):
            old = stopped.get(name)
            try:
                listening = await self._acquire(wanted[name], spare)
            except Exception as error:
                if strict and isinstance(error, ListenError):
                    raise
                if isinstance(error, ListenError):
                    logger.error("%s", error)
                else:
                    logger.exception("%s: making its sockets", name)
                self.errors[name] = str(error)
                (changed if old is not None else added).remove(name)
                failed.append(name)
                if old is not None:  # the previous version goes on: its sockets, or new ones
                    try:
                        listening = await self._acquire(old.unit, spare)
                    except Exception as again:
                        logger.error(
                            "%s: its previous version cannot listen either: %s", name, again
                        )
                        continue
                    await self._start_state(old.unit, old.catalog, listening, old)
                continue
            await self._start_state(wanted[name], catalog, listening, old)
        for spec, socks in spare.items():  # sockets no new unit took
            for sock in socks:
                _close(sock)
                closed.add(spec)
        for state in stopped.values():
            if state.unit.remove_on_stop and state.unit.name.name not in self.sockets:
                for spec, _ in state.listening:
                    if spec in closed and _path(spec) not in new_paths:
                        listener.remove_socket_file(spec)
        if self.catalog is not None:  # services (and templates) are reported too
            before, after = _services(self.catalog), _services(catalog)
            added += sorted(n for n in after if n not in before)
            changed += sorted(n for n in after if n in before and after[n] != before[n])
            kept += sorted(n for n in after if n in before and after[n] == before[n])
            for name in sorted(n for n in before if n not in after):
                (failed if name in catalog.failed else removed).append(name)
        self.catalog = catalog
        return ReloadReport(
            tuple(added), tuple(removed), tuple(changed), tuple(kept), tuple(failed)
        )

    async def _start_state(
        self,
        unit: SocketUnit,
        catalog: Catalog,
        listening: list[tuple[ListenSpec, socket.socket]],
        old: SocketState | None,
    ) -> None:
        """Run a socket unit on ``listening``; what the old version counted carries over (its
        live connections, and its rate limit windows when the limits are the same)."""
        poll = RateLimit.of(unit.poll_limit_interval_sec, unit.poll_limit_burst)
        trigger = RateLimit.of(unit.trigger_limit_interval_sec, unit.trigger_limit_burst)
        admission = Admission(Limits.of(unit))
        if old is not None:
            admission = old.admission
            admission.limits = Limits.of(unit)
            poll = _same_window(old.poll_limit, poll)
            trigger = _same_window(old.trigger_limit, trigger)
        state = SocketState(
            unit=unit,
            catalog=catalog,
            listening=listening,
            admission=admission,
            poll_limit=poll,
            trigger_limit=trigger,
        )
        name = unit.name.name
        self.sockets[name] = state
        for spec, _ in listening:
            logs.event(
                logger, logging.INFO, "listening",
                f"{name}: listening on {listener.describe(spec)}",
                unit=name, address=listener.describe(spec),
            )  # fmt: skip
        assert self._loops is not None
        await self._loops.start(self._run_socket, state)

    async def _acquire(
        self, unit: SocketUnit, spare: dict[ListenSpec, list[socket.socket]]
    ) -> list[tuple[ListenSpec, socket.socket]]:
        """A socket for every spec of ``unit``: a spare one of the same spec, an inherited one,
        or a new one. On failure what was made for it is closed (spares go back)."""
        out: list[tuple[ListenSpec, socket.socket, str]] = []
        try:
            for spec in listener.specs_of(unit):
                if spare.get(spec):
                    out.append((spec, spare[spec].pop(), "spare"))
                    continue
                inherited = next((s for s, _ in self._inherited if listener.matches(s, spec)), None)
                if inherited is not None:
                    self._inherited = [(s, n) for s, n in self._inherited if s is not inherited]
                    out.append((spec, inherited, "inherited"))
                    continue
                sock = await trio.to_thread.run_sync(listener.bind, spec)
                out.append((spec, sock, "new"))
        except BaseException:
            for spec, sock, how in out:
                if how == "spare":
                    spare[spec].append(sock)
                elif how == "inherited":
                    self._inherited.append((sock, None))
                else:
                    _close(sock)
                    if _path(spec) is not None:  # made by this bind: not left behind
                        listener.remove_socket_file(spec)
            raise
        return [(spec, sock) for spec, sock, _ in out]

    async def _stop_state(self, state: SocketState) -> None:
        """Stop a socket unit's loop (its sockets stay open); an Accept=no service it runs is
        stopped first, as systemd stops a service whose socket goes."""
        if state.service is not None:
            state.service.stop.request()
        state.scope.cancel()
        await state.done.wait()

    def _close_unused_inherited(self) -> None:
        for sock, name in self._inherited:
            logger.warning(
                "a socket passed in (fd %d%s) matches no socket unit; closing it",
                sock.fileno(), "" if name is None else f", name {name}",
            )  # fmt: skip
            _close(sock)
        self._inherited = []

    def _close_all(self) -> None:
        for state in self.sockets.values():
            for spec, sock in state.listening:
                _close(sock)
                if state.unit.remove_on_stop:
                    listener.remove_socket_file(spec)
        self.sockets.clear()

    # --- the loops ------------------------------------------------------------------------------

    async def _run_socket(
        self, state: SocketState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with state.scope:
                task_status.started()
                pause = 0.1
                while True:
                    began = trio.current_time()
                    try:
                        if state.unit.accept:
                            async with trio.open_nursery() as nursery:
                                for spec, sock in state.listening:
                                    nursery.start_soon(self._accept_loop, state, spec, sock)
                        else:
                            await self._activation_loop(state)
                    except Exception:  # a bug must cost a pause of this socket, not the server
                        if trio.current_time() - began > 60:
                            pause = 0.1  # a failure long after the last: start over
                        logger.exception("%s: its loop failed; again in %.1f s", state.name, pause)
                        await trio.sleep(pause)
                        pause = min(pause * 2, 30.0)
        finally:
            state.done.set()

    async def _pause_for_limits(self, state: SocketState, limit: RateLimit, what: str) -> None:
        while True:
            pause = limit.check(trio.current_time())
            if pause <= 0:
                return
            logs.event(
                logger, logging.WARNING, "rate_limited",
                f"{state.name}: {what} over its limit, pausing {pause:.3f} s",
                unit=state.name, seconds=round(pause, 6), limit=what,
            )  # fmt: skip
            await trio.sleep(pause)

    async def _accept_loop(self, state: SocketState, spec: ListenSpec, sock: socket.socket) -> None:
        backoff = 0.0
        while True:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as error:
                if error.errno in ACCEPT_CONNECTION_ERRNOS:  # that connection is gone
                    logger.info(
                        "%s: %s: accept: %s", state.name, listener.describe(spec), error.strerror
                    )
                    await trio.lowlevel.checkpoint()
                    continue
                # Out of descriptors or memory (or worse): back off and retry, never give up.
                backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, backoff * 2))
                logger.warning(
                    "%s: %s: accept: %s; retrying in %.2f s",
                    state.name, listener.describe(spec), error.strerror, backoff,
                )  # fmt: skip
                await trio.sleep(backoff)
                continue
            backoff = 0.0
            if self.hooks.accepted is not None:
                self.hooks.accepted(state.name)
            try:
                # systemd accepts one connection per dispatch of the socket's event source and
                # PollLimit counts dispatches, so both limits count accepted connections. Over a
                # limit, the connection waits here and the rest in the backlog.
                await self._pause_for_limits(state, state.poll_limit, "PollLimit")
                await self._pause_for_limits(state, state.trigger_limit, "TriggerLimit")
            finally:
                self._admit(state, spec, conn)  # also when a reload cancels the pause: never lost
            await trio.lowlevel.checkpoint()

    def _admit(self, state: SocketState, spec: ListenSpec, conn: socket.socket) -> None:
        try:
            peer = listener.peer_of(conn)
            source = listener.source_of(peer)
            reject = state.admission.admit(source, peer_ip(peer))
        except Exception:  # never let one connection stop the loop
            logger.exception("%s: admitting a connection", state.name)
            _close(conn)
            return
        if reject is not None:
            _close(conn)
            self._reject(state.name, peer, reject.value)
            return
        with contextlib.suppress(OSError):  # the peer is already gone; the handler will see it
            listener.configure_connection(conn, spec)
        state.accepted += 1
        assert self._invocations is not None
        self._invocations.start_soon(self._connection, state, conn, peer, source, state.accepted)

    def _reject(self, unit: str, peer: Peer | None, reason: str) -> None:
        log_reject(unit, peer, reason)
        if self.hooks.rejected is not None:
            self.hooks.rejected(unit, reason)

    async def _connection(
        self, state: SocketState, conn: socket.socket, peer: Peer, source: Source, number: int
    ) -> None:
        try:
            if self.draining:  # accepted just before the drain: no handler starts any more
                self._reject(state.name, peer, "stopping")
                return
            name = state.unit.activates
            # A plain socket's connection is an instance of its own with a fresh user; a
            # customer's socket (foo@alice.socket) runs the customer's instance and user.
            per_connection = not name.instance
            if per_connection:
                name = name.with_instance(instance_name(number, peer))
            try:
                service = _service_of(state.catalog, name)
            except (ConfigError, ManagerError) as error:
                # Every connection of the socket fails alike (StateDirectory=%I of a connection's
                # instance): the log names the instance, the reject event counts it.
                logger.error("%s: %s: %s", state.name, name.name, error)
                self._reject(state.name, peer, "unit_error")
                return
            outcome = await self._invoke(
                service,
                fds=(conn.fileno(),),
                descriptors=Descriptors(sockets=(0,), socket_names=("connection",)),
                peer=peer,
                per_connection=per_connection,
                connection=True,
                socket_unit=state.name,
                on_spawned=conn.close,  # the handler has it: our copy goes at once
                on_not_spawned=conn.close,  # no handler: the client sees the end at once
                shared=_connection_sharing(state.catalog, service) if per_connection else None,
            )
            if outcome.reason in _REJECT_REASONS:
                self._reject(state.name, peer, outcome.reason or "")
        except Exception:  # a bug must cost one connection, never the server (Rule 1)
            logger.exception("%s: connection from %s", state.name, describe_peer(peer))
        finally:
            _close(conn)
            try:
                state.admission.release(source)
            except Exception:
                logger.exception("%s: releasing the admission of %s", state.name, source)

    async def _invoke(
        self,
        service: ServiceUnit,
        *,
        fds: Sequence[int],
        descriptors: Descriptors,
        peer: Peer | None,
        per_connection: bool,
        socket_unit: str | None,
        on_spawned: Callable[[], None] | None = None,
        stop: StopRequest | None = None,
        connection: bool = False,
        on_not_spawned: Callable[[], None] | None = None,
        shared: SharedDirectories | None = None,
    ) -> Outcome:
        """Run one invocation to its end. ``per_connection``: a fresh user of its own (a plain
        socket's connection), unless ``shared`` names a directory every connection shares;
        ``connection``: it serves one connection (a drain gives it ``TimeoutStopSec=`` to
        finish), as every per-connection invocation does."""
        connection = connection or per_connection
        invocation = new_invocation_id()
        log_write = -1
        if writes_to_log(service):
            # The handler's journal output: a pipe whose lines we log as `output` events.
            try:
                log_read, log_write = os.pipe2(os.O_CLOEXEC)
            except OSError as error:  # out of descriptors: this invocation fails, alone
                outcome = Outcome(
                    invocation,
                    service.name.name,
                    None,
                    failure=f"a pipe for its output: {os.strerror(error.errno or 0)}",
                    stage="output",
                    reason="output",
                )
                log_outcome(outcome, socket_unit, peer)
                if self.runtime.on_finished is not None:
                    self.runtime.on_finished(outcome)
                return outcome
            assert self._invocations is not None
            self._invocations.start_soon(relay_output, log_read, service.name.name, invocation)
            descriptors = attrs.evolve(descriptors, log=len(fds))
            fds = (*fds, log_write)
        live = Live(
            service,
            stop or StopRequest(),
            connection,
            invocation=invocation,
            socket=socket_unit,
            peer=peer,
        )
        if self.draining:
            live.stop.request(kill=connection)
        self.live[invocation] = live
        self._idle = trio.Event() if len(self.live) == 1 else self._idle

        def spawned() -> None:
            nonlocal log_write
            if log_write >= 0:
                os.close(log_write)  # the handler has its copy: EOF when its last one closes
                log_write = -1
            if on_spawned is not None:
                on_spawned()

        try:
            outcome = await run_invocation(
                self.runtime,
                service,
                descriptors=descriptors,
                fds=fds,
                peer=peer,
                per_connection=per_connection,
                invocation=invocation,
                on_spawned=spawned,
                stop_request=live.stop,
                on_identity=functools.partial(_identify, live),
                on_not_spawned=on_not_spawned,
                shared=shared,
            )
        finally:
            if log_write >= 0:
                os.close(log_write)
            del self.live[invocation]
            live.finished.set()
            if not self.live:
                self._idle.set()
        if not connection or outcome.reason not in _REJECT_REASONS:
            log_outcome(outcome, socket_unit, peer)  # a refused connection is a `reject` instead
        return outcome

    async def _activation_loop(self, state: SocketState) -> None:
        """Accept=no: start the service on traffic (or a start request), run it to its end
        with its restarts, then wait again. Cancelled (a reload, a drain), it asks the service to
        stop and returns once it is gone."""
        failures = 0
        while True:
            await trio.lowlevel.checkpoint()  # cancelled (a drain closed the sockets): done
            await self._wait_traffic(state)
            await self._pause_for_limits(state, state.poll_limit, "PollLimit")
            await self._pause_for_limits(state, state.trigger_limit, "TriggerLimit")
            name = state.unit.activates
            try:
                service = _service_of(state.catalog, name)
            except (ConfigError, ManagerError) as error:
                logger.error("%s", error)
                await trio.sleep(min(30.0, 2.0**failures))
                failures += 1
                continue
            # Copies of its own: a drain may close our sockets while the service still starts.
            copies: list[int] = []
            try:
                for _, sock in state.listening:
                    copies.append(os.dup(sock.fileno()))
            except OSError as error:
                for fd in copies:
                    os.close(fd)
                logger.warning("%s: copying its sockets: %s", state.name, error.strerror)
                await trio.sleep(min(30.0, 2.0**failures))
                failures += 1
                continue
            failures = 0
            live_stop = StopRequest()
            state.service = Live(service, live_stop, per_connection=False)
            finished = trio.Event()

            async def run(
                service: ServiceUnit = service,
                stop: StopRequest = live_stop,
                finished: trio.Event = finished,
                fds: list[int] = copies,
            ) -> None:
                with trio.CancelScope(shield=True):  # it ends by request, never by cancellation
                    try:
                        await self._run_with_restarts(
                            service,
                            fds=fds,
                            names=[state.unit.fd_name] * len(fds),
                            socket_unit=state.name,
                            stop=stop,
                        )
                    finally:
                        for fd in fds:
                            os.close(fd)
                        finished.set()

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run)
                    try:
                        await finished.wait()
                    except trio.Cancelled:
                        live_stop.request()  # KillSignal=, then SIGKILL: the shielded run ends
                        raise
            finally:
                state.service.finished.set()
                state.service = None
                state.kick = trio.Event()

    async def _wait_traffic(self, state: SocketState) -> None:
        async with trio.open_nursery() as nursery:

            async def readable(sock: socket.socket) -> None:
                await trio.lowlevel.wait_readable(sock)
                nursery.cancel_scope.cancel()

            async def kicked() -> None:
                await state.kick.wait()
                nursery.cancel_scope.cancel()

            for _, sock in state.listening:
                nursery.start_soon(readable, sock)
            nursery.start_soon(kicked)

    async def _run_with_restarts(
        self,
        service: ServiceUnit,
        *,
        fds: Sequence[int],
        names: Sequence[str],
        socket_unit: str | None,
        stop: StopRequest,
    ) -> None:
        """Run the service, and again as ``Restart=`` says, until it stays down or ``stop``.

        systemd's DefaultStartLimitIntervalSec=10s and DefaultStartLimitBurst=5 apply: past
        them, restarts pause for the rest of the window (systemd gives up for good instead).
        """
        self._service_stops.add(stop)
        starts = RateLimit(START_LIMIT_INTERVAL, START_LIMIT_BURST)
        starts.check(trio.current_time())
        descriptors = Descriptors(sockets=tuple(range(len(fds))), socket_names=tuple(names))
        ignore = bool(service.exec_start) and service.exec_start[0].ignore_failure
        try:
            while not stop.requested:  # a request also ends the pause below
                outcome = await self._invoke(
                    service,
                    fds=fds,
                    descriptors=descriptors,
                    peer=None,
                    per_connection=False,
                    socket_unit=socket_unit,
                    stop=stop,
                )
                restart = should_restart(service.restart, outcome, ignore_failure=ignore)
                # RestartSec=infinity: never (as systemd, whose timer never fires).
                if self.draining or not restart or service.restart_sec is None:
                    return
                delay = max(service.restart_sec / SECOND, starts.check(trio.current_time()))
                logger.info(
                    "%s: restarting in %.3f s (Restart=%s)",
                    service.name.name, delay, service.restart.value,
                )  # fmt: skip
                with trio.move_on_after(delay) as scope, stop.cancels(scope):
                    await trio.sleep_forever()
        except Exception:  # a bug must cost this service, never the server (Rule 1)
            logger.exception("%s: running the service", service.name.name)
        finally:
            self._service_stops.discard(stop)

    # --- starting and stopping units -----------------------------------------------------------

    async def start(self, name: str) -> bool:
        """Start a unit; False when it runs already.

        A template's socket instance (``foo@alice.socket``) starts listening; a socket-activated
        service starts as if traffic came; a plain service or a service instance starts with
        its dynamic user and sandbox.

        Raises:
            ManagerError: no such unit, a template without an instance, a socket unit of the
                units directories (those always listen), or activator is stopping.
        """
        unit = _parse(name)
        name = unit.name
        if self.draining:
            msg = "activator is stopping"
            raise ManagerError(msg)
        if self.catalog is None or self._invocations is None:
            msg = "activator is not serving yet"
            raise ManagerError(msg)
        if unit.suffix == "socket":
            return await self._start_socket(unit)
        serving = self.connection_socket(name)
        if serving is not None:
            msg = f"{name} runs once per connection of {serving}: start or stop {serving} instead"
            raise ManagerError(msg)
        for state in self.sockets.values():
            if not state.unit.accept and state.unit.activates.name == name:
                if state.service is not None:
                    return False
                state.kick.set()
                return True
        if name in self.services:
            return False
        try:
            service = _service_of(self.catalog, unit)
        except ConfigError as error:
            msg = f"{name}: {error}"
            raise ManagerError(msg) from error
        run = ServiceRun(StopRequest())
        self.services[name] = run

        async def runner() -> None:
            try:
                await self._run_with_restarts(
                    service, fds=(), names=(), socket_unit=None, stop=run.stop
                )
            finally:
                del self.services[name]
                run.done.set()

        self._invocations.start_soon(runner)
        return True

    async def stop(self, name: str) -> bool:
        """Stop a unit and wait until it is gone; False when it was not running.

        A socket instance stops listening (its connections finish); a service gets
        ``KillSignal=``, then SIGKILL after ``TimeoutStopSec=``, and so does every connection it
        serves.

        Raises:
            ManagerError: not a unit name, or a socket unit of the units directories.
        """
        unit = _parse(name)
        name = unit.name
        if unit.suffix == "socket":
            return await self._stop_socket(unit)
        stopped = False
        for state in list(self.sockets.values()):
            live = state.service
            if live is not None and live.service.name.name == name:
                live.stop.request()
                await live.finished.wait()
                stopped = True
        run = self.services.get(name)
        if run is not None:
            run.stop.request()
            await run.done.wait()
            stopped = True
        serving = [live for live in self.live.values() if live.service.name.name == name]
        for live in serving:
            live.stop.request()
        for live in serving:
            await live.finished.wait()
        return stopped or bool(serving)

    def connection_socket(self, service: str) -> str | None:
        """The listening socket unit whose every connection runs ``service`` (a customer's
        ``Accept=yes`` socket instance), if any."""
        for name, state in self.sockets.items():
            if state.unit.accept and state.unit.activates.name == service:
                return name
        return None

    async def _start_socket(self, unit: UnitName) -> bool:
        name = unit.name
        if name in self.sockets:
            return False
        if not unit.is_instance:
            msg = f"{name}: only instances of socket templates are started and stopped; the "
            msg += "socket units of the units directories always listen (or are left out with a "
            msg += "problem: see activator check)"
            raise ManagerError(msg)
        async with self._reloading:
            assert self.catalog is not None
            _instance_socket(self.catalog, name)  # raises with the reason
            self.instances.add(name)
            report = await self._apply_again()
        if name not in self.sockets:
            self.instances.discard(name)
            why = self.errors.get(name) or ", ".join(report.failed) or "see the log"
            msg = f"{name}: cannot listen: {why}"
            raise ManagerError(msg)
        return True

    async def _stop_socket(self, unit: UnitName) -> bool:
        name = unit.name
        async with self._reloading:
            if name not in self.instances:
                if name in self.sockets:
                    msg = f"{name}: a socket unit of the units directories: remove its file and "
                    msg += "reload to stop it"
                    raise ManagerError(msg)
                return False
            self.instances.discard(name)
            await self._apply_again()
        return True

    async def _apply_again(self) -> ReloadReport:
        """Apply the current catalog again (instances changed); the caller holds the lock."""
        if self.draining:
            msg = "activator is stopping"
            raise ManagerError(msg)
        assert self.catalog is not None
        with trio.CancelScope(shield=True):  # half an apply would leak sockets or units
            report = await self._apply(self.catalog)
        return report

    def kill(self, target: str) -> list[str]:
        """Kill invocations at once (SIGKILL to their every process): the one whose id is or
        starts with ``target`` (8 hex digits at least), or every one of a unit (its service or
        the socket it serves). Their ids.

        Raises:
            ManagerError: nothing matches.
        """
        if _is_id_prefix(target):
            chosen = [i for i in self.live if i.startswith(target)]
            if len(chosen) > 1:
                msg = f"{target}: names {len(chosen)} invocations; give more of the id"
                raise ManagerError(msg)
        else:
            unit = _parse(target).name
            chosen = [
                i
                for i, live in self.live.items()
                if unit in (live.service.name.name, live.socket)
                or (live.service.name.is_instance and live.service.name.template.name == unit)
            ]
        if not chosen:
            msg = f"{target}: no such invocation running"
            raise ManagerError(msg)
        for invocation in chosen:
            self.live[invocation].stop.request(kill=True)
        return chosen


# ---------------------------------------------------------------------------------------------
# Helpers


def _same_window(old: RateLimit, new: RateLimit) -> RateLimit:
    """``old``, with the window it counts in, when its settings are ``new``'s; else ``new``."""
    return old if (old.interval, old.burst) == (new.interval, new.burst) else new


async def _kill_after(live: Live) -> None:
    timeout = live.service.timeout_stop_sec
    await trio.sleep(math.inf if timeout is None else timeout / SECOND)
    live.stop.request(kill=True)


def _service_of(catalog: Catalog, name: UnitName) -> ServiceUnit:
    loaded = catalog.units.get(name.name)
    if loaded is None:
        if name.instance:
            loaded = catalog.instantiate(name)
        else:
            msg = f"{name.name}: no such unit"
            raise ManagerError(msg)
    if not isinstance(loaded.unit, ServiceUnit):
        msg = f"{name.name}: not a service"
        raise ManagerError(msg)
    return loaded.unit


def _connection_sharing(catalog: Catalog, service: ServiceUnit) -> SharedDirectories:
    """The directories of a connection's instance that every connection shares: compared with
    the template's sample instance, which the catalog built from the same files. Without one
    to compare with, every directory counts as shared (systemd's rule: one user for all)."""
    sample = catalog.templates.get(service.name.template.name)
    if (
        sample is None
        or not isinstance(sample.unit, ServiceUnit)
        or sample.unit.name == service.name
    ):
        return every_directory(service)
    return shared_directories(service, sample.unit)


def _services(catalog: Catalog) -> dict[str, ServiceUnit]:
    """The services and service templates (as built for their sample instance) by name."""
    return {
        name: loaded.unit
        for table in (catalog.units, catalog.templates)
        for name, loaded in table.items()
        if isinstance(loaded.unit, ServiceUnit)
    }


def _unit_name(text: str) -> UnitName:
    """A unit name; without a type it is a service (``foo@example.com`` too, as systemctl)."""
    return parse_unit_name(text if text.endswith((".service", ".socket")) else f"{text}.service")


def _parse(text: str) -> UnitName:
    try:
        return _unit_name(text)
    except ValueError as error:
        msg = f"{text}: {error}"
        raise ManagerError(msg) from error


def _is_id_prefix(text: str) -> bool:
    return len(text) >= 8 and all(c in "0123456789abcdef" for c in text)


def _instance_socket(catalog: Catalog, name: str) -> SocketUnit:
    """The socket unit of a template instance, built from ``catalog``, whose service builds."""
    unit = _parse(name)
    try:
        loaded = catalog.instantiate(unit)
    except ConfigError as error:
        msg = f"{name}: {error}"
        raise ManagerError(msg) from error
    if not isinstance(loaded.unit, SocketUnit):
        msg = f"{name}: not a socket"
        raise ManagerError(msg)
    try:
        _service_of(catalog, loaded.unit.activates)
    except (ConfigError, ManagerError) as error:
        msg = f"{name}: its service: {error}"
        raise ManagerError(msg) from error
    return loaded.unit


def _path(spec: ListenSpec) -> str | None:
    address = spec.listen.address
    return getattr(address, "path", None)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _identify(live: Live, uid: int, user: str) -> None:
    live.uid, live.user = uid, user
