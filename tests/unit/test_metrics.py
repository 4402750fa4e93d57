"""The metrics contract (issue 7: the names dashboards and alert rules rely on): every name, type,
label and HELP as scraped, and what the hooks count.

The contract, in short: the ``activator_`` prefix and a HELP text on every metric; base units in
names; ``unit`` labels are socket unit names for connection metrics and service unit names for
invocation metrics (the template, ``echo@.service``, for per-connection instances, never
``echo@3-1.2.3.4:5-...``); every other label takes a value of a fixed set (reasons, sources,
stages, states, results), never a peer or a UID. :data:`CONTRACT` below lists every name with
its type and labels.

The scrape is prometheus-client's own text rendering of activator's registry, parsed back with
its parser; the lease service is a real one, not started (its pool is pure state), and the hooks
get the :class:`~activator.invocation.Outcome` values invocations report.
"""

from __future__ import annotations

from typing import Final

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from activator.directories import ChownStats
from activator.invocation import Outcome, StopRequest
from activator.leases import LeaseService
from activator.manager import Live
from activator.metrics import (
    HttpError,
    HttpLimits,
    Metrics,
    Probes,
    Request,
    exit_labels,
    invocation_result,
    parse_request,
    unit_label,
)
from activator.metrics._http import _Client, _make_room
from activator.model import build_service
from activator.spawner import ExitStatus
from activator.uidpool import Lease, Source
from activator.units import parse_unit_name, parse_unit_text

#: name -> (type, label names) of every metric of the contract.
CONTRACT: Final = {
    "activator_uid_pool_size": ("gauge", ()),
    "activator_uid_leases": ("gauge", ("unit",)),
    "activator_uid_pool_utilization_ratio": ("gauge", ()),
    "activator_uid_pool_free": ("gauge", ()),
    "activator_uid_pool_uids": ("gauge", ("state",)),
    "activator_uid_allocations": ("counter", ("source",)),
    "activator_uid_allocation_failures": ("counter", ("reason",)),
    "activator_uid_candidates_skipped": ("counter", ("reason",)),
    "activator_uid_allocation_seconds": ("histogram", ()),
    "activator_uid_wait_queue_length": ("gauge", ()),
    "activator_uid_wait_seconds": ("histogram", ()),
    "activator_uid_lease_duration_seconds": ("histogram", ()),
    "activator_uid_chown": ("counter", ()),
    "activator_uid_chown_files": ("counter", ()),
    "activator_uid_chown_seconds": ("counter", ()),
    "activator_connections_accepted": ("counter", ("unit",)),
    "activator_connections_rejected": ("counter", ("unit", "reason")),
    "activator_invocations_active": ("gauge", ("unit",)),
    "activator_invocations": ("counter", ("unit", "result")),
    "activator_handler_exits": ("counter", ("unit", "how", "status")),
    "activator_spawn_failures": ("counter", ("unit", "stage")),
    "activator_spawn_seconds": ("histogram", ()),
    "activator_handler_duration_seconds": ("histogram", ()),
    "activator_spawner_up": ("gauge", ()),
    "activator_spawner_restarts": ("counter", ()),
    "activator_userdb_up": ("gauge", ()),
    "activator_build_info": ("gauge", ("version",)),
}

CONNECTION_UNIT: Final = "echo@3-127.0.0.1:7007-127.0.0.1:41234.service"


def metrics(
    first: int = 64000,
    last: int = 64015,
    *,
    spawner_up: bool = True,
    pool_up: bool = True,
    live: dict[str, Live] | None = None,
    units: list[str] | None = None,
) -> Metrics:
    probes = Probes(lambda: spawner_up, lambda: 2, lambda: True, lambda: pool_up)
    return Metrics(
        LeaseService(first, last),
        probes,
        {} if live is None else live,
        process=False,
        units=None if units is None else lambda: units,
    )


def has(m: Metrics, sample: str, **labels: str) -> bool:
    """Whether the scrape has that sample."""
    try:
        value(m, sample, **labels)
    except AssertionError:
        return False
    return True


def running(
    unit: str = CONNECTION_UNIT, invocation: str = "i1", per_connection: bool = True
) -> Live:
    """A live invocation of ``unit``, as the manager records it."""
    text = "[Service]\nExecStart=/bin/cat\n"
    service, _ = build_service(
        parse_unit_name(unit), [parse_unit_text(text, unit, unit_type="service")]
    )
    return Live(service, StopRequest(), per_connection, invocation=invocation)


def scrape(m: Metrics) -> dict[str, tuple[str, str, list[tuple[str, dict[str, str], float]]]]:
    """name -> (type, HELP, samples) as Prometheus's text format 0.0.4 gives them."""
    text = generate_latest(m.registry).decode()
    return {
        family.name: (
            family.type,
            family.documentation,
            [(s.name, dict(s.labels), s.value) for s in family.samples],
        )
        for family in text_string_to_metric_families(text)
    }


def value(m: Metrics, sample: str, **labels: str) -> float:
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            if s.name == sample and dict(s.labels) == labels:
                return float(s.value)
    msg = f"no sample {sample}{labels}"
    raise AssertionError(msg)


def outcome(unit: str = CONNECTION_UNIT, **fields: object) -> Outcome:
    defaults: dict[str, object] = {"invocation": "i1", "unit": unit, "status": ExitStatus(0, None)}
    return Outcome(**{**defaults, **fields})  # type: ignore[arg-type]


def lease(invocation: str = "i1", unit: str = CONNECTION_UNIT) -> Lease:
    return Lease(64000, "echo-3f2a", unit, invocation, Source.FREE_SET, 0.0)


def hold(m: Metrics, held: Lease) -> None:
    """Lease ``held`` in the pool, as the lease service does (probed free, taken, leased)."""
    pool = m.leases.pool
    pool.checked(dict.fromkeys(range(64000, 64000 + pool.size)), 0.0)
    assert pool.take([(held.uid, held.source)]) == (held.uid, held.source)
    pool.lease(held)


# --- the contract -------------------------------------------------------------------------------


def test_every_metric_of_the_contract_is_scraped_with_its_type_labels_and_help() -> None:
    m = metrics(live={"i1": running()})
    m.accepted("echo.socket")
    m.rejected("echo.socket", "exhausted")
    m.finished(outcome(timings=(("run", 0.5),)))
    m.finished(outcome(status=None, stage="exec", reason="exec", failure="exec: ENOENT"))
    m.allocated(lease(), 0.001)
    hold(m, lease())
    scraped = scrape(m)
    for name, (kind, labels) in CONTRACT.items():
        assert name in scraped, f"{name} is not scraped"
        scraped_kind, documentation, samples = scraped[name]
        assert scraped_kind == kind, name
        assert documentation.strip(), f"{name} has no HELP"
        assert samples, f"{name} has no sample"
        for _, sample_labels, _ in samples:
            assert set(sample_labels) - {"le"} == set(labels), (name, sample_labels)


def test_every_activator_metric_is_in_the_contract_and_named_by_the_conventions() -> None:
    for name, (kind, _, _) in scrape(metrics()).items():
        assert name.startswith("activator_"), name
        assert name in CONTRACT, f"{name} is not in the contract"
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def test_the_openmetrics_rendering_parses_too() -> None:
    text = om_latest(metrics().registry).decode()  # type: ignore[no-untyped-call]
    names = {family.name for family in parse_om(text)}  # type: ignore[no-untyped-call]
    assert set(CONTRACT) <= names


def test_the_pool_gauges_read_the_lease_service_at_scrape_time() -> None:
    m = metrics(64000, 64003)
    hold(m, lease("i1"))
    assert value(m, "activator_uid_pool_size") == 4
    assert value(m, "activator_uid_pool_utilization_ratio") == 0.25
    assert value(m, "activator_uid_leases", unit="echo@.service") == 1
    states = {"free": 3, "taken": 0, "leased": 1, "cooling": 0, "busy": 0, "unchecked": 0}
    for state, count in states.items():
        assert value(m, "activator_uid_pool_uids", state=state) == count
    m.leases.pool.release(64000, 0.0)
    assert value(m, "activator_uid_pool_utilization_ratio") == 0
    assert value(m, "activator_uid_pool_uids", state="free") == 4  # no reuse delay here
    # A unit seen once keeps its series, at 0.
    assert value(m, "activator_uid_leases", unit="echo@.service") == 0


def test_the_lease_service_counters_are_scraped_with_every_label_value_from_zero() -> None:
    m = metrics()
    m.leases.failures["exhausted"] += 3
    m.leases.allocations["name_hash"] += 2
    m.leases.skipped["nss"] += 1
    assert value(m, "activator_uid_allocation_failures_total", reason="exhausted") == 3
    assert value(m, "activator_uid_allocation_failures_total", reason="wait_timeout") == 0
    assert value(m, "activator_uid_allocations_total", source="name_hash") == 2
    assert value(m, "activator_uid_allocations_total", source="state_directory") == 0
    assert value(m, "activator_uid_candidates_skipped_total", reason="nss") == 1
    assert value(m, "activator_uid_candidates_skipped_total", reason="process") == 0


# --- the hooks ----------------------------------------------------------------------------------


def test_live_invocations_are_counted_by_unit_and_back_to_zero_when_they_end() -> None:
    live = {
        "i1": running(invocation="i1"),
        "i2": running("echo@4-127.0.0.1:7007-127.0.0.1:41236.service", "i2"),
        "i3": running("waldo@customer1.service", "i3", per_connection=False),
    }
    m = metrics(live=live)
    assert value(m, "activator_invocations_active", unit="echo@.service") == 2
    assert value(m, "activator_invocations_active", unit="waldo@customer1.service") == 1
    live.clear()
    assert value(m, "activator_invocations_active", unit="echo@.service") == 0
    assert value(m, "activator_invocations_active", unit="waldo@customer1.service") == 0


def test_the_template_label_comes_from_the_manager_when_it_knows_the_invocation() -> None:
    # An enabled instance whose name looks like a connection's is still its own unit.
    m = metrics(live={"i1": running("waldo@3-x-y.service", "i1", per_connection=False)})
    m.finished(outcome("waldo@3-x-y.service", invocation="i1"))
    assert value(m, "activator_invocations_total", unit="waldo@3-x-y.service", result="success")


def test_an_invocation_is_counted_under_its_template_with_its_exit_and_run_time() -> None:
    m = metrics()
    m.finished(outcome(status=ExitStatus(None, 9), timings=(("spawn", 0.01), ("run", 2.0))))
    assert value(m, "activator_invocations_total", unit="echo@.service", result="failure") == 1
    labels = {"unit": "echo@.service", "how": "killed", "status": "SIGKILL"}
    assert value(m, "activator_handler_exits_total", **labels) == 1
    assert value(m, "activator_handler_duration_seconds_sum") == 2.0


def test_an_invocation_that_never_ran_is_a_spawn_failure_of_its_stage() -> None:
    m = metrics()
    m.finished(outcome(status=None, stage="exec", reason="exec", failure="exec: ENOENT"))
    assert value(m, "activator_spawn_failures_total", unit="echo@.service", stage="exec") == 1
    assert value(m, "activator_invocations_total", unit="echo@.service", result="failure") == 1


def test_a_handler_that_ran_when_the_spawner_died_is_a_lost_exit_not_a_spawn_failure() -> None:
    m = metrics()
    died = "the spawner died"
    m.finished(outcome(status=None, stage="spawner", reason="spawner_died", failure=died))
    labels = {"unit": "echo@.service", "how": "lost", "status": "spawner_died"}
    assert value(m, "activator_handler_exits_total", **labels) == 1
    assert value(m, "activator_spawn_failures_total", unit="echo@.service", stage="spawner") == 0
    assert value(m, "activator_invocations_total", unit="echo@.service", result="failure") == 1
    # One the spawner took down before it ran is a spawn failure of that stage.
    m.finished(outcome(status=None, stage="spawner", reason="spawner", failure=died))
    assert value(m, "activator_spawn_failures_total", unit="echo@.service", stage="spawner") == 1


@pytest.mark.parametrize("reason", ["exhausted", "queue_full", "wait_timeout"])
def test_a_connection_the_pool_refused_is_rejected_not_a_spawn_failure(reason: str) -> None:
    m = metrics()
    m.finished(outcome(status=None, stage="lease", reason=reason, failure="no UID"))
    assert value(m, "activator_invocations_total", unit="echo@.service", result="rejected") == 1
    assert not has(m, "activator_invocations_total", unit="echo@.service", result="failure")
    assert value(m, "activator_spawn_failures_total", unit="echo@.service", stage="lease") == 0
    # A lease that failed otherwise (a lock file that cannot be made) is a spawn failure.
    m.finished(outcome(status=None, stage="lease", reason="lease", failure="EROFS"))
    assert value(m, "activator_spawn_failures_total", unit="echo@.service", stage="lease") == 1


def test_spawn_failures_start_at_zero_for_every_stage_of_a_unit_seen_or_loaded() -> None:
    """An alert on increase() sees a unit's first failure only if the series was 0 before."""
    m = metrics(units=["web.service"])
    for stage in ("lease", "cgroup", "mount", "exec"):
        assert value(m, "activator_spawn_failures_total", unit="web.service", stage=stage) == 0
    m = metrics()  # the manager does not say which units are loaded: those seen
    m.started(CONNECTION_UNIT, "i1", 0.001)
    assert value(m, "activator_spawn_failures_total", unit="echo@.service", stage="exec") == 0


def test_the_series_of_a_unit_no_longer_loaded_are_dropped_unless_it_still_runs() -> None:
    loaded = ["echo@.service", "web.service"]
    live = {"i1": running(invocation="i1")}
    m = metrics(live=live, units=loaded)
    m.finished(outcome(invocation="i0"))
    m.finished(outcome("web.service", invocation="i2", status=ExitStatus(1, None)))
    assert value(m, "activator_invocations_active", unit="echo@.service") == 1
    loaded.clear()  # both unloaded; echo@.service still has an invocation running
    assert value(m, "activator_invocations_active", unit="echo@.service") == 1
    assert value(m, "activator_invocations_total", unit="echo@.service", result="success") == 1
    assert not has(m, "activator_invocations_total", unit="web.service", result="failure")
    assert not has(m, "activator_handler_exits_total", unit="web.service", how="exited", status="1")
    assert not has(m, "activator_spawn_failures_total", unit="web.service", stage="exec")
    live.clear()
    assert not has(m, "activator_invocations_active", unit="echo@.service")
    assert not has(m, "activator_spawn_failures_total", unit="echo@.service", stage="exec")
    # Loaded again: back at 0 (a counter that restarts is what Prometheus expects of a reset).
    loaded.append("web.service")
    assert value(m, "activator_spawn_failures_total", unit="web.service", stage="exec") == 0


def test_a_lease_is_timed_from_its_allocation_to_its_release() -> None:
    m = metrics()
    m.allocated(lease("i1"), 0.002)
    hold(m, lease("i1"))
    assert value(m, "activator_uid_allocation_seconds_count") == 1
    assert value(m, "activator_uid_wait_seconds_count") == 0  # nobody waited
    m.finished(outcome(invocation="i2", uid=64000))  # a holder of the shared lease ends
    assert value(m, "activator_uid_lease_duration_seconds_count") == 0
    m.leases.pool.release(64000, 0.0)
    m.finished(outcome(invocation="i1", uid=64000))  # the last holder: released
    assert value(m, "activator_uid_lease_duration_seconds_count") == 1
    m.finished(outcome(invocation="i3", uid=1000))  # a static user's: no lease
    assert value(m, "activator_uid_lease_duration_seconds_count") == 1


def test_a_lease_whose_teardown_failed_is_still_held() -> None:
    m = metrics()
    m.allocated(lease("i1"), 0.002)
    hold(m, lease("i1"))
    m.finished(outcome(invocation="i1", uid=64000, stage="teardown", failure="EBUSY"))
    assert value(m, "activator_uid_lease_duration_seconds_count") == 0
    assert value(m, "activator_uid_leases", unit="echo@.service") == 1


def test_connections_and_chowns_are_counted() -> None:
    m = metrics()
    m.accepted("echo.socket")
    m.accepted("echo.socket")
    m.rejected("echo.socket", "max_connections")
    m.chowned(ChownStats(files=12, seconds=0.5, skipped=False))
    m.chowned(ChownStats(files=0, seconds=0.001, skipped=True))
    assert value(m, "activator_connections_accepted_total", unit="echo.socket") == 2
    labels = {"unit": "echo.socket", "reason": "max_connections"}
    assert value(m, "activator_connections_rejected_total", **labels) == 1
    assert value(m, "activator_uid_chown_total") == 1
    assert value(m, "activator_uid_chown_files_total") == 12
    assert value(m, "activator_uid_chown_seconds_total") == 0.5


def test_process_health_reads_the_probes() -> None:
    m = metrics(spawner_up=False)
    assert value(m, "activator_spawner_up") == 0
    assert value(m, "activator_spawner_restarts_total") == 2
    assert value(m, "activator_userdb_up") == 1
    assert m.health() == "spawner: not running"
    assert metrics(pool_up=False).health() == "pool: the lease service is not running"
    assert metrics().health() is None


# --- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "per_connection", "label"),
    [
        (CONNECTION_UNIT, None, "echo@.service"),
        ("echo@12-[::1]:7-[::1]:41234.service", None, "echo@.service"),
        ("echo@4-1234-0.service", None, "echo@.service"),  # a Unix socket's connection
        ("echo@3-127.0.0.1:7007-127.0.0.1:41234.service", True, "echo@.service"),
        ("waldo@customer1.service", None, "waldo@customer1.service"),  # an enabled instance
        ("waldo@customer1.service", True, "waldo@.service"),
        ("waldo@3-x-y.service", False, "waldo@3-x-y.service"),
        ("plain.service", None, "plain.service"),
        ("plain.service", True, "plain.service"),
    ],
)
def test_per_connection_instances_are_labelled_with_their_template(
    unit: str, per_connection: bool | None, label: str
) -> None:
    assert unit_label(unit, per_connection) == label


def test_exit_labels() -> None:
    assert exit_labels(ExitStatus(0, None)) == ("exited", "0")
    assert exit_labels(ExitStatus(255, None)) == ("exited", "255")
    assert exit_labels(ExitStatus(None, 15)) == ("killed", "SIGTERM")


def test_invocation_results() -> None:
    assert invocation_result(outcome()) == "success"
    assert invocation_result(outcome(status=ExitStatus(1, None))) == "failure"
    assert invocation_result(outcome(status=None, stage="mount", failure="x")) == "failure"
    assert invocation_result(outcome(status=ExitStatus(None, 15), stopped=True)) == "stopped"
    refused = outcome(status=None, stage="lease", reason="queue_full", failure="x")
    assert invocation_result(refused) == "rejected"


# --- HTTP requests ------------------------------------------------------------------------------


def test_a_request_head_is_parsed() -> None:
    head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text"
    assert parse_request(head) == Request("GET", "/metrics", "application/openmetrics-text")
    assert parse_request(b"GET /healthz HTTP/1.0") == Request("GET", "/healthz")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics", 400),
        (b"GET /metrics HTTP/2.0", 505),
        (b"GET /metrics HTTP/1.1\r\nno colon here", 400),
        (b"", 400),
    ],
)
def test_a_malformed_request_head_gets_an_error(head: bytes, status: int) -> None:
    parsed = parse_request(head)
    assert isinstance(parsed, HttpError)
    assert parsed.status == status


# --- who gets a connection slot -----------------------------------------------------------------


def test_room_is_made_by_closing_the_oldest_silent_connection_never_one_being_answered() -> None:
    limits = HttpLimits(max_connections=3, per_peer=2)

    def client(peer: str, *, reading: bool = True) -> _Client:
        return _Client(peer, trio.CancelScope(), reading=reading)

    answering, silent, other = client("a", reading=False), client("a"), client("b")
    clients = [answering, silent, other]
    assert _make_room(clients, "a", limits)  # a's cap: its silent one goes, not the answered
    assert (answering.evicted, silent.evicted, other.evicted) == (False, True, False)
    clients = [answering, other, client("c", reading=False)]
    assert _make_room(clients, "d", limits)  # the cap of all: the oldest silent one
    assert other.evicted
    busy = [client(peer, reading=False) for peer in "xyz"]
    assert not _make_room(busy, "w", limits)  # all being answered: no room, nobody closed
    assert not any(c.evicted for c in busy)
