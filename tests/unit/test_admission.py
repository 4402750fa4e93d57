"""Admission: systemd's allow/deny precedence, exact connection counts and limits, rate limits."""

from __future__ import annotations

import ipaddress
import math

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from activator import values as v
from activator.admission import (
    Admission,
    IPAddress,
    Limits,
    RateLimit,
    Reject,
    Source,
    canonical_address,
    ip_allowed,
)
from activator.model import SECOND, SocketUnit
from activator.values import IPNetwork
from tests.strategies import ip_networks, sockets

ipv4_addresses = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6_addresses = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
ip_addresses: st.SearchStrategy[IPAddress] = st.one_of(ipv4_addresses, ipv6_addresses)
network_lists = st.lists(ip_networks, max_size=4, unique=True)


def mapped(address: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """``::ffff:a.b.c.d``: what a dual-stack socket reports for an IPv4 peer."""
    return ipaddress.IPv6Address(f"::ffff:{address}")


@st.composite
def inside(draw: st.DrawFn, network: IPNetwork) -> IPAddress:
    """An address of ``network``."""
    return network[draw(st.integers(0, network.num_addresses - 1))]


# ---------------------------------------------------------------------------------------------
# IP filters


@pytest.mark.parametrize(
    ("allow", "deny", "address", "allowed"),
    [
        # Empty lists allow everything.
        ("", "", "10.1.2.3", True),
        ("", "", "::1", True),
        # Only a deny entry that matches refuses.
        ("", "10.0.0.0/8", "10.255.0.1", False),
        ("", "10.0.0.0/8", "11.0.0.1", True),
        ("", "0.0.0.0/0", "::1", True),  # an IPv4 entry never matches an IPv6 peer
        # An allow list alone restricts nothing: what it misses is allowed, not denied.
        ("10.0.0.0/8", "", "11.0.0.1", True),
        # Allow beats deny, whichever is more specific.
        ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", True),
        ("10.1.2.3", "10.0.0.0/8", "10.1.2.3", True),
        ("10.1.2.3", "10.0.0.0/8", "10.1.2.4", False),
        # The lock-down systemd documents: deny any, allow localhost.
        ("localhost", "any", "127.0.0.1", True),
        ("localhost", "any", "127.200.3.4", True),
        ("localhost", "any", "::1", True),
        ("localhost", "any", "::ffff:127.0.0.1", True),  # a dual-stack socket's loopback peer
        ("localhost", "any", "10.0.0.1", False),
        ("localhost", "any", "::ffff:10.0.0.1", False),
        ("localhost", "any", "::2", False),
        ("localhost", "any", "fe80::1", False),
        ("link-local", "any", "fe80::1", True),
        ("link-local", "any", "169.254.7.7", True),
        # A mapped peer is its IPv4 address: IPv4 entries decide, IPv6 entries never match it.
        ("", "10.0.0.0/8", "::ffff:10.0.0.1", False),
        ("", "::/0", "::ffff:10.0.0.1", True),
        ("::ffff:127.0.0.1", "any", "::ffff:127.0.0.1", False),
    ],
)
def test_precedence_table(allow: str, deny: str, address: str, allowed: bool) -> None:
    allow_list = v.parse_ip_prefixes(allow) if allow else ()
    deny_list = v.parse_ip_prefixes(deny) if deny else ()
    assert ip_allowed(ipaddress.ip_address(address), allow_list, deny_list) is allowed


@given(st.data(), network_lists.filter(bool), network_lists)
def test_an_address_in_an_allow_entry_is_allowed_whatever_the_deny_list(
    data: st.DataObject, allow: list[IPNetwork], deny: list[IPNetwork]
) -> None:
    address = data.draw(inside(data.draw(st.sampled_from(allow))))
    assert ip_allowed(address, allow, deny)
    assert ip_allowed(address, allow, [*deny, *allow])
    if isinstance(address, ipaddress.IPv4Address):
        assert ip_allowed(mapped(address), allow, deny)


@given(st.data(), network_lists, network_lists.filter(bool))
def test_an_address_in_a_deny_entry_and_no_allow_entry_is_denied(
    data: st.DataObject, allow: list[IPNetwork], deny: list[IPNetwork]
) -> None:
    address = data.draw(inside(data.draw(st.sampled_from(deny))))
    allow = [network for network in allow if address not in network]
    assert not ip_allowed(address, allow, deny)
    if isinstance(address, ipaddress.IPv4Address):
        assert not ip_allowed(mapped(address), allow, deny)


@given(ip_addresses, network_lists, network_lists)
def test_an_address_in_no_entry_is_allowed(
    address: IPAddress, allow: list[IPNetwork], deny: list[IPNetwork]
) -> None:
    deny = [network for network in deny if canonical_address(address) not in network]
    assert ip_allowed(address, allow, deny)
    assert ip_allowed(address, [], [])


@given(ipv4_addresses, network_lists, network_lists)
def test_a_mapped_address_is_judged_as_its_ipv4_address(
    address: ipaddress.IPv4Address, allow: list[IPNetwork], deny: list[IPNetwork]
) -> None:
    assert ip_allowed(mapped(address), allow, deny) == ip_allowed(address, allow, deny)


@given(ipv4_addresses)
def test_canonical_address_unmaps_ipv4(address: ipaddress.IPv4Address) -> None:
    assert canonical_address(mapped(address)) == address
    assert canonical_address(address) == address


@given(ipv6_addresses.filter(lambda a: a.ipv4_mapped is None))
def test_canonical_address_keeps_other_ipv6_addresses(address: ipaddress.IPv6Address) -> None:
    assert canonical_address(address) == address


# ---------------------------------------------------------------------------------------------
# Limits


@given(sockets())
def test_limits_of_a_socket_unit(socket: SocketUnit) -> None:
    limits = Limits.of(socket)
    assert limits.max_connections == socket.max_connections
    assert limits.max_connections_per_source == socket.max_connections_per_source
    assert limits.allow == socket.ip_address_allow
    assert limits.deny == socket.ip_address_deny


def test_limits_defaults_are_systemds() -> None:
    assert Limits() == Limits(64, None, (), ())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_connections": 0}, "max_connections must be an integer >= 1 (got 0)"),
        ({"max_connections": None}, "max_connections must be an integer >= 1 (got None)"),
        (
            {"max_connections_per_source": 0},
            "max_connections_per_source must be None or an integer >= 1 (got 0)",
        ),
        (
            {"max_connections_per_source": True},
            "max_connections_per_source must be None or an integer >= 1 (got True)",
        ),
    ],
)
def test_bad_limits_are_refused_with_the_field_named(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Limits(**fields)  # type: ignore[arg-type]
    assert str(caught.value) == message


# ---------------------------------------------------------------------------------------------
# Admission: examples


LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def test_connections_past_max_connections_are_refused_until_one_ends() -> None:
    admission = Admission(Limits(max_connections=2))
    assert admission.admit("127.0.0.1", LOOPBACK) is None
    assert admission.admit("127.0.0.2", LOOPBACK) is None
    assert admission.admit("127.0.0.3", LOOPBACK) is Reject.MAX_CONNECTIONS
    assert admission.active == 2  # the refused one is not counted
    admission.release("127.0.0.1")
    assert admission.admit("127.0.0.3", LOOPBACK) is None
    assert admission.by_source() == {"127.0.0.2": 1, "127.0.0.3": 1}


def test_a_source_past_its_limit_is_refused_while_others_get_in() -> None:
    admission = Admission(Limits(max_connections=10, max_connections_per_source=2))
    assert [admission.admit(1000, None) for _ in range(3)] == [None, None, Reject.PER_SOURCE]
    assert admission.admit(1001, None) is None
    assert (admission.count(1000), admission.count(1001), admission.active) == (2, 1, 3)


def test_checks_run_in_order_denied_then_full_then_per_source() -> None:
    limits = Limits(
        max_connections=1, max_connections_per_source=1, deny=v.parse_ip_prefixes("any")
    )
    admission = Admission(limits)
    assert admission.admit("127.0.0.1", LOOPBACK) is Reject.IP_DENIED
    assert admission.admit(0, None) is None  # Unix peers have no address to filter
    assert admission.admit(0, None) is Reject.MAX_CONNECTIONS  # before PER_SOURCE
    assert admission.admit("127.0.0.1", LOOPBACK) is Reject.IP_DENIED  # before MAX_CONNECTIONS
    admission.limits = Limits(max_connections=2, max_connections_per_source=1)
    assert admission.admit(0, None) is Reject.PER_SOURCE


def test_a_reload_keeps_the_counts_and_applies_to_new_connections() -> None:
    admission = Admission(Limits(max_connections=3))
    for source in ("a", "b", "c"):
        assert admission.admit(source, None) is None
    admission.limits = Limits(max_connections=1)
    assert admission.active == 3  # live connections are kept
    assert admission.admit("d", None) is Reject.MAX_CONNECTIONS
    admission.release("a")
    admission.release("b")
    assert admission.admit("d", None) is Reject.MAX_CONNECTIONS  # still at the new limit
    admission.release("c")
    assert admission.admit("d", None) is None


def test_the_reject_values_are_the_metric_labels() -> None:
    assert {r.value for r in Reject} == {
        "max_connections",
        "max_connections_per_source",
        "ip_denied",
    }


def test_a_release_without_a_live_connection_is_refused_with_the_source_named() -> None:
    admission = Admission(Limits())
    assert admission.admit("::1", ipaddress.IPv6Address("::1")) is None
    admission.release("::1")
    with pytest.raises(ValueError) as caught:
        admission.release("::1")
    assert "'::1'" in str(caught.value)
    assert "no live connection" in str(caught.value)
    with pytest.raises(ValueError, match="1000"):
        admission.release(1000)
    assert (admission.active, admission.by_source()) == (0, {})


# ---------------------------------------------------------------------------------------------
# Admission: any interleaving of connections, ends and reloads, against a plain model

SOURCES: list[Source] = ["10.0.0.1", "10.0.0.2", "::1", 0, 1000]
#: The address each IP source connects from; None for Unix peers (UIDs).
ADDRESS: dict[Source, IPAddress | None] = {
    "10.0.0.1": ipaddress.IPv4Address("10.0.0.1"),
    "10.0.0.2": ipaddress.IPv4Address("10.0.0.2"),
    "::1": ipaddress.IPv6Address("::1"),
    0: None,
    1000: None,
}
FILTERS = [("", ""), ("", "10.0.0.2"), ("localhost", "any"), ("10.0.0.0/8", "any")]

limits_strategy = st.builds(
    lambda m, p, f: Limits(
        m,
        p,
        v.parse_ip_prefixes(f[0]) if f[0] else (),
        v.parse_ip_prefixes(f[1]) if f[1] else (),
    ),
    st.integers(1, 5),
    st.one_of(st.none(), st.integers(1, 3)),
    st.sampled_from(FILTERS),
)


class AdmissionMachine(RuleBasedStateMachine):
    """Admission against a dict of counts; the limits change at any moment, as on reload."""

    def __init__(self) -> None:
        super().__init__()
        self.admission = Admission(Limits(max_connections=3, max_connections_per_source=2))
        self.model: dict[Source, int] = {}

    def expected(self, source: Source) -> Reject | None:
        limits = self.admission.limits
        address = ADDRESS[source]
        if address is not None and not ip_allowed(address, limits.allow, limits.deny):
            return Reject.IP_DENIED
        if sum(self.model.values()) >= limits.max_connections:
            return Reject.MAX_CONNECTIONS
        per_source = limits.max_connections_per_source
        if per_source is not None and self.model.get(source, 0) >= per_source:
            return Reject.PER_SOURCE
        return None

    @rule(source=st.sampled_from(SOURCES))
    def connect(self, source: Source) -> None:
        expected = self.expected(source)
        assert self.admission.admit(source, ADDRESS[source]) is expected
        if expected is None:
            self.model[source] = self.model.get(source, 0) + 1
            # An admission never takes a count past the limits in force when it is made.
            limits = self.admission.limits
            assert self.admission.active <= limits.max_connections
            per_source = limits.max_connections_per_source
            assert per_source is None or self.admission.count(source) <= per_source

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        source = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        self.admission.release(source)
        self.model[source] -= 1
        if not self.model[source]:
            del self.model[source]

    @rule(source=st.sampled_from(SOURCES))
    def release_too_often(self, source: Source) -> None:
        if source in self.model:
            return
        with pytest.raises(ValueError):
            self.admission.release(source)

    @rule(limits=limits_strategy)
    def reload(self, limits: Limits) -> None:
        note(f"reload: {limits}")
        self.admission.limits = limits

    @invariant()
    def counts_are_exact_and_the_table_has_no_zero_entry(self) -> None:
        table = self.admission.by_source()
        assert table == self.model
        assert all(count > 0 for count in table.values())
        assert self.admission.active == sum(table.values())
        for source in SOURCES:
            assert self.admission.count(source) == self.model.get(source, 0) >= 0


TestAdmissionMachine = AdmissionMachine.TestCase


@given(
    st.integers(1, 6),
    st.one_of(st.none(), st.integers(1, 4)),
    st.lists(st.tuples(st.booleans(), st.sampled_from(SOURCES)), max_size=200),
)
def test_fixed_limits_are_never_exceeded_and_memory_stays_bounded(
    max_connections: int, per_source: int | None, steps: list[tuple[bool, Source]]
) -> None:
    admission = Admission(Limits(max_connections, per_source))
    live: list[Source] = []
    for connect, source in steps:
        if connect:
            if admission.admit(source, ADDRESS[source]) is None:
                live.append(source)
        elif live:
            admission.release(live.pop(0))
        assert admission.active == len(live) <= max_connections
        table = admission.by_source()
        assert len(table) <= admission.active
        assert per_source is None or all(count <= per_source for count in table.values())
    for source in live:
        admission.release(source)
    assert (admission.active, admission.by_source()) == (0, {})


# ---------------------------------------------------------------------------------------------
# RateLimit


class SystemdRateLimit:
    """A line-by-line port of ratelimit_below() (src/basic/ratelimit.c, systemd 255) on integer
    time, the oracle for :class:`RateLimit`. systemd's window is closed at its end (``>``)."""

    def __init__(self, interval: int, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self.begin: int | None = None  # systemd's begin == 0
        self.num = 0

    def below(self, ts: int) -> bool:
        if not (self.interval > 0 and self.burst > 0):  # ratelimit_configured()
            return True
        if self.begin is None or ts - self.begin > self.interval:
            self.begin, self.num = ts, 1
            return True
        self.num += 1
        return self.num <= self.burst


@given(
    st.integers(2, 20),
    st.integers(0, 5),
    st.integers(0, 10**6),
    st.lists(st.integers(0, 4), max_size=80),
)
def test_rate_limit_decides_as_systemd_with_the_window_end_opening_the_next(
    interval: int, burst: int, start: int, steps: list[int]
) -> None:
    # The one difference: systemd keeps the instant start + interval in the old window, we open
    # the next one there. On integer time that is systemd's rule with the interval one shorter.
    ours, theirs = RateLimit(interval, burst), SystemdRateLimit(interval - 1, burst)
    now = start
    for step in steps:
        now += step
        assert (ours.check(now) == 0.0) is theirs.below(now)


@given(st.integers(1, 5), st.integers(0, 100), st.lists(st.integers(0, 2), max_size=40))
def test_rate_limit_with_a_one_second_window_allows_burst_per_instant(
    burst: int, start: int, steps: list[int]
) -> None:
    # The case the oracle above cannot express (systemd's interval would be 0, which disables
    # it): on integer time a 1 s window holds exactly the events of one instant.
    limit = RateLimit(1, burst)
    now, seen = start, 0
    for step in steps:
        if step:
            now, seen = now + step, 0
        allowed = limit.check(now) == 0.0
        assert allowed is (seen < burst)
        seen += allowed


times = st.lists(
    st.one_of(
        st.just(0.0),
        st.sampled_from([0.25, 0.5, 1.0, 2.0]),
        st.floats(0, 3, allow_nan=False),
    ),
    max_size=60,
)


@given(
    st.one_of(st.sampled_from([0.5, 1.0, 2.0]), st.floats(1e-3, 10)),
    st.integers(1, 5),
    st.one_of(st.floats(0, 1e6), st.floats(1e8, 1e10)),
    times,
)
def test_rate_limit_windows(interval: float, burst: int, start: float, steps: list[float]) -> None:
    """At most ``burst`` events per window; a refusal waits exactly until the window ends; the
    first event at or after the end is allowed and opens the next window."""
    limit = RateLimit(interval, burst)
    now = start
    window_start: float | None = None
    allowed_in_window = 0
    for step in steps:
        now += step
        wait = limit.check(now)
        if window_start is None or now >= window_start + interval:
            assert wait == 0.0, "the first event after a window must be allowed"
            window_start, allowed_in_window = now, 1
            continue
        end = window_start + interval
        if allowed_in_window < burst:
            assert wait == 0.0
            allowed_in_window += 1
            continue
        # Refused: the pause ends exactly at the window end (rounded up, never short of it).
        assert wait > 0
        assert now + wait >= end
        assert math.isclose(wait, end - now, rel_tol=1e-12, abs_tol=0)
        before_end = math.nextafter(end, -math.inf)
        if before_end >= now:
            assert limit.check(before_end) > 0, "a refused event must not be counted"
        assert limit.check(now + wait) == 0.0, "after the pause, events are allowed again"
        window_start, allowed_in_window, now = now + wait, 1, now + wait


@pytest.mark.parametrize(
    ("now", "end"),
    [(22948499.129779328, 67108863.99999999), (0.1, 0.30000000000000004), (3.0, 2.0**53)],
)
def test_the_pause_is_rounded_up_to_reach_the_window_end(now: float, end: float) -> None:
    # end - now rounds, and now + (end - now) can land one step short of end (the first case):
    # a caller waking there would be refused again. The wait is rounded up instead.
    limit = RateLimit(end, 1)
    assert limit.check(0.0) == 0.0  # the window is [0, end)
    wait = limit.check(now)
    assert wait > 0
    assert now + wait >= end
    assert limit.check(now + wait) == 0.0


def test_rate_limit_example_pauses_then_recovers() -> None:
    limit = RateLimit.of(2 * SECOND, 3)
    assert [limit.check(t) for t in (10.0, 10.5, 11.0)] == [0.0, 0.0, 0.0]
    assert limit.check(11.5) == 0.5  # until 12.0, the end of the window opened at 10.0
    assert limit.check(11.9) == pytest.approx(0.1)
    assert limit.check(12.0) == 0.0  # a new window: 12.0 .. 14.0
    assert limit.check(12.0) == 0.0
    assert limit.check(13.0) == 0.0
    assert limit.check(13.5) == 0.5
    assert limit.check(100.0) == 0.0  # never fails for good


@pytest.mark.parametrize(
    "limit",
    [
        RateLimit(None, 5),
        RateLimit(0, 5),
        RateLimit(0.0, 5),
        RateLimit(2.0, 0),
        RateLimit(None, 0),
        RateLimit.of(None, 15),  # PollLimitIntervalSec=infinity: systemd would stop for good
        RateLimit.of(0, 15),
        RateLimit.of(2 * SECOND, 0),
    ],
    ids=repr,
)
@given(times)
def test_disabled_rate_limits_allow_everything(limit: RateLimit, steps: list[float]) -> None:
    now = 0.0
    assert not limit.enabled
    for step in [0.0] * 100 + steps:
        now += step
        assert limit.check(now) == 0.0


def test_rate_limit_of_converts_microseconds() -> None:
    limit = RateLimit.of(2 * SECOND, 150)
    assert (limit.interval, limit.burst, limit.enabled) == (2.0, 150, True)
    assert RateLimit.of(1500, 1).interval == 0.0015


@pytest.mark.parametrize(
    ("interval", "burst", "message"),
    [
        (-1.0, 1, "interval must be None or a finite number of seconds >= 0 (got -1.0)"),
        (math.inf, 1, "interval must be None or a finite number of seconds >= 0 (got inf)"),
        (math.nan, 1, "interval must be None or a finite number of seconds >= 0 (got nan)"),
        ("2s", 1, "interval must be None or a finite number of seconds >= 0 (got '2s')"),
        (1.0, -1, "burst must be an integer >= 0 (got -1)"),
        (1.0, 1.5, "burst must be an integer >= 0 (got 1.5)"),
    ],
)
def test_bad_rate_limits_are_refused_with_the_value_named(
    interval: object, burst: object, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        RateLimit(interval, burst)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_a_clock_read_before_the_window_start_waits_for_the_same_end() -> None:
    # Not expected from a monotonic clock, but harmless: still inside the window, never stuck.
    limit = RateLimit(1.0, 1)
    assert limit.check(5.0) == 0.0
    assert limit.check(4.0) == 2.0
    assert limit.check(6.0) == 0.0
