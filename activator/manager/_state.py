"""The manager's records: a socket unit at work, a live invocation, a started service, what a
reload did, and the one error the manager raises."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import attrs
import trio

from activator.admission import Admission, RateLimit
from activator.catalog import Catalog
from activator.invocation import StopRequest
from activator.listener import ListenSpec
from activator.model import ServiceUnit, SocketUnit
from activator.plan import Peer


@attrs.define(eq=False)
class Live:
    """One running invocation, for a drain, ``stop`` and status.

    Attributes:
        service: the unit it runs.
        stop: how it is asked to stop.
        per_connection: an Accept=yes connection's invocation.
        invocation: its id ("" until it is registered).
        socket: the socket unit it serves, if any.
        peer: the connection's peer, if any.
        started: wall-clock seconds when it began.
        uid, user: its identity once known (None before, or without a dynamic user).
    """

    service: ServiceUnit
    stop: StopRequest
    per_connection: bool
    finished: trio.Event = attrs.field(factory=trio.Event)
    invocation: str = ""
    socket: str | None = None
    peer: Peer | None = None
    started: float = attrs.field(factory=time.time)
    uid: int | None = None
    user: str | None = None


@attrs.define
class Hooks:
    """What the manager reports as it goes, for the metrics; each callback is optional.

    Attributes:
        accepted: a connection was accepted on a socket unit (its name).
        rejected: a connection of a socket unit (its name) was refused, with a bounded reason.
    """

    accepted: Callable[[str], None] | None = None
    rejected: Callable[[str, str], None] | None = None


@attrs.define(eq=False)
class SocketState:
    """One socket unit at work: its sockets, limits and loop."""

    unit: SocketUnit
    catalog: Catalog
    listening: list[tuple[ListenSpec, socket.socket]]
    admission: Admission
    poll_limit: RateLimit
    trigger_limit: RateLimit
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    kick: trio.Event = attrs.field(factory=trio.Event)
    accepted: int = 0
    service: Live | None = None  # Accept=no: the running service

    @property
    def name(self) -> str:
        return self.unit.name.name


@attrs.define(eq=False)
class ServiceRun:
    """A plain service started by :meth:`Manager.start`."""

    stop: StopRequest
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen
class ReloadReport:
    """What a reload did, by socket unit name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class ManagerError(Exception):
    """A request the manager cannot carry out (an unknown unit, a service already running)."""
