"""Admission of a new connection to a socket unit: address filters, connection limits, rate.

Rule 1: pure. No I/O, no clock and no trio: the time is the ``now`` argument of
:meth:`RateLimit.check`, and the peer comes in as a :data:`Source` key and an address that the
listener read from the accepted socket.

Rule 2: systemd's meanings, with two named differences in :class:`RateLimit`, both made so that a
socket never stops accepting for good. IP filters follow ``IPAddressAllow=`` of
systemd.resource-control(5): an address matching an allow entry is let in, else one matching a
deny entry is refused, else it is let in. The limits are ``MaxConnections=`` and
``MaxConnectionsPerSource=`` of systemd.socket(5): a source is the peer's IP address (an
IPv4-mapped IPv6 peer counts as its IPv4 address, as ``socket_acquire_peer()`` does) or, for a
Unix socket, the peer's UID.

Rule 3: the counts are exact. Every admission (:meth:`Admission.admit` returning None) is matched
by exactly one :meth:`Admission.release`; :attr:`Admission.active` is always the sum of the
per-source counts, no count is ever negative, and a source whose count falls to zero leaves the
table, so memory is bounded by the live connections, not by every peer ever seen.

Rule 4: a limit is never exceeded by an admission: a connection is admitted only while
``active < max_connections`` and its source's count is below ``max_connections_per_source``.
Limits replaced on reload apply to the next connection; connections already admitted are kept,
so after a lowered limit ``active`` may stay above it until enough of them end.

Theory of operation. The listener accepts, reads the peer, and asks :meth:`Admission.admit`. A
refusal is a :class:`Reject`, whose value is the reason label of the metric and the log line;
the caller closes the connection at once. The listener asks :meth:`RateLimit.check` before each
``accept()``: 0.0 lets it accept, anything else is how long it stops accepting on that socket
(the backlog holds the connections meanwhile) before asking again.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Sequence

import attrs

from activator.model import SocketUnit
from activator.values import IPNetwork

#: Who a connection counts against for ``MaxConnectionsPerSource=``: the peer's IP address as
#: canonical text (an IPv4-mapped IPv6 address written as the IPv4 address), or the peer's UID
#: for a Unix socket. The caller builds it; this module only compares keys.
Source = str | int

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_USEC_PER_SEC = 1_000_000


class Reject(enum.Enum):
    """Why a connection was refused; the value is the label of the metric and the log line."""

    MAX_CONNECTIONS = "max_connections"
    PER_SOURCE = "max_connections_per_source"
    IP_DENIED = "ip_denied"


# --- Address filters ----------------------------------------------------------------------------


def canonical_address(address: IPAddress) -> IPAddress:
    """The address a filter or a per-source count sees: an IPv4-mapped IPv6 address
    (``::ffff:1.2.3.4``, what a dual-stack socket reports for an IPv4 peer) as its IPv4 address;
    any other address unchanged."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ip_allowed(address: IPAddress, allow: Sequence[IPNetwork], deny: Sequence[IPNetwork]) -> bool:
    """Whether ``IPAddressAllow=``/``IPAddressDeny=`` let a peer in, with systemd's precedence.

    An address matching an ``allow`` entry is allowed; else one matching a ``deny`` entry is
    denied; else it is allowed (so empty lists allow everything, and ``IPAddressDeny=any`` with
    ``IPAddressAllow=localhost`` lets only loopback in). The address is compared as
    :func:`canonical_address` gives it, and only with entries of its own IP version: systemd's
    filter sees an IPv4 packet from a mapped peer, so an entry written as ``::ffff:a.b.c.d``
    matches no peer, there as here.

    Args:
        address: the peer's address.
        allow: the ``IPAddressAllow=`` prefixes, keywords already expanded.
        deny: the ``IPAddressDeny=`` prefixes, keywords already expanded.
    """
    address = canonical_address(address)
    # `in` is False across IP versions, so an IPv4 peer never matches an IPv6 entry.
    if any(address in network for network in allow):
        return True
    return not any(address in network for network in deny)


# --- Connection limits --------------------------------------------------------------------------


def _check_max_connections(_instance: object, _attr: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value < 1:
        msg = f"max_connections must be an integer >= 1 (got {value!r})"
        raise ValueError(msg)


def _check_per_source(_instance: object, _attr: attrs.Attribute[int | None], value: object) -> None:
    if value is not None and (type(value) is not int or value < 1):
        msg = f"max_connections_per_source must be None or an integer >= 1 (got {value!r})"
        raise ValueError(msg)


@attrs.frozen
class Limits:
    """The admission settings of one socket unit.

    Attributes:
        max_connections: ``MaxConnections=``: live connections of the unit, at most.
        max_connections_per_source: ``MaxConnectionsPerSource=``: live connections of one
            source, at most; None for no limit.
        allow: ``IPAddressAllow=`` prefixes.
        deny: ``IPAddressDeny=`` prefixes.
    """

    max_connections: int = attrs.field(default=64, validator=_check_max_connections)
    max_connections_per_source: int | None = attrs.field(default=None, validator=_check_per_source)
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, socket: SocketUnit) -> Limits:
        """The limits a socket unit configures."""
        return cls(
            max_connections=socket.max_connections,
            max_connections_per_source=socket.max_connections_per_source,
            allow=socket.ip_address_allow,
            deny=socket.ip_address_deny,
        )


@attrs.define(eq=False)
class Admission:
    """The live connection counts of one socket unit, and the decision for a new one.

    Attributes:
        limits: the unit's limits; replaced on reload, while the counts are kept.
    """

    limits: Limits
    _counts: dict[Source, int] = attrs.field(factory=dict, init=False)
    _active: int = attrs.field(default=0, init=False)

    def admit(self, source: Source, address: IPAddress | None) -> Reject | None:
        """Decide on a new connection, and count it when it is admitted.

        The checks run in this order, the first that fails gives the reason: the address
        filters (only when ``address`` is not None: Unix sockets have none), then
        ``MaxConnections=``, then ``MaxConnectionsPerSource=``.

        Args:
            source: who the connection counts against (:data:`Source`).
            address: the peer's IP address, or None for a Unix socket.

        Returns:
            None when the connection is admitted: it is counted, and the caller must call
            :meth:`release` with the same source exactly once when it ends. Otherwise the
            reason it is refused; nothing is counted.
        """
        limits = self.limits
        if address is not None and not ip_allowed(address, limits.allow, limits.deny):
            return Reject.IP_DENIED
        if self._active >= limits.max_connections:
            return Reject.MAX_CONNECTIONS
        count = self._counts.get(source, 0)
        per_source = limits.max_connections_per_source
        if per_source is not None and count >= per_source:
            return Reject.PER_SOURCE
        self._counts[source] = count + 1
        self._active += 1
        return None

    def release(self, source: Source) -> None:
        """Count the end of a connection :meth:`admit` admitted.

        Raises:
            ValueError: ``source`` has no live connection (a release without an admission, or
                a second release of one).
        """
        count = self._counts.get(source, 0)
        if count <= 0:
            msg = f"release of a connection from {source!r}: that source has no live connection"
            raise ValueError(msg)
        if count == 1:
            del self._counts[source]  # Rule 3: no zero entries, memory stays bounded
        else:
            self._counts[source] = count - 1
        self._active -= 1

    @property
    def active(self) -> int:
        """The number of live connections."""
        return self._active

    def count(self, source: Source) -> int:
        """The number of live connections of ``source`` (0 when it has none)."""
        return self._counts.get(source, 0)

    def by_source(self) -> dict[Source, int]:
        """A copy of the table: every source with a live connection, and how many it has."""
        return dict(self._counts)


# --- Rate limit ---------------------------------------------------------------------------------


def _check_interval(
    _instance: object, _attribute: attrs.Attribute[float | None], value: object
) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        msg = f"interval must be None or a finite number of seconds >= 0 (got {value!r})"
        raise ValueError(msg)


def _check_burst(_instance: object, _attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value < 0:
        msg = f"burst must be an integer >= 0 (got {value!r})"
        raise ValueError(msg)


@attrs.define(eq=False)
class RateLimit:
    """systemd's ratelimit (``ratelimit_below()`` in src/basic/ratelimit.c): at most ``burst``
    events per window of ``interval`` seconds; the window starts at the first event after the
    previous one ended.

    It is the rule behind ``PollLimitIntervalSec=``/``PollLimitBurst=`` (and ``TriggerLimit*``):
    when it refuses, the caller pauses accepting on the socket until the window ends, as systemd's
    event loop does for a rate-limited source. Two differences, both so that the pause always ends:

    - A window is half-open, ``[start, start + interval)``: an event exactly at its end opens the
      next one (systemd keeps that instant in the old window), so a caller that waits the time
      :meth:`check` returned is let in at once.
    - An infinite interval (``PollLimitIntervalSec=infinity``, None from the model) disables the
      limit; in systemd its first window never ends, so the socket would stop for good after
      ``burst`` events.

    Attributes:
        interval: the window, in seconds; None or 0 disables the limit.
        burst: events allowed per window; 0 disables the limit too (as in systemd).
    """

    interval: float | None = attrs.field(validator=_check_interval)
    burst: int = attrs.field(validator=_check_burst)
    _start: float | None = attrs.field(default=None, init=False)  # of the current window
    _allowed: int = attrs.field(default=0, init=False)  # events allowed in the current window

    @classmethod
    def of(cls, interval_usec: int | None, burst: int) -> RateLimit:
        """The limit of a unit's fields: ``interval_usec`` in microseconds as the model holds
        time spans (None for ``infinity``), and the burst."""
        interval = None if interval_usec is None else interval_usec / _USEC_PER_SEC
        return cls(interval, burst)

    @property
    def enabled(self) -> bool:
        """Whether the limit can refuse anything (systemd's ``ratelimit_configured()``)."""
        return bool(self.interval) and self.burst > 0

    def check(self, now: float) -> float:
        """Ask whether one more event may happen at ``now``, and count it if so.

        Args:
            now: the current time in seconds, from a monotonic clock.

        Returns:
            0.0 when the event is allowed (it is counted). Otherwise the seconds until the current
            window ends, always > 0; the refused event is not counted, and an event at
            ``now + returned`` or later is allowed: the limit never refuses for good.
        """
        interval = self.interval
        if not interval or self.burst <= 0:
            return 0.0
        if self._start is None or now >= self._start + interval:
            self._start, self._allowed = now, 1
            return 0.0
        if self._allowed < self.burst:
            self._allowed += 1
            return 0.0
        end = self._start + interval
        wait = end - now
        # end - now is rounded, and now + wait may then land one step short of end: the caller
        # would wake just before the window ends and be refused again. Round up instead (at most
        # a few steps; bounded all the same).
        for _ in range(4):
            if now + wait >= end:
                break
            wait = math.nextafter(wait, math.inf)
        return wait
