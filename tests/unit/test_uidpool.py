"""The UID pool's pure core: states, allocation order, crash replay, cost, names and records."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from activator import uidpool
from activator.uidpool import (
    Lease,
    Pool,
    SkipReason,
    Source,
    State,
    hash_uid,
    is_valid_user_name,
    user_name,
)
from activator.units import escape_unit_name_part
from tests.strategies import unit_names

FIRST, LAST = 61184, 65519  # the default pool, as systemd's DynamicUser=


def make_lease(uid: int, user: str | None = None, source: Source = Source.FREE_SET) -> Lease:
    return Lease(
        uid=uid,
        user=user or f"u{uid}",
        unit="echo.socket",
        invocation=f"inv-{uid}",
        source=source,
        started=12.5,
    )


def fill(pool: Pool, now: float = 0.0) -> None:
    """Probe every UNCHECKED UID of the pool and find it free."""
    while batch := pool.to_check(now, 512):
        pool.checked(dict.fromkeys(batch), now)


# ---------------------------------------------------------------------------------------------
# The stateful model: any sequence of probes, allocations, releases, time and crashes


reasons = st.sampled_from(SkipReason)
names = st.sampled_from(["alpha", "bravo", "charlie", "delta"])  # few: duplicates happen


class PoolMachine(RuleBasedStateMachine):
    """The pool against a model that is obviously right: plain dicts and lists, no queues.

    The world around the pool is modelled too: ``elsewhere`` holds the UIDs whose lock another
    process (a second activator) holds. Probes tell the truth about them (LOCK), and a lock
    attempt on one fails, as ``flock`` would; every other probe result is drawn at random.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.first = FIRST
        self.last = FIRST
        self.reuse_delay = 0.0
        self.recheck_after = 0.0
        self.pool = Pool(FIRST, FIRST)
        self.state: dict[int, State] = {}
        self.free: list[int] = []  # FIFO: the order take() hands them out
        self.cooling: list[int] = []  # in the order they were released
        self.due: dict[int, float] = {}
        self.reason: dict[int, SkipReason] = {}
        self.leases: dict[int, Lease] = {}
        self.elsewhere: set[int] = set()
        self.serial = 0

    @initialize(
        size=st.integers(1, 10),
        reuse_delay=st.sampled_from([0.0, 1.0, 5.0]),
        recheck_after=st.sampled_from([0.0, 2.0, 10.0]),
    )
    def start(self, size: int, reuse_delay: float, recheck_after: float) -> None:
        self.last = FIRST + size - 1
        self.reuse_delay, self.recheck_after = reuse_delay, recheck_after
        self.pool = self.new_pool()
        self.state = dict.fromkeys(self.uids, State.UNCHECKED)

    def new_pool(self) -> Pool:
        return Pool(
            self.first, self.last, reuse_delay=self.reuse_delay, recheck_after=self.recheck_after
        )

    @property
    def uids(self) -> range:
        return range(self.first, self.last + 1)

    def in_state(self, state: State) -> list[int]:
        return sorted(uid for uid, s in self.state.items() if s is state)

    # --- the model's transitions ---------------------------------------------------------

    def model_free(self, uid: int) -> None:
        self.model_leave(uid)
        self.state[uid] = State.FREE
        self.free.append(uid)

    def model_busy(self, uid: int, reason: SkipReason) -> None:
        self.model_leave(uid)
        self.state[uid] = State.BUSY
        self.due[uid] = self.now + self.recheck_after
        self.reason[uid] = reason

    def model_leave(self, uid: int) -> None:
        if uid in self.free:
            self.free.remove(uid)
        if uid in self.cooling:
            self.cooling.remove(uid)
        self.due.pop(uid, None)
        self.reason.pop(uid, None)

    # --- rules ---------------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 20.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 20.0]))
    def advance_and_tick(self, dt: float) -> None:
        """The async layer's timer: sleep until about next_due(), then tick."""
        self.now += dt
        self.tick()

    @rule(dt=st.sampled_from([0.5, 3.0]))
    def clock_steps_back(self, dt: float) -> None:
        """A caller's clock may go back; the pool counts it as the newest time it has seen (the
        invariants have shown it ``self.now``)."""
        self.pool.tick(self.now - dt)
        self.model_tick()

    @rule(limit=st.integers(0, 12), data=st.data())
    def check(self, limit: int, data: st.DataObject) -> None:
        batch = self.pool.to_check(self.now, limit)
        unchecked = self.in_state(State.UNCHECKED)
        due = [u for u in self.in_state(State.BUSY) if self.due[u] <= self.now]
        assert len(batch) == len(set(batch)) == min(limit, len(unchecked) + len(due))
        split = sum(uid in unchecked for uid in batch)
        assert set(batch[:split]) <= set(unchecked), "UNCHECKED UIDs come first"
        assert set(batch[split:]) <= set(due), "then the BUSY ones that are due"
        # The caller may also probe UIDs out of turn: a preferred one, a FREE one re-validated.
        extra = data.draw(st.lists(st.sampled_from(list(self.uids)), max_size=3))
        results: dict[int, SkipReason | None] = {}
        for uid in [*batch, *extra]:
            if uid in self.elsewhere:
                results[uid] = SkipReason.LOCK  # the probe tells the truth about locks
            else:
                results[uid] = data.draw(st.one_of(st.none(), reasons), label=f"probe {uid}")
        self.pool.checked(results, self.now)
        for uid, result in results.items():
            state = self.state[uid]
            if state not in (State.UNCHECKED, State.BUSY, State.FREE):
                continue  # taken or leased meanwhile: the result is stale
            if result is not None:
                self.model_busy(uid, result)
            elif state is not State.FREE:
                self.model_free(uid)

    @rule(preferred=st.lists(st.integers(FIRST - 1, FIRST + 11), max_size=3))
    def take(self, preferred: list[int]) -> None:
        self.do_take(preferred)

    @rule(preferred=st.lists(st.integers(FIRST - 1, FIRST + 11), max_size=2), name=names)
    def allocate(self, preferred: list[int], name: str) -> None:
        """The whole allocation path in one step: take, lock, lease (or skip)."""
        got = self.do_take(preferred)
        if got is not None:
            self.do_lock_and_lease(got, name)

    def do_take(self, preferred: list[int]) -> int | None:
        sources = [Source.STATE_DIRECTORY, Source.NAME_HASH, Source.NAME_HASH]
        offered = list(zip(preferred, sources, strict=False))
        got = self.pool.take(offered)
        wanted = [(u, s) for u, s in offered if self.state.get(u) is State.FREE]
        if wanted:
            expected: tuple[int, Source] | None = wanted[0]  # preferred UIDs are honoured
        elif self.free:
            expected = (self.free[0], Source.FREE_SET)  # else the oldest FREE one (FIFO)
        else:
            expected = None
        assert got == expected
        if got is None:
            return None
        self.model_leave(got[0])
        self.state[got[0]] = State.TAKEN
        return got[0]

    @precondition(lambda self: State.TAKEN in self.state.values())
    @rule(data=st.data(), name=names)
    def lock_and_lease(self, data: st.DataObject, name: str) -> None:
        self.do_lock_and_lease(data.draw(st.sampled_from(self.in_state(State.TAKEN))), name)

    def do_lock_and_lease(self, uid: int, name: str) -> None:
        if uid in self.elsewhere:  # flock fails: someone else holds the UID
            self.pool.skip(uid, SkipReason.LOCK, self.now)
            self.model_busy(uid, SkipReason.LOCK)
            return
        self.serial += 1
        lease = Lease(
            uid=uid,
            user=name,
            unit=f"{name}.service",
            invocation=str(self.serial),
            source=Source.FREE_SET,
            started=self.now,
        )
        if any(held.user == name for held in self.leases.values()):
            with pytest.raises(ValueError, match="is leased to UID"):
                self.pool.lease(lease)
            return
        self.pool.lease(lease)
        self.state[uid] = State.LEASED
        self.leases[uid] = lease

    @precondition(lambda self: State.TAKEN in self.state.values())
    @rule(data=st.data(), reason=reasons)
    def last_moment_probe_fails(self, data: st.DataObject, reason: SkipReason) -> None:
        uid = data.draw(st.sampled_from(self.in_state(State.TAKEN)))
        self.pool.skip(uid, reason, self.now)
        self.model_busy(uid, reason)

    @precondition(lambda self: State.TAKEN in self.state.values())
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        self.do_give_back(data.draw(st.sampled_from(self.in_state(State.TAKEN))))

    def do_give_back(self, uid: int) -> None:
        self.pool.give_back(uid)
        self.model_free(uid)

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self.do_release(data.draw(st.sampled_from(sorted(self.leases))))

    def do_release(self, uid: int) -> None:
        assert self.pool.release(uid, self.now) == self.leases.pop(uid)
        if self.reuse_delay == 0:
            self.model_free(uid)
        else:
            self.state[uid] = State.COOLING
            self.due[uid] = self.now + self.reuse_delay
            self.cooling.append(uid)

    @rule()
    def tick(self) -> None:
        self.pool.tick(self.now)
        self.model_tick()

    def model_tick(self) -> None:
        for uid in list(self.cooling):
            if self.due[uid] > self.now:
                break
            self.model_free(uid)

    @rule(uid=st.integers(FIRST, FIRST + 9))
    def another_activator_locks(self, uid: int) -> None:
        if uid in self.state and self.state[uid] is not State.LEASED:  # we hold LEASED ones
            self.elsewhere.add(uid)

    @precondition(lambda self: bool(self.elsewhere))
    @rule(data=st.data())
    def another_activator_unlocks(self, data: st.DataObject) -> None:
        self.elsewhere.discard(data.draw(st.sampled_from(sorted(self.elsewhere))))

    @rule(data=st.data())
    def crash_and_restart(self, data: st.DataObject) -> None:
        """kill -9: our locks go with us; the new pool learns what the lock registry says."""
        ours = sorted(self.leases)
        # A lease of ours whose lock some other process now holds (taken over, or inherited):
        # the restart must treat it as someone else's.
        taken_over = data.draw(st.sets(st.sampled_from(ours))) if ours else set()
        self.elsewhere |= taken_over
        reclaimed = [uid for uid in ours if uid not in taken_over]
        # The registry may hold leases of an older, wider range: they are ignored.
        old_range = st.lists(st.sampled_from([FIRST - 5, FIRST + 100]), max_size=2)
        self.pool = self.new_pool()
        self.pool.replay(
            [*self.elsewhere, *data.draw(old_range)], [*reclaimed, *data.draw(old_range)], self.now
        )
        self.state = dict.fromkeys(self.uids, State.UNCHECKED)
        self.free, self.cooling, self.due, self.reason, self.leases = [], [], {}, {}, {}
        for uid in self.elsewhere:
            self.model_busy(uid, SkipReason.LOCK)

    @rule()
    def drain(self) -> None:
        """None is lost: release everything, wait out every delay, probe: every UID is FREE."""
        self.elsewhere.clear()
        for uid in self.in_state(State.TAKEN):
            self.do_give_back(uid)
        for uid in sorted(self.leases):
            self.do_release(uid)
        self.now += max(self.reuse_delay, self.recheck_after) + 1
        self.tick()
        while batch := self.pool.to_check(self.now, 3):
            self.pool.checked(dict.fromkeys(batch), self.now)
            for uid in batch:
                self.model_free(uid)
        assert self.pool.counts() == {s.value: self.pool.size * (s is State.FREE) for s in State}
        assert sorted(self.pool.free_uids()) == list(self.uids)

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def every_uid_is_in_exactly_one_state(self) -> None:
        counts = self.pool.counts()
        assert sum(counts.values()) == self.pool.size
        assert counts == {s.value: len(self.in_state(s)) for s in State}
        assert {uid: self.pool.state(uid) for uid in self.uids} == self.state

    @invariant()
    def the_free_set_is_in_fifo_order(self) -> None:
        assert self.pool.free_uids() == self.free
        assert self.pool.free_count == len(self.free)

    @invariant()
    def no_uid_is_leased_twice(self) -> None:
        assert dict(self.pool.leased) == self.leases
        assert not set(self.pool.leased) & self.elsewhere, "ours and another process's at once"
        users = [lease.user for lease in self.pool.leased.values()]
        assert len(users) == len(set(users))
        for uid, lease in self.leases.items():
            assert self.pool.lease_by_user(lease.user) == lease
            assert self.pool.lease_by_uid(uid) == lease

    @invariant()
    def busy_reasons_and_due_times_are_kept(self) -> None:
        expected = {r.value: sum(x is r for x in self.reason.values()) for r in SkipReason}
        assert self.pool.busy_counts() == expected
        assert self.pool.next_due(self.now) == min(self.due.values(), default=None)


TestPoolMachine = PoolMachine.TestCase


# ---------------------------------------------------------------------------------------------
# Examples of the rules


def test_preferred_uids_are_honoured_only_when_free() -> None:
    pool = Pool(1000, 1009)
    pool.checked({1003: None, 1005: None, 1001: SkipReason.NSS}, 0)
    # 1001 is BUSY, 1007 UNCHECKED, 2000 out of range: passed over.
    preferred = [(1001, Source.STATE_DIRECTORY), (1007, Source.NAME_HASH), (2000, Source.NAME_HASH)]
    assert pool.take([*preferred, (1005, Source.NAME_HASH)]) == (1005, Source.NAME_HASH)
    assert pool.take(preferred) == (1003, Source.FREE_SET)
    assert pool.take(preferred) is None


def test_a_released_uid_is_reused_last() -> None:
    pool = Pool(1000, 1002)
    fill(pool)
    uid, _ = pool.take() or (0, None)
    pool.lease(make_lease(uid))
    pool.release(uid, 1.0)
    assert pool.free_uids() == [1001, 1002, 1000]


def test_the_reuse_delay_keeps_a_released_uid_cooling() -> None:
    pool = Pool(1000, 1000, reuse_delay=5)
    fill(pool)
    assert pool.take() == (1000, Source.FREE_SET)
    pool.lease(make_lease(1000))
    pool.release(1000, now=10)
    assert pool.state(1000) is State.COOLING
    assert pool.next_due(10) == 15
    pool.tick(14.9)
    assert pool.take() is None
    pool.tick(15)
    assert pool.take() == (1000, Source.FREE_SET)


def test_busy_uids_are_probed_again_when_due() -> None:
    pool = Pool(1000, 1001, recheck_after=10)
    pool.checked({1000: SkipReason.PROCESS, 1001: None}, now=0)
    assert pool.busy_counts()["process"] == 1
    assert pool.to_check(9, 5) == []
    assert pool.next_due(9) == 10
    assert pool.to_check(10, 5) == [1000]
    pool.checked({1000: None}, now=10)
    assert pool.free_uids() == [1001, 1000]
    assert pool.next_due(10) is None


def test_a_probe_result_for_a_leased_uid_is_ignored() -> None:
    pool = Pool(1000, 1001)
    batch = pool.to_check(0, 10)
    pool.checked({1000: None}, 0)
    pool.take()
    pool.lease(make_lease(1000))
    pool.checked(dict.fromkeys(batch, SkipReason.PROCESS), 0)  # our own handler, seen late
    assert pool.state(1000) is State.LEASED
    assert pool.state(1001) is State.BUSY


def test_replay_marks_foreign_locks_busy_and_reclaimed_uids_unchecked_first() -> None:
    pool = Pool(1000, 1009)
    pool.replay(leased_elsewhere=[1004, 7], reclaimed=[1008, 1002, 99999], now=0)
    assert pool.state(1004) is State.BUSY
    assert pool.busy_counts()["lock"] == 1
    assert pool.to_check(0, 4) == [1008, 1002, 1000, 1001]
    assert pool.counts()["unchecked"] == 9


def test_replay_takes_known_uids_out_of_the_free_set_and_cooling() -> None:
    pool = Pool(1000, 1003, reuse_delay=5)
    fill(pool)
    pool.take([(1003, Source.NAME_HASH)])
    pool.lease(make_lease(1003))
    pool.release(1003, 0)
    pool.replay(leased_elsewhere=[1001], reclaimed=[1000, 1003], now=1)
    assert [pool.state(uid) for uid in range(1000, 1004)] == [
        State.UNCHECKED,
        State.BUSY,
        State.FREE,
        State.UNCHECKED,
    ]
    assert pool.free_uids() == [1002]
    assert pool.next_due(1) == 11  # the BUSY one; nothing is COOLING any more
    assert pool.to_check(1, 5) == [1000, 1003]


def test_misuse_is_refused_with_the_uid_named() -> None:
    pool = Pool(1000, 1001)
    fill(pool)
    with pytest.raises(ValueError, match="lease of UID 1000: must be taken first"):
        pool.lease(make_lease(1000))
    with pytest.raises(ValueError, match="release UID 1000: must be leased"):
        pool.release(1000, 0)
    with pytest.raises(ValueError, match=r"UID 999 is not in the pool 1000\.\.1001"):
        pool.skip(999, SkipReason.LOCK, 0)
    with pytest.raises(ValueError, match="not in the pool"):
        pool.checked({2000: None}, 0)
    pool.take()
    pool.lease(make_lease(1000, "same"))
    pool.take()
    with pytest.raises(ValueError, match="user name 'same' is leased to UID 1000"):
        pool.lease(make_lease(1001, "same"))
    with pytest.raises(ValueError, match="UID 1000 is leased by this process"):
        pool.replay([1000], [], 0)
    with pytest.raises(ValueError, match="UID range"):
        Pool(0, 10)
    with pytest.raises(ValueError, match="reuse_delay must be"):
        Pool(1000, 1001, reuse_delay=math.inf)


def test_a_huge_range_costs_nothing_until_probed() -> None:
    pool = Pool(1000, uidpool.UID_MAX)
    assert pool.counts()["unchecked"] == pool.size
    assert pool.to_check(0, 3) == [1000, 1001, 1002]
    pool.checked({hash_uid("waldo", pool.first, pool.last): None}, 0)
    assert pool.free_count == 1


# ---------------------------------------------------------------------------------------------
# Cost: O(1) amortized at any occupancy (counted work, never timed)


def test_take_lease_release_cost_is_constant_near_full_occupancy() -> None:
    pool = Pool(FIRST, LAST)
    fill(pool)
    for _ in range(pool.size - 1):
        taken = pool.take()
        assert taken is not None
        pool.lease(make_lease(taken[0]))
    assert pool.free_count == 1
    before, cycles = pool.steps, 20_000
    for _ in range(cycles):
        taken = pool.take()
        assert taken is not None
        pool.lease(make_lease(taken[0]))
        pool.release(taken[0], 0)
    # One entry popped per take, plus the amortized trims of the consumed list front.
    assert (pool.steps - before) / cycles <= 3


def test_preferred_takes_from_the_middle_leave_bounded_stale_work() -> None:
    """Every preferred take leaves a stale entry in the free queue; compaction keeps both the
    work per call and the queue's length bounded."""
    pool = Pool(FIRST, LAST)
    fill(pool)
    before, cycles = pool.steps, 20_000
    for i in range(cycles):
        uid = hash_uid(f"user{i}", FIRST, LAST)
        taken = pool.take([(uid, Source.NAME_HASH)])
        assert taken is not None
        pool.lease(make_lease(taken[0]))
        pool.release(taken[0], 0)
    assert (pool.steps - before) / cycles <= 4
    queue = pool._queues[State.FREE]  # the private queue: its length is the memory bound
    assert len(queue.items) <= 2 * pool.size + 2 * 64


def test_learning_that_nothing_is_free_costs_nothing() -> None:
    pool = Pool(FIRST, LAST)
    fill(pool)
    while (taken := pool.take()) is not None:
        pool.lease(make_lease(taken[0]))
    before = pool.steps
    for _ in range(10_000):
        assert pool.take([(FIRST, Source.STATE_DIRECTORY)]) is None
    assert pool.steps == before


# ---------------------------------------------------------------------------------------------
# Names and hashes


@pytest.mark.parametrize(
    ("unit", "suffix", "expected"),
    [
        ("dynamic-user-test.service", None, "dynamic-user-test"),
        ("foobar@customerxyz.service", None, "foobar-customerxyz"),
        ("waldo.service", "3f2a", "waldo-3f2a"),
        ("foobar@customerxyz.service", "3f2a", "foobar-customerxyz-3f2a"),
        ("echo.socket", None, "echo"),
        ("a23456789012345678901234567890b.service", None, "a23456789012345678901234567890b"),
        # Hashed: the first 8 hex digits of sha256 of the unit name without its type, pinned,
        # so that a change of the rule (which would move users and their UIDs) fails here.
        ("foo@1.2.3.4.socket", None, "foo-1_2_3_4-fbe3449a"),
        ("foo@1.2.3.4.service", None, "foo-1_2_3_4-fbe3449a"),
        ("foo@a\\x2db.service", None, "foo-a-b-fe8e6dd8"),
        ("4chan.service", None, "_4chan-e6cfc20a"),
        ("a" * 32 + ".service", None, "aaaaaaaaaaaaaaaaaaaaaa-3ba3f5f4"),
    ],
)
def test_user_names(unit: str, suffix: str | None, expected: str) -> None:
    assert user_name(unit, suffix=suffix) == expected


def test_user_name_refuses_templates_bad_units_and_bad_suffixes() -> None:
    with pytest.raises(ValueError, match="is a template"):
        user_name("foo@.service")
    with pytest.raises(ValueError, match=r"must end in \.service"):
        user_name("foo")
    with pytest.raises(ValueError, match="suffix must be"):
        user_name("foo.service", suffix="a.b")
    with pytest.raises(ValueError, match="suffix must be"):
        user_name("foo.service", suffix="")


@given(
    unit=unit_names("service").filter(lambda n: not n.is_template),
    suffix=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{4,8}", fullmatch=True)),
)
def test_user_names_are_always_valid_and_stable(unit: object, suffix: str | None) -> None:
    name = user_name(str(unit), suffix=suffix)
    note(name)
    assert is_valid_user_name(name)
    assert len(name) <= uidpool.USER_NAME_MAX
    assert user_name(str(unit), suffix=suffix) == name


@given(
    prefix=st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
    instances=st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=2, unique=True),
)
def test_distinct_instances_get_distinct_names(prefix: str, instances: list[str]) -> None:
    # Any text becomes an instance through systemd-escape, as `systemctl start foo@$(...)` does
    # (12 characters of 4 UTF-8 bytes escape to 192 characters: within the 255 of a unit name).
    units = [f"{prefix}@{escape_unit_name_part(i)}.service" for i in instances]
    if units[0] != units[1]:  # escaping "/" and "-" alike can merge two texts into one unit
        assert user_name(units[0]) != user_name(units[1])


@given(suffixes=st.lists(st.from_regex(r"[0-9a-f]{4}", fullmatch=True), min_size=2, max_size=2))
def test_distinct_suffixes_get_distinct_names_even_when_hashed(suffixes: list[str]) -> None:
    long_unit = "a-very-long-service-name-indeed.service"  # 31 characters: no room for a suffix
    names = [user_name(long_unit, suffix=s) for s in suffixes]
    assert (names[0] == names[1]) == (suffixes[0] == suffixes[1])


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("_", True),
        ("foo-bar_1", True),
        ("A" * 31, True),
        ("A" * 32, False),
        ("", False),
        ("1abc", False),
        ("-abc", False),
        ("a.b", False),
        ("a@b", False),
        ("caf\u00e9", False),
        ("abc\n", False),
    ],
)
def test_is_valid_user_name(name: str, valid: bool) -> None:
    assert is_valid_user_name(name) is valid


def test_hash_uid_is_the_documented_sha256_rule() -> None:
    # sha256("waldo")[:8] as a big-endian number, modulo the pool size: pinned across releases.
    assert hash_uid("waldo", FIRST, LAST) == 64285
    assert hash_uid("waldo", 5000, 5000) == 5000
    with pytest.raises(ValueError, match="first <= last"):
        hash_uid("waldo", 10, 9)


@given(name=st.text(), first=st.integers(1, 2**31 - 2), span=st.integers(0, 10**6))
def test_hash_uid_is_in_range(name: str, first: int, span: int) -> None:
    assert first <= hash_uid(name, first, first + span) <= first + span


# ---------------------------------------------------------------------------------------------
# Lease records


leases = st.builds(
    Lease,
    uid=st.integers(uidpool.UID_MIN, uidpool.UID_MAX),
    user=st.from_regex(r"[a-z_][a-z0-9_-]{0,30}", fullmatch=True),
    unit=st.text(min_size=1).filter(lambda s: "\0" not in s),
    invocation=st.text(min_size=1).filter(lambda s: "\0" not in s),
    source=st.sampled_from(Source),
    started=st.floats(allow_nan=False, allow_infinity=False),
    cgroup=st.one_of(st.none(), st.text(min_size=1).filter(lambda s: "\0" not in s)),
)


@given(lease=leases)
def test_lease_records_round_trip_through_json(lease: Lease) -> None:
    record = json.loads(json.dumps(lease.to_record()))
    assert record["version"] == 1
    assert record["gid"] == record["uid"] == lease.gid
    assert Lease.from_record(record) == lease


def _record(**changes: object) -> dict[str, object]:
    record = make_lease(61200).to_record()
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        (_record(version=2), "version must be 1"),
        (_record(version=True), "version must be 1"),
        (_record(uid=_DROP), "lacks 'uid'"),
        (_record(extra=1), "unknown key 'extra'"),
        (_record(gid=61201), "gid must equal uid"),
        (_record(uid=0, gid=0), "uid must be an integer 1..2147483646"),
        (_record(uid=True, gid=1), "uid must be an integer"),
        (_record(uid="61200", gid="61200"), "gid must equal uid"),
        (_record(user="no.dots"), "user must be a valid user name"),
        (_record(unit=""), "unit must be non-empty"),
        (_record(source="random"), "source must be one of"),
        (_record(started=10**400), "started must be a finite number"),
        (_record(started="now"), "started must be a finite number"),
        (_record(cgroup=5), "cgroup must be None or"),
    ],
)
def test_bad_lease_records_are_refused_with_the_key_named(record: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Lease.from_record(record)
