"""What the control socket's commands do: each answers from the live manager and pool.

Rule 1: a command either does all it says or raises :class:`~activator.control.ControlError`
with a one-line reason naming what is at fault; it never leaves an instance enabled on disk but
not running when ``--now`` failed (the record is taken back).

Rule 2: ``enable`` reloads the units first, as ``systemctl enable`` reloads the manager: a
drop-in written for the new customer (``foo@alice.socket.d/port.conf``) is seen. ``disable``,
``start``, ``stop`` and ``restart`` act on the units as last loaded. ``enable`` without
``--now`` only records the instance (it runs from the next start), as systemctl's does, and so
``disable`` without ``--now`` leaves a running instance running.

Rule 3: the result shapes are the control protocol's (documented in :mod:`activator.ctl`): plain
JSON values, ages in seconds, times as UNIX seconds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from activator import listener
from activator.control import ControlError
from activator.instances import EnabledUnits, InstanceError, build_instance, resolve
from activator.leases import LeaseService
from activator.manager import Live, Manager, ManagerError, describe_peer
from activator.model import ServiceUnit
from activator.units import UnitName

Row = dict[str, Any]


@attrs.define(eq=False)
class Commands:
    """The dispatcher of the control socket.

    Attributes:
        manager: the running manager.
        leases: the pool.
        store: where enabled instances are recorded.
        enabled: the enabled instance names (kept in step with ``store``).
    """

    manager: Manager
    leases: LeaseService
    store: EnabledUnits
    enabled: set[str] = attrs.field(factory=set)

    async def dispatch(self, command: str, args: Mapping[str, object]) -> object:
        """Answer one request.

        Raises:
            ControlError: an unknown command, bad arguments, or a request that failed.
        """
        handlers = {
            "status": self.status,
            "list-connections": self.list_connections,
            "list-users": self.list_users,
            "kill": self.kill,
            "reload": self.reload,
            "enable": self.enable,
            "disable": self.disable,
            "start": self.start,
            "stop": self.stop,
            "restart": self.restart,
        }
        handler = handlers.get(command)
        if handler is None:
            msg = f"unknown command {command!r} (known: {', '.join(handlers)})"
            raise ControlError(msg)
        try:
            return await handler(args)
        except (ManagerError, InstanceError, OSError) as error:
            raise ControlError(_one_line(error)) from error

    # --- reading ------------------------------------------------------------------------------

    async def status(self, args: Mapping[str, object]) -> object:
        wanted = _optional_text(args, "unit")
        units = [row for row in self._unit_rows() if wanted is None or _matches(row, wanted)]
        if wanted is not None and not units:
            msg = f"{wanted}: no such unit loaded"
            raise ControlError(msg)
        names = {row["unit"] for row in units}
        connections = [
            row
            for row in await self.list_connections(args)
            if wanted is None or row["unit"] in names or row["socket"] in names
        ]
        pool = self.leases.pool
        size = self.leases.last - self.leases.first + 1
        return {
            "pool": {
                "first": self.leases.first,
                "last": self.leases.last,
                "size": size,
                "leased": len(pool.leased),
                "free": pool.free_count,
                "waiting": self.leases.waiting,
            },
            "units": units,
            "invocations": connections,
        }

    async def list_connections(self, args: Mapping[str, object]) -> list[Row]:
        await trio.lowlevel.checkpoint()
        now = time.time()
        return [_live_row(invocation, live, now) for invocation, live in self.manager.live.items()]

    async def list_users(self, args: Mapping[str, object]) -> list[Row]:
        await trio.lowlevel.checkpoint()
        now = time.time()
        rows = []
        holders: dict[int, list[str]] = {}
        for invocation, live in self.manager.live.items():
            if live.uid is not None:
                holders.setdefault(live.uid, []).append(invocation)
        for lease in sorted(self.leases.pool.leased.values(), key=lambda lease: lease.uid):
            # A shared lease: its live holders (the one that made it may be gone).
            invocations = holders.get(lease.uid) or [lease.invocation]
            first = self.manager.live.get(invocations[0])
            rows.append({
                "uid": lease.uid,
                "user": lease.user,
                "unit": lease.unit,
                "invocation": invocations[0],
                "invocations": invocations,
                "peer": None if first is None else describe_peer(first.peer),
                "started": lease.started,
                "seconds": max(0.0, now - lease.started),
                "holders": self.leases.holders(lease.uid),
            })  # fmt: skip
        return rows

    def _unit_rows(self) -> list[Row]:
        manager = self.manager
        rows: list[Row] = []
        active: dict[str, int] = {}
        for live in manager.live.values():
            for key in {live.service.name.name, live.socket}:
                if key is not None:
                    active[key] = active.get(key, 0) + 1
        for name, state in sorted(manager.sockets.items()):
            running = state.service is not None
            rows.append({
                "unit": name,
                "kind": "socket",
                "state": "running" if running else "listening",
                "enabled": (name in self.enabled) if state.unit.name.is_instance else None,
                "listen": [listener.describe(spec) for spec, _ in state.listening],
                "activates": state.unit.activates.name,
                "accepted": state.accepted,
                "active": active.get(name, 0),
            })  # fmt: skip
        listed = set(manager.sockets)
        services: dict[str, str] = {}
        if manager.catalog is not None:
            for name, loaded in manager.catalog.units.items():
                if isinstance(loaded.unit, ServiceUnit):
                    services[name] = "inactive"
        for live in manager.live.values():
            if live.socket is None or not live.per_connection:
                services[live.service.name.name] = "running"
        for name in manager.services:
            services[name] = "running"
        for name in self.enabled - listed:
            if name.endswith(".socket"):
                state_text = "failed" if name in manager.errors else "inactive"
                rows.append({
                    "unit": name, "kind": "socket", "state": state_text, "enabled": True,
                    "listen": [], "activates": None, "accepted": 0, "active": 0,
                })  # fmt: skip
            else:
                services.setdefault(name, "inactive")
        for name, state_text in sorted(services.items()):
            is_instance = "@" in name
            rows.append({
                "unit": name,
                "kind": "service",
                "state": state_text,
                "enabled": (name in self.enabled) if is_instance else None,
                "listen": [],
                "activates": None,
                "accepted": 0,
                "active": active.get(name, 0),
            })  # fmt: skip
        return sorted(rows, key=lambda row: (row["unit"], row["kind"]))

    # --- acting -------------------------------------------------------------------------------

    async def kill(self, args: Mapping[str, object]) -> object:
        return {"killed": self.manager.kill(_text(args, "target"))}

    async def reload(self, args: Mapping[str, object]) -> object:
        report = await self.manager.reload()
        return {key: list(names) for key, names in attrs.asdict(report).items()}

    async def enable(self, args: Mapping[str, object]) -> object:
        now = _flag(args, "now")
        self._resolve(_text(args, "unit"))  # a name that can never be enabled: no reload
        await self.manager.reload()
        name = self._resolve(_text(args, "unit"))
        self._check_loads(name)
        added = await trio.to_thread.run_sync(self.store.add, name)
        self.enabled.add(name.name)
        started = []
        if now:
            try:
                if await self.manager.start(name.name):
                    started.append(name.name)
            except ManagerError:
                if added:  # Rule 1: not enabled on disk when it cannot run
                    await trio.to_thread.run_sync(self.store.remove, name)
                    self.enabled.discard(name.name)
                raise
        return {"enabled": [name.name] if added else [], "started": started}

    async def disable(self, args: Mapping[str, object]) -> object:
        now = _flag(args, "now")
        name = self._resolve(_text(args, "unit"))
        removed = await trio.to_thread.run_sync(self.store.remove, name)
        self.enabled.discard(name.name)
        stopped = []
        if now and await self.manager.stop(name.name):
            stopped.append(name.name)
        return {"disabled": [name.name] if removed else [], "stopped": stopped}

    async def start(self, args: Mapping[str, object]) -> object:
        name = self._name(_text(args, "unit"))
        return {"started": [name] if await self.manager.start(name) else []}

    async def stop(self, args: Mapping[str, object]) -> object:
        name = self._name(_text(args, "unit"))
        return {"stopped": [name] if await self.manager.stop(name) else []}

    async def restart(self, args: Mapping[str, object]) -> object:
        name = self._name(_text(args, "unit"))
        serving = self.manager.connection_socket(name)
        if serving is not None:  # refused before any of its connections is stopped
            msg = f"{name} runs once per connection of {serving}: restart {serving} instead"
            raise ControlError(msg)
        await self.manager.stop(name)
        await self.manager.start(name)
        return {"restarted": [name]}

    # --- names --------------------------------------------------------------------------------

    def _resolve(self, text: str) -> UnitName:
        return resolve(text, self.manager.catalog, known=self.enabled)

    def _name(self, text: str) -> str:
        """A unit name for start/stop/restart: an instance resolves as for enable, any other
        name is taken as written (``.service`` when it has no type)."""
        if "@" in text and not text.endswith("@"):
            return self._resolve(text).name
        return text if text.endswith((".service", ".socket")) else f"{text}.service"

    def _check_loads(self, name: UnitName) -> None:
        """Refuse to enable what cannot run: a template that is missing or broken, or an
        instance (of the socket, or of the service it runs) that does not build."""
        catalog = self.manager.catalog
        if catalog is None:
            msg = "activator is not serving yet"
            raise ControlError(msg)
        try:
            build_instance(name, catalog)
        except Exception as error:
            msg = f"{name.name}: {_one_line(error)}"
            raise ControlError(msg) from error


def _live_row(invocation: str, live: Live, now: float) -> Row:
    return {
        "invocation": invocation,
        "unit": live.service.name.name,
        "socket": live.socket,
        "peer": describe_peer(live.peer),
        "uid": live.uid,
        "user": live.user,
        "started": live.started,
        "seconds": max(0.0, now - live.started),
    }


def _matches(row: Row, wanted: str) -> bool:
    """A unit row matches its name, its name without type, or its template's name."""
    name = str(row["unit"])
    stem, _, _ = name.rpartition(".")
    prefix, at, _ = name.partition("@")
    template = f"{prefix}@.{name.rpartition('.')[2]}" if at else None
    return wanted in (name, stem, template) or (at != "" and wanted in (f"{prefix}@", prefix))


def _text(args: Mapping[str, object], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        msg = f"argument {key!r} must be a non-empty string"
        raise ControlError(msg)
    return value


def _optional_text(args: Mapping[str, object], key: str) -> str | None:
    return None if args.get(key) is None else _text(args, key)


def _flag(args: Mapping[str, object], key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        msg = f"argument {key!r} must be true or false"
        raise ControlError(msg)
    return value


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
