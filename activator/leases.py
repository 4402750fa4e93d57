"""The lease service: the UID pool, its locks and probes, and the wait queue, on trio.

Rule 1: the event loop never probes. NSS, ``/proc`` and IPC scans run in worker threads, in the
background, and feed the pre-checked free set of :class:`activator.uidpool.Pool`; an allocation
takes a UID from that set and locks it (an ``open``, ``flock`` and ``pwrite`` on tmpfs: tens of
microseconds, done on the loop).

Rule 2: a lease is released only with a :class:`Vacated` proof, which only the invocation's
teardown makes, once no process of the invocation is left (invariant 2 of DESIGN.md).

Rule 3: the lock file is the truth across processes: a UID whose lock another live process holds
is skipped (and rechecked later); a lock file whose owner is gone is a crash leftover, reclaimed
at start before anything listens: its processes are killed (its cgroup, from the record), then
its lock is released.

Theory of operation: :meth:`LeaseService.run` replays the lock directory, scans the whole range
once, then loops: whenever a UID is due for a (re)check it probes a batch in a worker thread;
whenever a cooling UID matures it wakes the waiters. :meth:`LeaseService.acquire` takes a UID in
the order state-directory owner, name hash, free set; with the ``wait`` policy it queues in FIFO
order, bounded in length and in time.
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final, NoReturn

import attrs
import trio

from activator import uidstore
from activator.settings import OnExhausted
from activator.uidpool import Lease, Pool, SkipReason, Source, hash_uid, user_name
from activator.userdb import UserRecord

logger = logging.getLogger(__name__)

#: How many UIDs one background probe batch checks (one worker-thread call).
_CHECK_BATCH: Final = 512
#: How long the background loop sleeps when nothing is due.
_IDLE_RECHECK: Final = 30.0
#: Per-connection user names get this many random hex digits ("waldo-3f2a").
_SUFFIX_DIGITS: Final = 4


class PoolExhausted(Exception):
    """No UID could be leased; ``reason`` is a bounded label value (``exhausted``,
    ``wait_timeout``, ``queue_full``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class Vacated:
    """Proof that no process of an invocation is left: what :meth:`LeaseService.release` needs.

    Attributes:
        uid: the lease's UID.
        how: what proved it (``pid namespace`` when the handler, PID 1 of its namespace, was
            reaped; ``cgroup`` when the invocation's cgroup became empty).
    """

    uid: int
    how: str


@attrs.frozen
class PoolStats:
    """Counters for the metrics: allocations by source, skips by reason, failures by reason."""

    allocations: dict[str, int]
    skipped: dict[str, int]
    failures: dict[str, int]


@attrs.define(eq=False)
class _Waiter:
    event: trio.Event = attrs.field(factory=trio.Event)
    done: bool = False


@attrs.define(eq=False)
class LeaseService:
    """Leases UIDs of ``[first, last]`` to invocations; also the table userdb serves.

    Args:
        first, last: the pool range.
        on_exhausted: the policy when every UID is leased.
        wait_timeout: how long a waiter waits, with ``wait``.
        max_waiting: the wait queue's bound; one more gets :class:`PoolExhausted` at once.
        reuse_delay: seconds a released UID rests before it is leased again.
        lease_directory, systemd_directory: where the lock files live (tests use their own).
        reclaim: called (in a worker thread) with each stale lease's record at start, to kill
            what still runs of it; it must return only when nothing does.
        clock: wall-clock seconds, for lease start times.
    """

    first: int
    last: int
    on_exhausted: OnExhausted = OnExhausted.REJECT
    wait_timeout: float = 5.0
    max_waiting: int = 1024
    reuse_delay: float = 0.0
    lease_directory: str = uidstore.LEASE_DIRECTORY
    systemd_directory: str = uidstore.SYSTEMD_DIRECTORY
    reclaim: Callable[[dict[str, object] | None], None] | None = None
    clock: Callable[[], float] = time.time
    pool: Pool = attrs.field(init=False)
    _locks: dict[int, uidstore.LeaseLock] = attrs.field(init=False, factory=dict)
    #: Shareable leases by their share key (``unit:NAME`` or ``user:NAME``, see :meth:`acquire`).
    _shared: dict[str, int] = attrs.field(init=False, factory=dict)
    #: The share key of each shareable lease, by UID.
    _share_keys: dict[int, str] = attrs.field(init=False, factory=dict)
    #: How many invocations hold each shared lease (absent: one).
    _holders: dict[int, int] = attrs.field(init=False, factory=dict)
    #: The cgroups of each lease's live holders, in the order they came (the lease file names
    #: them all, so crash recovery kills exactly those).
    _cgroups: dict[int, list[str]] = attrs.field(init=False, factory=dict)
    #: Share keys whose last holder is tearing down, set once the UID is released (or kept).
    _closing: dict[str, trio.Event] = attrs.field(init=False, factory=dict)
    #: UIDs being released by their last holder, with their share key (None: not shareable).
    _releasing: dict[int, str | None] = attrs.field(init=False, factory=dict)
    #: Leases kept for good (a teardown failed): never shared, never released before a restart.
    _broken: set[int] = attrs.field(init=False, factory=set)
    _waiters: collections.deque[_Waiter] = attrs.field(init=False, factory=collections.deque)
    #: The waiters of ``_waiters`` that are not done (the queue's length, for its bound).
    _live_waiters: int = attrs.field(init=False, default=0)
    _wake_checker: trio.Event = attrs.field(init=False, factory=trio.Event)
    _ready: trio.Event = attrs.field(init=False, factory=trio.Event)
    _stopped: bool = attrs.field(init=False, default=False)
    allocations: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    skipped: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    failures: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    #: Seconds each successful acquire took (the caller's metrics drain it).
    on_allocated: Callable[[Lease, float], None] | None = None

    def __attrs_post_init__(self) -> None:
        self.pool = Pool(self.first, self.last, reuse_delay=self.reuse_delay)

    # --- start-up ---------------------------------------------------------------------------

    def recover(self, now: float) -> list[Lease | None]:
        """Reclaim what a crashed activator left: blocking, call before serving (or in a thread).

        For each stale lock file: ``reclaim`` kills what runs of it, then the lock is released.
        UIDs whose lock a live process holds are marked busy, to be rechecked after ``now`` (trio
        time). Returns the stale leases found (None for a record that could not be read).
        """
        stale, elsewhere = uidstore.find_stale(
            directory=self.lease_directory, systemd_directory=self.systemd_directory
        )
        found: list[Lease | None] = []
        for item in stale:
            lease: Lease | None = None
            if item.record is not None:
                try:
                    lease = Lease.from_record(item.record)
                except ValueError as error:
                    logger.warning("lease file %s: %s", item.lock.path, error)
            found.append(lease)
            if self.reclaim is not None:
                self.reclaim(item.record)
            uidstore.release(item.lock)
            logger.info(
                "reclaimed UID %d from a previous run (%s)",
                item.lock.uid,
                lease.unit if lease else item.problem or "unreadable record",
            )
        self.pool.replay(elsewhere, [item.lock.uid for item in stale], now)
        return found

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the free set checked: a full scan first (then ``task_status.started()``), then
        rechecks and cooling as they fall due. Runs until cancelled."""
        try:
            await self._check_due()
            self._ready.set()
            task_status.started()
            while True:
                now = trio.current_time()
                self.pool.tick(now)
                self._wake_waiters()
                await self._check_due()
                due = self.pool.next_due(trio.current_time())
                delay = _IDLE_RECHECK if due is None else max(0.0, due - trio.current_time())
                with trio.move_on_after(delay):
                    await self._wake_checker.wait()
                self._wake_checker = trio.Event()
        finally:
            self._stopped = True

    @property
    def running(self) -> bool:
        """Whether :meth:`run` has done its first scan and still runs (``/healthz``)."""
        return self._ready.is_set() and not self._stopped

    async def _check_due(self) -> None:
        while True:
            uids = self.pool.to_check(trio.current_time(), _CHECK_BATCH)
            if not uids:
                return
            results = await trio.to_thread.run_sync(_probe_many, uids, self.first, self.last)
            self.pool.checked(results, trio.current_time())
            for reason in results.values():
                if reason is not None:
                    self.skipped[reason.value] += 1
            self._wake_waiters()

    # --- allocation -------------------------------------------------------------------------

    async def acquire(
        self,
        unit: str,
        invocation: str,
        *,
        user: str | None = None,
        per_connection: bool = False,
        state_owner: int | None = None,
        share: bool = False,
    ) -> Lease:
        """Lease a UID for one invocation of ``unit``.

        Args:
            unit: the unit name (``waldo@3.service``), recorded and shown as the user's realName.
            invocation: the invocation id.
            user: the user name (``User=`` with DynamicUser, or the template's name that the
                connections of an Accept=yes socket share when they share a directory); None
                names it after the unit.
            per_connection: add a short unique suffix to the name (Accept=yes invocations).
            state_owner: the UID owning the service's state directory, preferred when free.
            share: hold the live lease of the same unit (or, with ``user``, of the same
                ``User=``) too, as systemd's units that name one dynamic user share its UID,
                instead of taking a new UID under a suffixed name; the UID is released when its
                last holder releases it. Only leases made with ``share`` are shared: a name
                that meets another unit's (``foo-bar@baz``, ``foo@bar-baz``) gets a suffix.

        Raises:
            PoolExhausted: no UID, by the policy.
        """
        if not self._ready.is_set():
            await self._ready.wait()
        key = None
        if share and not per_connection:
            key = f"user:{user}" if user is not None else f"unit:{unit}"
            while (closing := self._closing.get(key)) is not None:
                # Its last holder is tearing it down: wait, then lease the UID afresh.
                await closing.wait()
        started = time.perf_counter()
        deadline = trio.current_time() + self.wait_timeout
        queued: _Waiter | None = None
        try:
            while True:
                # FIFO: a newcomer takes a UID only when no one waits; a UID released while
                # invocations wait is theirs, even before the woken one runs.
                if key is not None and (held := self._shared.get(key)) is not None:
                    self._holders[held] = self._holders.get(held, 1) + 1
                    self.allocations["shared"] += 1
                    return self.pool.leased[held]
                if queued is not None or self._live_waiters == 0:
                    lease = self._try_acquire(unit, invocation, user, per_connection, state_owner)
                    if lease is not None:
                        if key is not None:
                            self._shared[key] = lease.uid
                            self._share_keys[lease.uid] = key
                        seconds = time.perf_counter() - started
                        self.allocations[lease.source.value] += 1
                        if self.on_allocated is not None:
                            self.on_allocated(lease, seconds)
                        return lease
                if self.on_exhausted is OnExhausted.REJECT:
                    self._fail("exhausted", f"every UID of {self.first}-{self.last} is leased")
                if queued is None:
                    if self._live_waiters >= self.max_waiting:
                        self._fail("queue_full", f"{self.max_waiting} invocations already wait")
                    queued = _Waiter()
                    self._waiters.append(queued)
                    self._live_waiters += 1
                    self._wake_waiters()  # UIDs free beyond those ahead of us are ours to try
                elif trio.current_time() >= deadline:
                    seconds = self.wait_timeout
                    self._fail("wait_timeout", f"no UID was released within {seconds:g} s")
                with trio.move_on_at(deadline):
                    await queued.event.wait()
                queued.event = trio.Event()
        finally:
            if queued is not None:
                queued.done = True
                self._live_waiters -= 1
                self._wake_waiters()  # pass a wake-up we may have swallowed to the next waiter

    def _fail(self, reason: str, message: str) -> NoReturn:
        self.failures[reason] += 1
        raise PoolExhausted(reason, message)

    def _try_acquire(
        self,
        unit: str,
        invocation: str,
        user: str | None,
        per_connection: bool,
        state_owner: int | None,
    ) -> Lease | None:
        name = self._unique_name(unit, user, per_connection)
        preferred: list[tuple[int, Source]] = []
        if state_owner is not None and self.first <= state_owner <= self.last:
            preferred.append((state_owner, Source.STATE_DIRECTORY))
        if not per_connection:
            preferred.append((hash_uid(name, self.first, self.last), Source.NAME_HASH))
        while True:
            taken = self.pool.take(preferred)
            if taken is None:
                return None
            uid, source = taken
            try:
                lease = Lease(uid, name, unit, invocation, source, self.clock())
                lock = uidstore.acquire(
                    uid,
                    lease.to_record(),
                    directory=self.lease_directory,
                    systemd_directory=self.systemd_directory,
                )
            except BaseException:
                self.pool.give_back(uid)  # never leased: FREE again, not lost in TAKEN
                raise
            if lock is None:
                now = trio.current_time()
                self.pool.skip(uid, SkipReason.LOCK, now)
                self.skipped[SkipReason.LOCK.value] += 1
                self._wake_checker.set()
                continue
            self._locks[uid] = lock
            self.pool.lease(lease)
            return lease

    def _unique_name(self, unit: str, user: str | None, per_connection: bool) -> str:
        for _ in range(64):
            if user is not None:
                name = user
            else:
                suffix = secrets.token_hex(_SUFFIX_DIGITS // 2) if per_connection else None
                # An Accept=yes connection's instance names the connection, not a customer:
                # its user is named after the template (waldo-3f2a).
                base = _connection_base(unit) if per_connection else unit
                name = user_name(base, suffix=suffix)
            if self.pool.lease_by_user(name) is None:
                return name
            if not per_connection:
                # Two live invocations of one plain service share nothing but the unit: the second
                # gets a suffix, as a per-connection invocation would.
                per_connection = True
                user = None
        self._fail("names", f"no free user name for {unit}")

    def record_cgroup(self, lease: Lease, cgroup: str) -> Lease:
        """Add the invocation's cgroup to the lease file, for crash recovery. A shared lease's
        record names every live holder's cgroup, one per line."""
        names = self._cgroups.setdefault(lease.uid, [])
        names.append(cgroup)
        return self._write_cgroups(lease, names)

    def _write_cgroups(self, lease: Lease, names: list[str]) -> Lease:
        updated = attrs.evolve(lease, cgroup="\n".join(names) or None)
        uidstore.update(self._locks[lease.uid], updated.to_record())
        return updated

    # --- release ----------------------------------------------------------------------------

    async def release(self, lease: Lease, vacated: Vacated) -> None:
        """Give a lease back, once its invocation is proven gone.

        RemoveIPC on the host first (in a worker thread): anything the UID still owns outside
        its IPC namespace is removed; then the lock is dropped and the UID rests for
        ``reuse_delay`` before it is leased again.
        """
        if vacated.uid != lease.uid:
            msg = f"release of UID {lease.uid} with proof for UID {vacated.uid}"
            raise ValueError(msg)
        if lease.uid not in self._releasing and not self.detach(lease):
            return  # a shared lease: its other holders still run
        await self._release(lease)
        self._settle(lease.uid)

    async def _release(self, lease: Lease) -> None:
        # Tens of microseconds (three small /proc reads and a /dev/shm listing): cheaper on the
        # loop than a worker thread's round trip, the last one a connection would make.
        removed = uidstore.remove_ipc(lease.uid)
        if removed:
            logger.info("removed %d IPC objects of UID %d (%s)", removed, lease.uid, lease.user)
        lock = self._locks.pop(lease.uid)
        uidstore.release(lock)
        self._cgroups.pop(lease.uid, None)
        self.pool.release(lease.uid, trio.current_time())
        self._wake_waiters()
        if self.reuse_delay > 0:
            self._wake_checker.set()  # the background loop sleeps until the UID has rested

    def detach(self, lease: Lease, cgroup: str | None = None) -> bool:
        """Leave a lease whose invocation is over (every process of its cgroup, ``cgroup``, is
        gone).

        Returns:
            True for the last holder, which must then finish the teardown (keys, runtime
            directories) and :meth:`release` it, or :meth:`give_up`; no one shares the lease
            from now on (a newcomer waits for the release). False when other holders go on with
            it, or the lease is kept for good: nothing more to do.
        """
        uid = lease.uid
        holders = self._holders.get(uid, 1)
        if cgroup is not None and cgroup in (names := self._cgroups.get(uid, [])):
            names.remove(cgroup)
            # The file is rewritten only for holders that stay: the last holder's record goes
            # with its release (or stays as it is, naming a cgroup now empty, if kept).
            if holders > 1 and uid in self._locks:
                self._write_cgroups(lease, names)
        if holders > 1 or uid in self._broken:
            if holders <= 2:
                self._holders.pop(uid, None)
            else:
                self._holders[uid] = holders - 1
            return False
        key = self._share_keys.pop(uid, None)
        if key is not None:
            del self._shared[key]
            self._closing[key] = trio.Event()
        self._releasing[uid] = key
        return True

    def give_up(self, lease: Lease) -> None:
        """A teardown of the lease failed: it is kept for good (never shared again, never
        released before a restart, which reclaims it); invocations waiting for it lease a UID
        of their own."""
        uid = lease.uid
        self._broken.add(uid)
        key = self._share_keys.pop(uid, None)
        if key is not None:
            del self._shared[key]
        self._settle(uid)

    def _settle(self, uid: int) -> None:
        """The release of ``uid`` by its last holder is over (done, or given up)."""
        if uid in self._releasing:
            key = self._releasing.pop(uid)
            if key is not None:
                self._closing.pop(key).set()

    def holders(self, uid: int) -> int:
        """How many invocations hold the lease of ``uid`` (0 when it is not leased)."""
        return self._holders.get(uid, 1) if uid in self.pool.leased else 0

    def _wake_waiters(self) -> None:
        """Wake as many waiting acquires as UIDs are free, oldest first."""
        while self._waiters and self._waiters[0].done:
            self._waiters.popleft()
        free = self.pool.free_count
        for waiter in self._waiters:
            if free <= 0:
                return
            if not waiter.done:  # one gone from the middle of the queue wakes no one
                waiter.event.set()
                free -= 1

    def close(self) -> None:
        """Drop every lock, removing the lock files (for leases known to be vacated)."""
        for lock in self._locks.values():
            uidstore.release(lock)
        self._locks.clear()

    def abandon(self) -> None:
        """Let go of every lock at exit, keeping the files. Every invocation is over by then,
        so a lease still held is one whose teardown failed: its lock file stays (with its
        record), and the next start reclaims the UID as it would after a crash."""
        for uid, lock in self._locks.items():
            logger.warning("UID %d: its teardown failed; left for the next start to reclaim", uid)
            uidstore.abandon(lock)
        self._locks.clear()

    # --- the userdb table -------------------------------------------------------------------

    def user_by_name(self, name: str) -> UserRecord | None:
        """The live dynamic user of that name."""
        lease = self.pool.lease_by_user(name)
        return None if lease is None else UserRecord(lease.user, lease.uid, lease.unit)

    def user_by_uid(self, uid: int) -> UserRecord | None:
        """The live dynamic user of that UID."""
        lease = self.pool.leased.get(uid)
        return None if lease is None else UserRecord(lease.user, lease.uid, lease.unit)

    def users(self) -> Iterator[UserRecord]:
        """Every live dynamic user."""
        for lease in list(self.pool.leased.values()):
            yield UserRecord(lease.user, lease.uid, lease.unit)

    @property
    def waiting(self) -> int:
        """How many acquires wait for a UID."""
        return self._live_waiters


def _probe_many(uids: Iterable[int], first: int, last: int) -> dict[int, SkipReason | None]:
    """Probe a batch in a worker thread: one bulk scan of the range for a large batch (it costs
    about as much as probing one UID: one walk of /proc), one pass over the batch otherwise."""
    uid_list = list(uids)
    if len(uid_list) > math.isqrt(last - first + 1):
        in_use = uidstore.scan(first, last)
        return {uid: in_use.get(uid) for uid in uid_list}
    return uidstore.probe_many(uid_list)


def _connection_base(unit: str) -> str:
    """``waldo.service`` for ``waldo@3-127.0.0.1:2048-127.0.0.1:5555.service``."""
    prefix, at, _ = unit.partition("@")
    if not at:
        return unit
    return f"{prefix}.{unit.rpartition('.')[2]}"


def new_invocation_id() -> str:
    """A fresh invocation id: 32 lowercase hex digits, as systemd's ``INVOCATION_ID``."""
    return secrets.token_hex(16)
