"""LeaseService for real, in-process: real locks shared with real child processes, real static
users and groups, real SysV and POSIX IPC objects, real processes running as a pool UID.

UIDs 65400-65439 are this file's block: 65400-65407 for the small pools, 65408-65439 for the
race between two processes. Lock files live under tmp_path; systemd's lock directory is a path
that does not exist (so /run/systemd/dynamic-uid is never touched).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import pytest
import trio
import trio.testing

from activator.leases import LeaseService, PoolExhausted, Vacated
from activator.settings import OnExhausted
from activator.uidpool import Lease, Source, hash_uid, user_name
from activator.userdb import UserRecord
from tests.host import run, static_group, static_user

REPO = Path(__file__).resolve().parents[2]
SMALL = range(65400, 65408)
RACE = range(65408, 65440)
DEADLINE = 10.0

root = pytest.mark.root


# --- helpers ------------------------------------------------------------------------------------


def make(tmp_path: Path, uids: range, **options: object) -> LeaseService:
    """A lease service over ``uids`` with its lock files under ``tmp_path``."""
    return LeaseService(
        uids[0],
        uids[-1],
        lease_directory=str(tmp_path / "uid"),
        systemd_directory=str(tmp_path / "no-systemd"),
        **options,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def serving(leases: LeaseService) -> AsyncIterator[LeaseService]:
    """Run the service's background checker (its first full scan done) for the block."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(leases.run)
            yield leases
            nursery.cancel_scope.cancel()
    finally:
        leases.close()


async def acquire_all(leases: LeaseService, unit: str = "filler.service") -> list[Lease]:
    """Lease per-connection UIDs until the pool says it is exhausted (reject policy)."""
    got: list[Lease] = []
    while True:
        try:
            got.append(await leases.acquire(unit, f"inv-{len(got)}", per_connection=True))
        except PoolExhausted as error:
            reason = error.reason
            break
    assert reason == "exhausted"
    return got


async def give_back(leases: LeaseService, lease: Lease) -> None:
    await leases.release(lease, Vacated(lease.uid, "cgroup"))


def unit_hashing(uids: range, wanted: Callable[[int], bool], stem: str = "unit") -> str:
    """A unit name (``stem-N.service``) whose user name hashes to a UID ``wanted`` accepts."""
    for number in range(10_000):
        unit = f"{stem}-{number}.service"
        if wanted(hash_uid(user_name(unit), uids[0], uids[-1])):
            return unit
    pytest.fail("no unit name hashes as wanted")


def lock_files(tmp_path: Path) -> set[int]:
    directory = tmp_path / "uid"
    return {int(name) for name in os.listdir(directory)} if directory.exists() else set()


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_BYPASS_USERDB"}
    env["PYTHONPATH"] = str(REPO)
    return env


def read_line(proc: subprocess.Popen[str], timeout: float = DEADLINE) -> str:
    """One line of a child's stdout within a deadline (a stuck child fails the test)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"child {proc.pid} said nothing within {timeout} s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            break
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"child {proc.pid} exited early: {proc.wait()}")
    return line.strip()


@contextlib.contextmanager
def child(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A child with pipes; killed by its PID and reaped when the block ends."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO
    )
    with proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def python_child(code: str, *args: str) -> ContextManager[subprocess.Popen[str]]:
    return child([sys.executable, "-c", textwrap.dedent(code), *args])


def say(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


#: A second activator process: a LeaseService of its own on the same lock directory. It scans,
#: says "ready", waits for "go", leases up to COUNT UIDs (0: as many as it can) of UNIT with a
#: cgroup recorded for each, prints them with its skip counters as JSON, and holds them until
#: its stdin closes (then releases them) or it is killed.
ACTIVATOR = """
import json, sys, trio
from activator.leases import LeaseService, PoolExhausted, Vacated
first, last, directory, systemd, count, unit = sys.argv[1:]
count = int(count)

async def main():
    leases = LeaseService(int(first), int(last), lease_directory=directory,
                          systemd_directory=systemd)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        got = []
        while count == 0 or len(got) < count:
            try:
                lease = await leases.acquire(unit, f"child-{len(got)}", per_connection=True)
            except PoolExhausted:
                break
            got.append(leases.record_cgroup(lease, f"/test/cgroup/{lease.uid}"))
        print(json.dumps({"uids": [lease.uid for lease in got],
                          "skipped": dict(leases.skipped)}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        for lease in got:
            await leases.release(lease, Vacated(lease.uid, "cgroup"))
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def other_activator(
    tmp_path: Path, uids: range, count: int, unit: str = "other.service"
) -> ContextManager[subprocess.Popen[str]]:
    return python_child(
        ACTIVATOR,
        str(uids[0]),
        str(uids[-1]),
        str(tmp_path / "uid"),
        str(tmp_path / "no-systemd"),
        str(count),
        unit,
    )


def leased_by(proc: subprocess.Popen[str]) -> dict[str, object]:
    """Let a ready ACTIVATOR child go and read what it leased."""
    assert read_line(proc) == "ready"
    say(proc, "go")
    result: dict[str, object] = json.loads(read_line(proc))
    return result


#: Holds one UID's lock through uidstore, as another activator would, until killed.
HOLD_LOCK = """
import sys
from activator import uidstore
lock = uidstore.acquire(int(sys.argv[1]), {"held": "by a test"}, directory=sys.argv[2],
                        systemd_directory=sys.argv[3])
print("held" if lock is not None else "busy", flush=True)
sys.stdin.read()
if lock is not None:
    uidstore.release(lock)
"""


@contextlib.contextmanager
def lock_held_elsewhere(tmp_path: Path, uid: int) -> Iterator[None]:
    """Another process holds ``uid``'s lock until the block ends (then it releases it)."""
    args = (str(uid), str(tmp_path / "uid"), str(tmp_path / "no-systemd"))
    with python_child(HOLD_LOCK, *args) as proc:
        assert read_line(proc) == "held"
        yield
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(DEADLINE) == 0


@contextlib.contextmanager
def sysv_queue(uid: int) -> Iterator[int]:
    """A SysV message queue made by ``uid`` (ipcmk run as that UID); removed after."""
    out = run("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "ipcmk", "-Q")
    ipc_id = int(out.split(":")[-1])
    try:
        yield ipc_id
    finally:
        subprocess.run(["ipcrm", "-q", str(ipc_id)], capture_output=True, check=False)


@contextlib.contextmanager
def posix_shm(uid: int) -> Iterator[Path]:
    """A POSIX shared memory object (a file in /dev/shm) owned by ``uid``; removed after."""
    path = Path(f"/dev/shm/t3lease-{uid}-{os.getpid()}")
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    try:
        os.chown(path, uid, uid)
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def process_as(uid: int) -> Iterator[int]:
    """A process running as ``uid`` (setpriv, then sleep) until the block ends; its PID."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    with child([*argv, "sh", "-c", "echo ready; exec sleep 1000"]) as proc:
        assert read_line(proc) == "ready"
        yield proc.pid


# --- allocation order ---------------------------------------------------------------------------


@root
async def test_acquire_prefers_state_owner_then_name_hash_then_the_free_set(
    tmp_path: Path,
) -> None:
    leases = make(tmp_path, SMALL)
    first, last = SMALL[0], SMALL[-1]
    async with serving(leases):
        # (1) The owner of the state directory, when it is in the pool and free.
        owner = await leases.acquire("keeper.service", "i1", state_owner=65405)
        assert (owner.uid, owner.source, owner.user) == (65405, Source.STATE_DIRECTORY, "keeper")

        # (2) Else the hash of the user name: also when the state owner is leased or outside.
        unit = unit_hashing(SMALL, lambda uid: uid != 65405, "hashed")
        by_hash = await leases.acquire(unit, "i2", state_owner=65405)
        assert by_hash.uid == hash_uid(user_name(unit), first, last)
        assert by_hash.source is Source.NAME_HASH
        unit = unit_hashing(SMALL, lambda uid: uid not in {65405, by_hash.uid}, "outside")
        outside = await leases.acquire(unit, "i3", state_owner=1000)
        assert (outside.uid, outside.source) == (
            hash_uid(user_name(unit), first, last),
            Source.NAME_HASH,
        )

        # (3) Else any free UID: the hashed UID is taken already.
        unit = unit_hashing(SMALL, lambda uid: uid == by_hash.uid, "collides")
        fallback = await leases.acquire(unit, "i4")
        assert fallback.source is Source.FREE_SET
        assert fallback.uid not in {owner.uid, by_hash.uid, outside.uid}

        # Per-connection names get a unique suffix, and never a hashed UID.
        waldos = [
            await leases.acquire("waldo.service", f"c{n}", per_connection=True) for n in (1, 2)
        ]
        assert all(re.fullmatch(r"waldo-[0-9a-f]{4}", lease.user) for lease in waldos)
        assert all(lease.source is Source.FREE_SET for lease in waldos)
        assert waldos[0].user != waldos[1].user

        # A template instance is its own user.
        instance = await leases.acquire("foobar@customerxyz.service", "i5")
        assert instance.user == "foobar-customerxyz"

        everything = [owner, by_hash, outside, fallback, *waldos, instance]
        assert len({lease.uid for lease in everything}) == len(everything)
        assert len({lease.user for lease in everything}) == len(everything)
        sources = collections.Counter(lease.source.value for lease in everything)
        assert leases.allocations == sources
        assert lock_files(tmp_path) == {lease.uid for lease in everything}
        for lease in everything:
            record = json.loads((tmp_path / "uid" / str(lease.uid)).read_text())
            assert Lease.from_record(record) == lease
    assert lock_files(tmp_path) == set()  # close() gave every lock up


@root
async def test_the_same_unit_twice_at_once_gets_two_names_and_two_uids(tmp_path: Path) -> None:
    leases = make(tmp_path, SMALL)
    async with serving(leases):
        one = await leases.acquire("twice.service", "a")
        two = await leases.acquire("twice.service", "b")
        assert one.user == "twice"
        assert one.uid == hash_uid("twice", SMALL[0], SMALL[-1])
        assert re.fullmatch(r"twice-[0-9a-f]{4}", two.user)
        assert two.uid != one.uid
        # Once the first is gone, the plain name is free again.
        await give_back(leases, one)
        again = await leases.acquire("twice.service", "c")
        assert again.user == "twice"


@root
async def test_a_shared_name_is_one_uid_held_until_its_last_holder_releases_it(
    tmp_path: Path,
) -> None:
    leases = make(tmp_path, SMALL)
    async with serving(leases):
        alice = await leases.acquire("foo@alice.service", "a", share=True)
        again = await leases.acquire("foo@alice.service", "b", share=True)
        bob = await leases.acquire("foo@bob.service", "c", share=True)
        assert (alice.user, again.user, bob.user) == ("foo-alice", "foo-alice", "foo-bob")
        assert again.uid == alice.uid != bob.uid
        assert leases.holders(alice.uid) == 2
        assert leases.allocations["shared"] == 1
        await give_back(leases, alice)
        # Still held by the second invocation: leased, locked, known to userdb.
        assert leases.holders(alice.uid) == 1
        assert leases.user_by_uid(alice.uid) == UserRecord("foo-alice", alice.uid, alice.unit)
        assert lock_files(tmp_path) == {alice.uid, bob.uid}
        await give_back(leases, again)
        assert leases.holders(alice.uid) == 0
        assert leases.user_by_uid(alice.uid) is None
        assert lock_files(tmp_path) == {bob.uid}


@root
async def test_a_user_being_released_is_not_shared_but_leased_afresh_once_released(
    tmp_path: Path,
) -> None:
    leases = make(tmp_path, SMALL)
    async with serving(leases):
        old = await leases.acquire("foo@alice.service", "a", share=True)
        assert leases.detach(old)  # its last holder is tearing it down
        got: list[Lease] = []

        async def newcomer() -> None:
            got.append(await leases.acquire("foo@alice.service", "b", share=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(newcomer)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # it waits for the release instead of joining a dying lease
            await give_back(leases, old)
        assert got[0].invocation == "b"
        assert got[0].uid == old.uid  # the name hash gives the same UID again
        assert leases.holders(old.uid) == 1
        # A teardown that fails keeps the lease for good: the next one gets a user of its own,
        # which later ones share (one replacement, not one UID per connection).
        assert leases.detach(got[0])
        leases.give_up(got[0])
        other = await leases.acquire("foo@alice.service", "c", share=True)
        assert other.uid != old.uid
        assert re.fullmatch(r"foo-[0-9a-f]{4}", other.user)
        assert (await leases.acquire("foo@alice.service", "d", share=True)).uid == other.uid
        # The kept lease is never released, even when its holder's release is tried.
        await give_back(leases, got[0])
        assert leases.user_by_uid(old.uid) is not None


@root
async def test_only_the_same_unit_shares_a_user_even_when_two_names_meet(tmp_path: Path) -> None:
    leases = make(tmp_path, SMALL)
    async with serving(leases):
        # Different units whose user names meet (as in systemd) never share a UID.
        one = await leases.acquire("shop@api-acme.service", "a", share=True)
        two = await leases.acquire("shop-api@acme.service", "b", share=True)
        assert one.user == "shop-api-acme"
        assert re.fullmatch(r"shop-api-[0-9a-f]{4}", two.user)
        assert one.uid != two.uid
        # Nor does a customer whose name meets a connection's random user name.
        anonymous = await leases.acquire("foo@1-x.service", "c", per_connection=True)
        customer = anonymous.user.removeprefix("foo-")
        mine = await leases.acquire(f"foo@{customer}.service", "d", share=True)
        assert mine.uid != anonymous.uid
        # A shared lease's file names every live holder's cgroup, for crash recovery.
        again = await leases.acquire("shop@api-acme.service", "e", share=True)
        assert again.uid == one.uid
        leases.record_cgroup(one, "shop@api-acme.service/a")
        leases.record_cgroup(again, "shop@api-acme.service/e")
        record = json.loads((tmp_path / "uid" / str(one.uid)).read_text())
        assert record["cgroup"] == "shop@api-acme.service/a\nshop@api-acme.service/e"
        assert not leases.detach(one, "shop@api-acme.service/a")
        record = json.loads((tmp_path / "uid" / str(one.uid)).read_text())
        assert record["cgroup"] == "shop@api-acme.service/e"


@root
async def test_a_lock_that_cannot_be_taken_loses_no_uid(tmp_path: Path) -> None:
    leases = make(tmp_path, SMALL)
    async with serving(leases):
        (tmp_path / "uid").write_text("not a directory")
        with pytest.raises(OSError, match=r"^\[Errno 17\] mkdir .*/uid: File exists$"):
            await leases.acquire("broken.service", "a")
        assert leases.pool.free_count == len(SMALL)
        (tmp_path / "uid").unlink()
        assert len(await acquire_all(leases)) == len(SMALL)


# --- skips --------------------------------------------------------------------------------------


@root
async def test_uids_in_use_or_locked_elsewhere_are_never_leased(tmp_path: Path) -> None:
    user, group, sysv, shm, process, locked = SMALL[:6]
    with (
        static_user(user),
        static_group(group),
        sysv_queue(sysv),
        posix_shm(shm),
        process_as(process),
        lock_held_elsewhere(tmp_path, locked),
    ):
        leases = make(tmp_path, SMALL)
        async with serving(leases):
            got = await acquire_all(leases)
            assert sorted(lease.uid for lease in got) == list(SMALL[6:])
            assert dict(leases.skipped) == {"nss": 2, "ipc": 2, "process": 1, "lock": 1}
            assert leases.pool.busy_counts() == {"nss": 2, "ipc": 2, "process": 1, "lock": 1}
            # Not even a preferred UID is handed out while it is in use.
            for uid in SMALL[:6]:
                with pytest.raises(PoolExhausted):
                    await leases.acquire("pref.service", f"p{uid}", state_owner=uid)
            assert leases.user_by_uid(user) is None
    assert lock_files(tmp_path) == set()


@root
def test_two_activators_at_once_never_lease_the_same_uid(tmp_path: Path) -> None:
    with (
        other_activator(tmp_path, RACE, 0, "racer-a.service") as a,
        other_activator(tmp_path, RACE, 0, "racer-b.service") as b,
    ):
        for proc in (a, b):
            assert read_line(proc) == "ready"
        for proc in (a, b):  # both pick from the same free set, in the same order
            say(proc, "go")
        results = [json.loads(read_line(proc)) for proc in (a, b)]
        got_a, got_b = (set(result["uids"]) for result in results)
        assert got_a.isdisjoint(got_b)
        assert got_a | got_b == set(RACE)
        assert lock_files(tmp_path) == set(RACE)
        for proc in (a, b):
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(DEADLINE) == 0
    assert lock_files(tmp_path) == set()


# --- exhaustion ---------------------------------------------------------------------------------


@root
async def test_reject_fails_at_once(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    leases = make(tmp_path, SMALL[:1])
    async with serving(leases):
        await leases.acquire("one.service", "a")
        started = trio.current_time()
        with pytest.raises(PoolExhausted) as caught:
            await leases.acquire("two.service", "b")
        assert caught.value.reason == "exhausted"
        assert str(caught.value) == "every UID of 65400-65400 is leased"
        assert trio.current_time() == started
        assert dict(leases.failures) == {"exhausted": 1}
        assert leases.waiting == 0


@root
async def test_waiters_get_released_uids_in_fifo_order(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    leases = make(tmp_path, SMALL[:2], on_exhausted=OnExhausted.WAIT, wait_timeout=5.0)
    async with serving(leases):
        held = await acquire_all_waiting(leases, 2)
        got: dict[int, Lease] = {}

        async def wait_for_one(number: int) -> None:
            got[number] = await leases.acquire("waiter.service", f"w{number}", per_connection=True)

        async with trio.open_nursery() as nursery:
            for number in range(3):
                nursery.start_soon(wait_for_one, number)
                await trio.testing.wait_all_tasks_blocked()
            assert leases.waiting == 3
            assert got == {}
            await give_back(leases, held[1])
            await trio.testing.wait_all_tasks_blocked()
            assert list(got) == [0]
            assert got[0].uid == held[1].uid
            await give_back(leases, held[0])
            await trio.testing.wait_all_tasks_blocked()
            assert list(got) == [0, 1]
            assert got[1].uid == held[0].uid
            await give_back(leases, got[0])
            await trio.testing.wait_all_tasks_blocked()
        assert list(got) == [0, 1, 2]
        assert got[2].uid == held[1].uid
        assert leases.waiting == 0
        assert trio.current_time() == 0.0  # no deadline played a part
        assert dict(leases.failures) == {}


async def acquire_all_waiting(leases: LeaseService, count: int) -> list[Lease]:
    return [
        await leases.acquire("holder.service", f"h{n}", per_connection=True) for n in range(count)
    ]


@root
async def test_a_newcomer_never_overtakes_a_waiter(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    leases = make(tmp_path, SMALL[:1], on_exhausted=OnExhausted.WAIT, wait_timeout=5.0)
    async with serving(leases):
        held = await leases.acquire("holder.service", "h")
        for number in range(20):  # the scheduler's order is random: try it many times
            order: list[str] = []

            async def wait_then_pass_on(number: int, order: list[str]) -> None:
                lease = await leases.acquire("waiter.service", f"w{number}")
                order.append("waiter")
                await give_back(leases, lease)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_then_pass_on, number, order)
                await trio.testing.wait_all_tasks_blocked()
                assert leases.waiting == 1
                # The release wakes the waiter; a newcomer arriving before it runs waits behind.
                await give_back(leases, held)
                held = await leases.acquire("newcomer.service", f"n{number}")
                order.append("newcomer")
                if order[0] == "newcomer":
                    nursery.cancel_scope.cancel()  # the waiter would wait for it forever
            assert order == ["waiter", "newcomer"], f"round {number}"
        assert trio.current_time() == 0.0


@root
async def test_a_waiter_gives_up_at_its_deadline(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    leases = make(tmp_path, SMALL[:1], on_exhausted=OnExhausted.WAIT, wait_timeout=3.0)
    async with serving(leases):
        held = await leases.acquire("holder.service", "h")
        outcomes: list[Lease | PoolExhausted] = []

        async def wait_for_one(unit: str) -> None:
            try:
                outcomes.append(await leases.acquire(unit, "w"))
            except PoolExhausted as error:
                outcomes.append(error)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_one, "late.service")
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(2.99)
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == []
            assert leases.waiting == 1
            mock_clock.jump(0.01)
        [late] = outcomes
        assert isinstance(late, PoolExhausted)
        assert late.reason == "wait_timeout"
        assert str(late) == "no UID was released within 3 s"
        assert leases.waiting == 0
        assert dict(leases.failures) == {"wait_timeout": 1}
        # The queue is empty again: the next one waits its turn, and gets the release.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_one, "next.service")
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1.0)
            await give_back(leases, held)
        assert [getattr(x, "uid", x) for x in outcomes[1:]] == [held.uid]


@root
async def test_a_full_wait_queue_rejects_at_once(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    leases = make(
        tmp_path, SMALL[:1], on_exhausted=OnExhausted.WAIT, wait_timeout=5.0, max_waiting=2
    )
    async with serving(leases):
        await leases.acquire("holder.service", "h")
        async with trio.open_nursery() as nursery:
            for number in range(2):
                nursery.start_soon(leases.acquire, "waiter.service", f"w{number}")
            await trio.testing.wait_all_tasks_blocked()
            assert leases.waiting == 2
            with pytest.raises(PoolExhausted) as caught:
                await leases.acquire("third.service", "t")
            assert caught.value.reason == "queue_full"
            assert trio.current_time() == 0.0
            nursery.cancel_scope.cancel()  # the two waiters go away: the queue empties
        assert leases.waiting == 0
        assert dict(leases.failures) == {"queue_full": 1}


# --- release ------------------------------------------------------------------------------------


@root
async def test_release_needs_proof_of_the_same_uid_and_gives_the_uid_back(
    tmp_path: Path,
) -> None:
    leases = make(tmp_path, SMALL[:1])
    async with serving(leases):
        lease = await leases.acquire("proof.service", "a")
        with pytest.raises(ValueError, match="release of UID 65400 with proof for UID 65401"):
            await leases.release(lease, Vacated(65401, "cgroup"))
        assert leases.user_by_uid(lease.uid) is not None
        assert lock_files(tmp_path) == {lease.uid}
        await leases.release(lease, Vacated(lease.uid, "pid namespace and cgroup"))
        assert leases.user_by_uid(lease.uid) is None
        assert lock_files(tmp_path) == set()
        again = await leases.acquire("proof.service", "b")
        assert again.uid == lease.uid


@root
async def test_reuse_delay_keeps_a_released_uid_resting(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    leases = make(tmp_path, SMALL[:2], reuse_delay=2.0)
    async with serving(leases):
        one, two = await acquire_all(leases)
        await give_back(leases, one)
        with pytest.raises(PoolExhausted):
            await leases.acquire("rest.service", "r1", per_connection=True)
        mock_clock.jump(1.5)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(PoolExhausted):
            await leases.acquire("rest.service", "r2", per_connection=True)
        await give_back(leases, two)
        mock_clock.jump(0.5)
        await trio.testing.wait_all_tasks_blocked()
        # The first has rested 2 s, the second 0.5 s: only the first is back.
        back = await leases.acquire("rest.service", "r3", per_connection=True)
        assert back.uid == one.uid
        with pytest.raises(PoolExhausted):
            await leases.acquire("rest.service", "r4", per_connection=True)
        mock_clock.jump(1.5)
        await trio.testing.wait_all_tasks_blocked()
        assert (await leases.acquire("rest.service", "r5", per_connection=True)).uid == two.uid


# --- crash recovery -----------------------------------------------------------------------------


@root
async def test_recover_reclaims_stale_leases_and_leaves_live_ones(tmp_path: Path) -> None:
    with other_activator(tmp_path, SMALL, 1, "alive.service") as alive:
        live = leased_by(alive)["uids"]
        assert isinstance(live, list)
        with other_activator(tmp_path, SMALL, 2, "crashed.service") as crashed:
            dead = leased_by(crashed)["uids"]
            assert isinstance(dead, list)
            os.kill(crashed.pid, signal.SIGKILL)
            crashed.wait()
        assert len(live) == 1
        assert len(dead) == 2
        assert lock_files(tmp_path) == {*live, *dead}  # the crash left its lock files

        records: list[dict[str, object] | None] = []
        leases = make(tmp_path, SMALL, reclaim=records.append)
        found = await trio.to_thread.run_sync(leases.recover, trio.current_time())
        assert sorted(lease.uid for lease in found if lease is not None) == sorted(dead)
        assert all(lease is not None and lease.unit == "crashed.service" for lease in found)
        assert sorted((r["uid"], r["cgroup"]) for r in records if r is not None) == [
            (uid, f"/test/cgroup/{uid}") for uid in sorted(dead)
        ]
        assert len(records) == 2
        assert lock_files(tmp_path) == set(live)  # reclaimed: released; the live one stays

        async with serving(leases):
            got = await acquire_all(leases)
            assert sorted(lease.uid for lease in got) == sorted(set(SMALL) - set(live))
            assert leases.pool.busy_counts()["lock"] == 1
            assert leases.user_by_uid(live[0]) is None
    assert lock_files(tmp_path) == set(live)


@root
def test_recover_of_a_directory_without_leftovers_reclaims_nothing(tmp_path: Path) -> None:
    called: list[object] = []
    leases = make(tmp_path, SMALL, reclaim=called.append)
    assert leases.recover(0.0) == []
    assert called == []


# --- the userdb table ---------------------------------------------------------------------------


@root
async def test_the_user_table_holds_live_leases_only(tmp_path: Path) -> None:
    leases = make(tmp_path, SMALL)
    async with serving(leases):
        assert list(leases.users()) == []
        web = await leases.acquire("web.service", "a")
        conn = await leases.acquire("echo.socket", "b", per_connection=True)
        web_record = UserRecord("web", web.uid, "web.service")
        conn_record = UserRecord(conn.user, conn.uid, "echo.socket")
        assert leases.user_by_name("web") == web_record
        assert leases.user_by_uid(web.uid) == web_record
        assert leases.user_by_uid(conn.uid) == conn_record
        assert sorted(leases.users(), key=lambda r: r.uid) == sorted(
            [web_record, conn_record], key=lambda r: r.uid
        )
        free = next(uid for uid in SMALL if uid not in {web.uid, conn.uid})
        assert leases.user_by_uid(free) is None
        assert leases.user_by_name("nobody-here") is None
        await give_back(leases, web)
        assert leases.user_by_name("web") is None
        assert leases.user_by_uid(web.uid) is None
        assert list(leases.users()) == [conn_record]


async def test_abandoned_leases_are_reclaimed_by_the_next_start_as_after_a_crash(
    tmp_path: Path,
) -> None:
    first = make(tmp_path, SMALL)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        kept = await first.acquire("kept.service", "k1")
        first.record_cgroup(kept, "kept.service/k1")
        nursery.cancel_scope.cancel()
    first.abandon()  # at exit: its teardown failed, so it was never released
    assert lock_files(tmp_path) == {kept.uid}  # the file and its record stay

    records: list[dict[str, object] | None] = []
    second = make(tmp_path, SMALL, reclaim=records.append)
    found = await trio.to_thread.run_sync(second.recover, trio.current_time())
    assert [lease.uid for lease in found if lease is not None] == [kept.uid]
    assert [(r["uid"], r["cgroup"]) for r in records if r is not None] == [
        (kept.uid, "kept.service/k1")
    ]
    assert lock_files(tmp_path) == set()
    second.close()
