"""The metrics themselves: one registry of activator's own, fed by hooks and read at scrape time.

Rule 1: the hot path pays only for counting what happened (a counter's increment, a histogram's
observation, under prometheus-client's lock: about a microsecond). Everything that is a state
(the pool, the leases, the live invocations, the spawner) is read when Prometheus scrapes, by
:class:`_StateCollector`, and costs nothing between scrapes.

Rule 2: label values are bounded by the units files: socket unit names, service unit names with
the template for per-connection instances (``echo@.service``, never
``echo@3-127.0.0.1:7-127.0.0.1:41234.service``), and the fixed reason, source, stage and status
sets. Peers and UIDs are never labels.

Rule 3: a series never starts above 0 and never disappears while its unit is loaded: a unit
seen once (or loaded, when the manager says which units are) keeps ``activator_uid_leases`` and
``activator_invocations_active`` at 0 when nothing of it runs, so they read 0 after a flood
instead of going stale, and has ``activator_spawn_failures_total`` at 0 for every stage of
:data:`SPAWN_STAGES` before its first failure, so ``increase()`` sees that failure. A unit no
longer loaded (nor enabled) loses its series at the next scrape, unless something of it still
runs: label sets do not grow with every unit ever loaded.

Rule 4: a connection the pool refused (no UID: reasons :data:`POOL_REFUSALS`) is neither a spawn
failure nor a failed invocation: it is counted as ``result="rejected"``, beside the allocation
failure that says why.
"""

from __future__ import annotations

import contextvars
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

import attrs
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from activator import __version__
from activator.directories import ChownStats
from activator.invocation import Outcome, Runtime
from activator.leases import LeaseService
from activator.manager import Hooks, Live
from activator.spawner import ExitStatus, Spawner
from activator.uidpool import Lease, SkipReason, Source

#: The ``source`` label values of ``activator_uid_allocations_total`` (``shared``: the live lease
#: of the same user name, held by one more invocation).
SOURCES: Final = (*(source.value for source in Source), "shared")
#: The ``reason`` label values of ``activator_uid_allocation_failures_total``.
FAILURE_REASONS: Final = ("exhausted", "queue_full", "wait_timeout", "names")
#: The ``reason`` label values of ``activator_uid_candidates_skipped_total``.
SKIP_REASONS: Final = tuple(reason.value for reason in SkipReason)
#: The reasons of an invocation the pool refused (no UID to run it as): rejected, not failed.
POOL_REFUSALS: Final = frozenset({"exhausted", "queue_full", "wait_timeout"})
#: The ``result`` label values of ``activator_invocations_total``.
RESULTS: Final = ("success", "failure", "stopped", "rejected")
#: The ``stage`` label values ``activator_spawn_failures_total`` has at 0 for every unit (Rule 3):
#: activator's own stages (:class:`activator.invocation.Outcome`) then the spawner's
#: (:class:`activator.spawner.SpawnFailed`). Another stage gets its series when it first fails.
SPAWN_STAGES: Final = (
    "lease", "user", "directories", "cgroup", "plan", "environment", "output", "spawner",
    "teardown", "fork", "request", "namespaces", "mount", "rlimit", "nice", "fds", "chdir",
    "privileges", "keyring", "exec", "internal",
)  # fmt: skip

#: From tens of microseconds (a free UID, taken on the loop) to a wait that timed out.
ALLOCATION_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: A wait under the ``wait`` policy: a handler's lifetime or so, bounded by wait_timeout_sec.
WAIT_BUCKETS: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Accept to exec: a few milliseconds, more with directories to chown or a UID to wait for.
SPAWN_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: A handler's (and a lease's) life: from an inetd one-shot to a long session.
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0, 86400.0,
)  # fmt: skip

#: The state metrics of the scrape being rendered in a worker thread, read on the loop before
#: (a worker thread never reads the loop's pool or live invocations: Rule 1 of leases).
_SNAPSHOT: contextvars.ContextVar[list[Metric] | None] = contextvars.ContextVar(
    "_SNAPSHOT", default=None
)

#: A per-connection (Accept=yes) instance, as :func:`activator.manager.instance_name` makes it:
#: ``N-LOCAL-REMOTE`` for IP, ``N-PID-UID`` for Unix.
_CONNECTION_INSTANCE = re.compile(r"\d+-[^-]+-[^-]+")


def unit_label(unit: str, per_connection: bool | None = None) -> str:
    """The ``unit`` label of an invocation of ``unit``: the template's name for a per-connection
    instance (``echo@.service``), the name itself otherwise (an enabled instance such as
    ``waldo@customer1.service`` is bounded by the enabled-instances directory).

    Args:
        unit: the service unit's name.
        per_connection: whether it is an Accept=yes connection's instance; None when unknown,
            then decided by the instance's form (``N-LOCAL-REMOTE`` or ``N-PID-UID``).
    """
    prefix, at, rest = unit.partition("@")
    if not at:
        return unit
    instance, dot, suffix = rest.rpartition(".")
    if not dot or not instance:
        return unit
    if per_connection is None:
        per_connection = _CONNECTION_INSTANCE.fullmatch(instance) is not None
    return f"{prefix}@.{suffix}" if per_connection else unit


def exit_labels(status: ExitStatus) -> tuple[str, str]:
    """The ``how`` and ``status`` labels of a handler's exit: ``("exited", "0")`` or
    ``("killed", "SIGKILL")``."""
    if status.signal is None:
        return "exited", str(status.code if status.code is not None else 0)
    try:
        return "killed", signal.Signals(status.signal).name
    except ValueError:
        return "killed", f"SIG{status.signal}"


def invocation_result(outcome: Outcome) -> str:
    """``stopped`` (on request), ``rejected`` (the pool had no UID for it: Rule 4), ``success``
    (the handler ran and exited 0, torn down cleanly), or ``failure`` (it never ran, a signal
    killed it, it exited non-zero, or its teardown failed): the ``result`` label of
    ``activator_invocations_total``."""
    if outcome.stopped:
        return "stopped"
    if outcome.status is None and outcome.reason in POOL_REFUSALS:
        return "rejected"
    if outcome.failure is None and outcome.status is not None and outcome.exit_code == 0:
        return "success"
    return "failure"


@attrs.frozen
class Probes:
    """What the process-health metrics and ``/healthz`` ask, at scrape time.

    Attributes:
        spawner_up: whether the spawner process answers.
        spawner_restarts: how many times it was started again after it died.
        userdb_up: whether the userdb socket is served; None when userdb is disabled.
        pool_up: whether the lease service's background task runs, its first scan done; None
            when nobody can tell (``/healthz`` then does not ask).
    """

    spawner_up: Callable[[], bool]
    spawner_restarts: Callable[[], int]
    userdb_up: Callable[[], bool] | None = None
    pool_up: Callable[[], bool] | None = None


def spawner_probes(
    spawner: Spawner, userdb_path: str | None = None, pool_up: Callable[[], bool] | None = None
) -> Probes:
    """The probes of a real spawner and userdb socket.

    Args:
        spawner: the spawner client; it is up when its current process exists (a spawner that
            died is reaped at once, so its PID is gone until a new one runs).
        userdb_path: the socket userdb serves on, bound already; None when userdb is disabled.
            userdb is up while the socket file there is still the one that was there when the
            probes were made (same device and inode): a file another activator bound since,
            or none, is down.
        pool_up: as :attr:`Probes.pool_up`.
    """
    served = None if userdb_path is None else _socket_identity(userdb_path)

    def spawner_up() -> bool:
        try:
            os.kill(spawner.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def userdb_up() -> bool:
        assert userdb_path is not None
        return served is not None and _socket_identity(userdb_path) == served

    return Probes(
        spawner_up, lambda: spawner.restarts, None if userdb_path is None else userdb_up, pool_up
    )


def _socket_identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the socket file at ``path``; None when it is no socket."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None


@attrs.define(eq=False)
class Metrics:
    """activator's metrics, in a registry of their own (:attr:`registry`).

    Assign the hook methods to what reports them: :meth:`allocated` to
    ``LeaseService.on_allocated``; :meth:`started`, :meth:`finished` and :meth:`chowned` to the
    ``Runtime``'s ``on_started``, ``on_finished`` and ``on_chown``; :meth:`accepted` and
    :meth:`rejected` to the manager's ``Hooks`` (:meth:`attach` does all of it).

    Args:
        leases: the lease service, read at scrape time (pool, leases, counters, wait queue).
        probes: the spawner and userdb probes.
        live: the manager's live invocations (by invocation id), read at scrape time and to
            label per-connection invocations with their template.
        process: also export prometheus-client's ``process_*`` metrics (this process's CPU,
            memory and descriptors).
        units: the ``unit`` labels of the service units loaded or enabled now, asked at each
            scrape (Rule 3: their series are made at 0; those of other units, with nothing of
            them running, are dropped); None: no unit is ever dropped.
    """

    leases: LeaseService
    probes: Probes
    live: Mapping[str, Live] = attrs.field(factory=dict)
    process: bool = True
    units: Callable[[], Iterable[str]] | None = None
    registry: CollectorRegistry = attrs.field(init=False, factory=CollectorRegistry)
    #: UID -> (the invocation that leased it, when): the leases whose release is not seen yet.
    _lease_started: dict[int, tuple[str, float]] = attrs.field(init=False, factory=dict)
    #: Every ``unit`` label a lease or an invocation had (Rule 3).
    _lease_units: set[str] = attrs.field(init=False, factory=set)
    _active_units: set[str] = attrs.field(init=False, factory=set)
    #: Every ``unit`` label with series, and the counters' label sets of each (Rule 3).
    _series: dict[str, set[tuple[Counter, tuple[str, ...]]]] = attrs.field(init=False, factory=dict)
    _i: _Instruments = attrs.field(init=False)
    _state: _StateCollector = attrs.field(init=False)
    #: Renders run in worker threads, two at a time at most.
    _renders: trio.CapacityLimiter = attrs.field(
        init=False, factory=lambda: trio.CapacityLimiter(2)
    )

    def __attrs_post_init__(self) -> None:
        # The *_created series (one more per counter and histogram, per label set) say when a
        # series began, which Prometheus knows from its first scrape; they only add bulk. This
        # is prometheus-client's process-wide switch; activator's is its only registry.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry
        # The states first: a scrape reads them (and drops the series of units gone, Rule 3)
        # before it renders the counters.
        self._state = _StateCollector(self)
        r.register(self._state)
        self._i = _instruments(r)
        if self.process:
            ProcessCollector(registry=r)

    def attach(self, runtime: Runtime, hooks: Hooks) -> None:
        """Connect every hook: the lease service's, the runtime's and the manager's."""
        runtime.leases.on_allocated = self.allocated
        runtime.on_started = self.started
        runtime.on_finished = self.finished
        runtime.on_chown = self.chowned
        hooks.accepted = self.accepted
        hooks.rejected = self.rejected

    # --- hooks (called on the event loop, each in about a microsecond) -------------------------

    def allocated(self, lease: Lease, seconds: float) -> None:
        """A UID was leased after ``seconds``."""
        self._i.allocation_seconds.observe(seconds)
        # The acquire that waited is still counted in the queue while it reports (a newcomer
        # takes a UID only when no one waits): the queue is empty exactly when it did not wait.
        if self.leases.waiting > 0:
            self._i.wait_seconds.observe(seconds)
        now = time.perf_counter()
        self._lease_ended(lease.uid, now)  # released, and leased again before its end was seen
        self._lease_started[lease.uid] = (lease.invocation, now)
        unit = self._label(lease.unit, lease.invocation)
        self._seen(unit)
        self._lease_units.add(unit)

    def started(self, unit: str, invocation: str, spawn_seconds: float) -> None:
        """A handler runs (``spawn_seconds``: the spawner's part of its start)."""
        label = self._label(unit, invocation)
        self._seen(label)
        self._active_units.add(label)
        live = self.live.get(invocation)
        if live is not None:  # from the invocation's start, the accept's moment
            spawn_seconds = max(0.0, time.time() - live.started)
        self._i.spawn_seconds.observe(spawn_seconds)

    def finished(self, outcome: Outcome) -> None:
        """An invocation ended (its lease, if any, released or kept for good)."""
        unit = self._label(outcome.unit, outcome.invocation)
        self._seen(unit)
        self._active_units.add(unit)
        result = invocation_result(outcome)
        self._child(self._i.invocations_total, unit, result).inc()
        if outcome.status is not None:
            how, status = exit_labels(outcome.status)
            self._child(self._i.exits_total, unit, how, status).inc()
            run = dict(outcome.timings).get("run")
            if run is not None:
                self._i.handler_seconds.observe(run)
        elif outcome.reason == "spawner_died":
            # It ran, and its exit went with the spawner (which killed it): an exit whose
            # status is lost, never a spawn failure.
            self._child(self._i.exits_total, unit, "lost", "spawner_died").inc()
        elif outcome.stage is not None and result not in ("stopped", "rejected"):
            self._child(self._i.spawn_failures_total, unit, outcome.stage).inc()
        if outcome.uid is not None:
            current = self.leases.pool.leased.get(outcome.uid)
            started = self._lease_started.get(outcome.uid)
            # A shared lease is held until its last holder ends; a lease whose teardown failed
            # is held for good.
            if started is not None and (current is None or current.invocation != started[0]):
                self._lease_ended(outcome.uid, time.perf_counter())

    def _lease_ended(self, uid: int, now: float) -> None:
        started = self._lease_started.pop(uid, None)
        if started is not None:
            self._i.lease_seconds.observe(now - started[1])

    def chowned(self, stats: ChownStats) -> None:
        """A directories step ran (skipped when every owner was right already)."""
        if not stats.skipped:
            self._i.chowns.inc()
            self._i.chown_files.inc(stats.files)
            self._i.chown_seconds.inc(stats.seconds)

    def accepted(self, unit: str) -> None:
        """A connection was accepted on the socket unit ``unit``."""
        self._i.accepted_total.labels(unit).inc()

    def rejected(self, unit: str, reason: str) -> None:
        """A connection of the socket unit ``unit`` was refused for ``reason``."""
        self._i.rejected_total.labels(unit, reason).inc()

    # --- scrapes -------------------------------------------------------------------------------

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The registry rendered in the format ``accept`` (an HTTP Accept header) asks for, and
        its content type.

        Rendering takes milliseconds (about 1.7 ms for 200 lines, 8 ms for 1000), too long for
        the loop: the state metrics are read here, on the loop (cheap), and everything is
        rendered in a worker thread (prometheus-client's counters and histograms lock).
        """
        encoder, content_type = choose_encoder(accept)
        token = _SNAPSHOT.set(self._state.snapshot())
        try:
            body = await trio.to_thread.run_sync(encoder, self.registry, limiter=self._renders)
        finally:
            _SNAPSHOT.reset(token)
        return body, content_type

    # --- health -------------------------------------------------------------------------------

    def health(self) -> str | None:
        """None when activator can serve, else why not (``/healthz``)."""
        if not self.probes.spawner_up():
            return "spawner: not running"
        if self.probes.pool_up is not None and not self.probes.pool_up():
            return "pool: the lease service is not running"
        if self.probes.userdb_up is not None and not self.probes.userdb_up():
            return "userdb: its socket is not served"
        return None

    def _label(self, unit: str, invocation: str) -> str:
        live = self.live.get(invocation)
        return unit_label(unit, None if live is None else live.per_connection)

    # --- label sets (Rule 3) ---------------------------------------------------------------------

    def _seen(self, unit: str) -> None:
        """The first sight of ``unit`` makes its spawn failure series, at 0."""
        if unit not in self._series:
            self._series[unit] = set()
            for stage in SPAWN_STAGES:
                self._child(self._i.spawn_failures_total, unit, stage)

    def _child(self, counter: Counter, unit: str, *labels: str) -> Counter:
        """The series of ``counter`` for ``unit`` and ``labels``, recorded to drop it with its
        unit."""
        self._series[unit].add((counter, labels))
        return counter.labels(unit, *labels)

    def _prune(self, running: Iterable[str]) -> None:
        """Make the series of every unit loaded now; drop those of units neither loaded nor
        ``running`` (on the loop, before a scrape is rendered)."""
        if self.units is None:
            return
        keep = {*self.units(), *running}
        for unit in keep:
            self._seen(unit)
        for unit in [unit for unit in self._series if unit not in keep]:
            for counter, labels in self._series.pop(unit):
                counter.remove(unit, *labels)
            self._lease_units.discard(unit)
            self._active_units.discard(unit)


@attrs.frozen
class _Instruments:
    """The counters and histograms the hooks feed."""

    allocation_seconds: Histogram
    wait_seconds: Histogram
    lease_seconds: Histogram
    chowns: Counter
    chown_files: Counter
    chown_seconds: Counter
    accepted_total: Counter
    rejected_total: Counter
    invocations_total: Counter
    exits_total: Counter
    spawn_failures_total: Counter
    spawn_seconds: Histogram
    handler_seconds: Histogram


def _instruments(r: CollectorRegistry) -> _Instruments:
    allocation_seconds = Histogram(
        "activator_uid_allocation_seconds",
        "Time a UID allocation took, any wait for a UID included (successful ones).",
        buckets=ALLOCATION_BUCKETS,
        registry=r,
    )
    wait_seconds = Histogram(
        "activator_uid_wait_seconds",
        "Time an allocation waited for a UID to be released (policy wait), for those that "
        "waited and got one; a wait that timed out is counted in "
        'activator_uid_allocation_failures_total{reason="wait_timeout"}.',
        buckets=WAIT_BUCKETS,
        registry=r,
    )
    lease_seconds = Histogram(
        "activator_uid_lease_duration_seconds",
        "How long each lease was held, from allocation to release.",
        buckets=DURATION_BUCKETS,
        registry=r,
    )
    chowns = Counter(
        "activator_uid_chown",
        "Directory set-ups that had to change the owner of their files.",
        registry=r,
    )
    chown_files = Counter(
        "activator_uid_chown_files", "Files, directories and symlinks chowned.", registry=r
    )
    chown_seconds = Counter(
        "activator_uid_chown_seconds", "Seconds spent chowning directories.", registry=r
    )
    accepted_total = Counter(
        "activator_connections_accepted",
        "Connections accepted on a socket unit.",
        ["unit"],
        registry=r,
    )
    rejected_total = Counter(
        "activator_connections_rejected",
        "Connections refused, by socket unit and reason (as the reject log event).",
        ["unit", "reason"],
        registry=r,
    )
    invocations_total = Counter(
        "activator_invocations",
        "Invocations that ended, by service unit and result (success: the handler exited "
        "0; stopped: on request; rejected: the UID pool had no UID for it; failure: anything "
        "else).",
        ["unit", "result"],
        registry=r,
    )
    exits_total = Counter(
        "activator_handler_exits",
        "Handler exits, by service unit, how (exited, killed, or lost: the spawner died "
        "while it ran, and killed it) and status (exit code, signal name, or spawner_died).",
        ["unit", "how", "status"],
        registry=r,
    )
    spawn_failures_total = Counter(
        "activator_spawn_failures",
        "Invocations whose handler never ran, by service unit and the stage that failed "
        "(connections the UID pool refused are not counted here: see "
        "activator_uid_allocation_failures_total).",
        ["unit", "stage"],
        registry=r,
    )
    spawn_seconds = Histogram(
        "activator_spawn_seconds",
        "Time from an invocation's start to its handler's exec. For a connection, the start "
        "is when it was admitted, after the accept and any PollLimit or TriggerLimit pause: "
        "the wait in the listen backlog is not in it.",
        buckets=SPAWN_BUCKETS,
        registry=r,
    )
    handler_seconds = Histogram(
        "activator_handler_duration_seconds",
        "Handler run time, from its exec to its exit.",
        buckets=DURATION_BUCKETS,
        registry=r,
    )
    return _Instruments(
        allocation_seconds,
        wait_seconds,
        lease_seconds,
        chowns,
        chown_files,
        chown_seconds,
        accepted_total,
        rejected_total,
        invocations_total,
        exits_total,
        spawn_failures_total,
        spawn_seconds,
        handler_seconds,
    )


class _StateCollector(Collector):
    """The metrics that are states, read from the lease service, the manager and the probes at
    each scrape (Rule 1), with every unit seen once kept at 0 (Rule 3)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot = _SNAPSHOT.get()
        return iter(self.snapshot() if snapshot is None else snapshot)

    def snapshot(self) -> list[Metric]:
        """Every state metric, now (on the loop)."""
        return list(self._read())

    def _read(self) -> Iterator[Metric]:
        m = self._metrics
        leases = m.leases
        pool = leases.pool
        size = pool.size
        leased = list(pool.leased.values())
        yield _gauge("activator_uid_pool_size", "UIDs in the pool ([pool] first..last).", size)
        yield _gauge(
            "activator_uid_pool_utilization_ratio",
            "Leased UIDs over the pool size (0..1). UIDs cooling down, being leased, in use "
            "by another process or not probed yet are not free either: the pool can be "
            "exhausted below 1 (see activator_uid_pool_uids and activator_uid_pool_free).",
            len(leased) / size if size else 0.0,
        )
        yield _gauge(
            "activator_uid_pool_free", "UIDs checked free and ready to lease.", pool.free_count
        )
        states = GaugeMetricFamily(
            "activator_uid_pool_uids",
            "UIDs of the pool by state (they sum to the pool size): free (probed free), taken "
            "(being leased), leased, cooling (released, in the reuse delay), busy (in use "
            "outside activator), unchecked (not probed yet).",
            labels=["state"],
        )
        for state, count in sorted(pool.counts().items()):
            states.add_metric([state], count)
        yield states
        yield _gauge(
            "activator_uid_wait_queue_length",
            "Allocations waiting for a UID to be released (policy wait).",
            leases.waiting,
        )
        by_unit = _count(m._label(lease.unit, lease.invocation) for lease in leased)
        active = _count(m._label(live.service.name.name, key) for key, live in m.live.items())
        m._prune({*by_unit, *active})
        yield _by_unit(
            "activator_uid_leases",
            "UIDs leased, by service unit (the template for per-connection instances).",
            by_unit,
            m._lease_units,
        )
        yield _by_unit(
            "activator_invocations_active",
            "Invocations running, by service unit (the template for per-connection instances).",
            active,
            m._active_units,
        )
        yield _counter(
            "activator_uid_allocations",
            "UIDs leased, by how the UID was found.",
            "source",
            SOURCES,
            leases.allocations,
        )
        yield _counter(
            "activator_uid_allocation_failures",
            "Allocations that got no UID, by reason.",
            "reason",
            FAILURE_REASONS,
            leases.failures,
        )
        yield _counter(
            "activator_uid_candidates_skipped",
            "Candidate UIDs found in use and skipped, by what used them.",
            "reason",
            SKIP_REASONS,
            leases.skipped,
        )
        yield _gauge(
            "activator_spawner_up",
            "1 when the spawner process runs, else 0.",
            m.probes.spawner_up(),
        )
        restarts = CounterMetricFamily(
            "activator_spawner_restarts", "Times the spawner was started again after it died."
        )
        restarts.add_metric([], m.probes.spawner_restarts())
        yield restarts
        if m.probes.userdb_up is not None:
            yield _gauge(
                "activator_userdb_up",
                "1 while the userdb socket activator bound is still at its path, else 0.",
                m.probes.userdb_up(),
            )
        info = GaugeMetricFamily(
            "activator_build_info", "activator's version, as a label (value 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _count(labels: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts


def _by_unit(name: str, documentation: str, counts: dict[str, int], seen: set[str]) -> Metric:
    seen.update(counts)
    family = GaugeMetricFamily(name, documentation, labels=["unit"])
    for unit in sorted(seen):
        family.add_metric([unit], counts.get(unit, 0))
    return family


def _counter(
    name: str, documentation: str, label: str, values: Iterable[str], counts: Mapping[str, int]
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in (*values, *sorted(set(counts) - set(values))):
        family.add_metric([value], counts.get(value, 0))
    return family
