"""uidstore against the real kernel: lock files shared by real processes, real users and groups,
real SysV and POSIX IPC objects, real processes running as a UID, a real NSS client (getent,
nss-systemd) talking to a userdb Varlink socket.

UIDs 65070-65099 are this file's block; lock tests use their own directories under tmp_path.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import pytest

from activator import uidstore
from activator.uidpool import SkipReason
from tests.host import run, static_group, static_user

REPO = Path(__file__).resolve().parents[2]
BLOCK = range(65070, 65100)
DEADLINE = 10.0

root = pytest.mark.root


# --- helpers ------------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_BYPASS_USERDB"}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def read_line(proc: subprocess.Popen[str], timeout: float = DEADLINE) -> str:
    """One line of a child's stdout, within a deadline (the child may be stuck: fail, not hang)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"child {proc.pid} said nothing within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"child {proc.pid} exited early: {proc.wait()}")
    return line.strip()


@contextlib.contextmanager
def python_child(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A ``python3 -c`` child with pipes; killed (by its PID) and reaped when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
    )
    with proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


#: A child that runs with ``uid`` in some ID field (as chosen by ``how``) until killed.
AS_UID = """
import ctypes, os, sys
how, uid = sys.argv[1], int(sys.argv[2])
if how == "groups":
    os.setgroups([uid])
else:
    os.setgroups([])
if how == "saved-gid":
    os.setresgid(0, 0, uid)
elif how == "fs":
    ctypes.CDLL(None).setfsuid(uid)
elif how != "groups":
    ids = {"real": (uid, 0, 0), "effective": (0, uid, 0), "saved": (0, 0, uid)}[how]
    os.setresuid(*ids)
print("ready", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def running_as(how: str, uid: int) -> Iterator[int]:
    with python_child(AS_UID, how, str(uid)) as proc:
        assert read_line(proc) == "ready"
        yield proc.pid


@contextlib.contextmanager
def sysv_object(kind: str, uid: int) -> Iterator[int]:
    """A SysV IPC object made by ``uid`` (through ipcmk, as that UID); removed after."""
    make, remove = {
        "shm": (["-M", "4096"], "-m"),
        "msg": (["-Q"], "-q"),
        "sem": (["-S", "1"], "-s"),
    }[kind]
    out = run("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "ipcmk", *make)
    ipc_id = int(out.split(":")[-1])
    try:
        yield ipc_id
    finally:
        subprocess.run(["ipcrm", remove, str(ipc_id)], capture_output=True, check=False)


@contextlib.contextmanager
def owned_file(path: Path, uid: int, *, directory: bool = False) -> Iterator[Path]:
    if directory:
        path.mkdir()
    else:  # an empty file (in an mqueue filesystem, a queue: they cannot be written to)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    os.chown(path, uid, uid)
    try:
        yield path
    finally:
        if directory:
            with contextlib.suppress(FileNotFoundError):
                for inner in path.iterdir():
                    inner.unlink()
                path.rmdir()
        else:
            path.unlink(missing_ok=True)


@pytest.fixture
def mqueue(tmp_path: Path) -> Iterator[Path]:
    """An mqueue filesystem of this IPC namespace, mounted under tmp_path (Debian without systemd
    as PID 1 has none on /dev/mqueue); queues made there are unlinked before it is unmounted."""
    mount = tmp_path / "mqueue"
    mount.mkdir()
    run("mount", "-t", "mqueue", "none", str(mount))
    try:
        yield mount
    finally:
        for queue in mount.iterdir():
            queue.unlink()
        run("umount", str(mount))


# --- in-use probes ----------------------------------------------------------------------------


@root
def test_probe_and_scan_see_every_kind_of_use(mqueue: Path) -> None:
    uids = iter(BLOCK)
    expected: dict[int, SkipReason] = {}
    shm = Path(uidstore.SHM_DIRECTORY)
    with contextlib.ExitStack() as stack:

        def use(reason: SkipReason, *makers: Callable[[int], ContextManager[object]]) -> int:
            uid = next(uids)
            expected[uid] = reason
            for make in makers:
                stack.enter_context(make(uid))
            return uid

        use(SkipReason.NSS, static_user)
        use(SkipReason.NSS, static_group)
        for kind in ("shm", "msg", "sem"):
            use(SkipReason.IPC, functools.partial(sysv_object, kind))
        use(SkipReason.IPC, lambda uid: owned_file(shm / f"act-uidstore-{uid}", uid))
        # A file of the UID deep in a root-owned directory.
        use(
            SkipReason.IPC,
            lambda uid: owned_file(shm / f"act-uidstore-{uid}", 0, directory=True),
            lambda uid: owned_file(shm / f"act-uidstore-{uid}" / "inner", uid),
        )
        mq_uid = use(SkipReason.IPC, lambda uid: owned_file(mqueue / f"act-uidstore-{uid}", uid))
        for how in ("real", "effective", "saved", "fs", "saved-gid", "groups"):
            use(SkipReason.PROCESS, functools.partial(running_as, how))
        # A static user with a process running as it: the process is the reason given.
        use(SkipReason.PROCESS, static_user, functools.partial(running_as, "real"))
        clean = next(uids)

        for uid, reason in expected.items():
            assert uidstore.probe(uid, mqueue_directory=str(mqueue)) is reason, uid
        assert uidstore.probe(clean, mqueue_directory=str(mqueue)) is None
        for per_uid_nss in (False, True):
            found = uidstore.scan(
                BLOCK[0], BLOCK[-1], mqueue_directory=str(mqueue), per_uid_nss=per_uid_nss
            )
            assert found == expected
            batch = uidstore.probe_many(
                [*expected, clean], mqueue_directory=str(mqueue), per_uid_nss=per_uid_nss
            )
            assert batch == {**expected, clean: None}
        # Without an mqueue filesystem there, queues are invisible (and nothing fails).
        assert uidstore.probe(mq_uid, mqueue_directory=str(mqueue.parent)) is None

    # Everything is gone again: the whole block is free.
    assert uidstore.scan(BLOCK[0], BLOCK[-1], mqueue_directory=str(mqueue)) == {}


@root
def test_remove_ipc_removes_the_uids_objects_and_no_one_elses(mqueue: Path) -> None:
    target, other = BLOCK[-2], BLOCK[-1]
    shm = Path(uidstore.SHM_DIRECTORY)
    with contextlib.ExitStack() as stack:
        for uid in (target, other):
            for kind in ("shm", "msg", "sem"):
                stack.enter_context(sysv_object(kind, uid))
            stack.enter_context(owned_file(shm / f"act-uidstore-{uid}", uid))
            # A root-owned directory: the file inside goes, the directory stays.
            box = stack.enter_context(
                owned_file(shm / f"act-uidstore-box-{uid}", 0, directory=True)
            )
            stack.enter_context(owned_file(box / "inner", uid))
            # A directory the UID owns goes with its content.
            own = stack.enter_context(
                owned_file(shm / f"act-uidstore-own-{uid}", uid, directory=True)
            )
            stack.enter_context(owned_file(own / "inner", uid))
            stack.enter_context(owned_file(mqueue / f"act-uidstore-{uid}", uid))
        before = {obj for obj in uidstore.sysv_objects() if other in obj.owners()}
        assert uidstore.probe(target, mqueue_directory=str(mqueue)) is SkipReason.IPC

        assert uidstore.remove_ipc(target, mqueue_directory=str(mqueue)) == 3 + 1 + 1 + 2 + 1

        assert uidstore.probe(target, mqueue_directory=str(mqueue)) is None
        assert not any(target in obj.owners() for obj in uidstore.sysv_objects())
        assert (shm / f"act-uidstore-box-{target}").is_dir()
        assert not (shm / f"act-uidstore-own-{target}").exists()
        assert {obj for obj in uidstore.sysv_objects() if other in obj.owners()} == before
        assert len(before) == 3
        for path in (
            shm / f"act-uidstore-{other}",
            shm / f"act-uidstore-box-{other}" / "inner",
            shm / f"act-uidstore-own-{other}" / "inner",
            mqueue / f"act-uidstore-{other}",
        ):
            assert path.exists()
        assert uidstore.remove_ipc(target, mqueue_directory=str(mqueue)) == 0


# --- kernel keys --------------------------------------------------------------------------------

#: keyctl(2) and add_key(2) for x86-64 (250, 248), run as a UID by :func:`as_uid`: ``add`` puts
#: a key into the user keyring, ``clear`` clears the user and user-session keyrings, ``touch``
#: only looks the user keyring up (which makes both user keyrings).
KEYS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
USER, USER_SESSION = ctypes.c_long(-4), ctypes.c_long(-5)
if sys.argv[1] == "add":
    result = libc.syscall(248, b"user", b"act-uidstore", b"secret", 6, USER)
elif sys.argv[1] == "clear":
    result = min(libc.syscall(250, 7, USER), libc.syscall(250, 7, USER_SESSION))
else:
    result = libc.syscall(250, 0, USER, 0)
if result < 0:
    sys.exit(f"{sys.argv[1]}: {os.strerror(ctypes.get_errno())}")
"""


def as_uid(uid: int, *argv: str) -> None:
    """Run ``python3 -c KEYS argv`` as ``uid`` (the system python: a venv's may be root's only)."""
    run(
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "/usr/bin/python3", "-Ic", KEYS, *argv,
    )  # fmt: skip


def eventually(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``condition`` (the kernel frees keys asynchronously) for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {condition}"
        time.sleep(0.01)


@root
def test_a_uid_with_a_kernel_key_is_in_use_until_its_keyrings_are_cleared(mqueue: Path) -> None:
    with_key, bare, other = 65090, 65091, 65092
    as_uid(bare, "touch")
    # Bare: the two user keyrings and nothing else, charged their names and at most one link.
    usage = uidstore.key_usage(bare)
    assert usage is not None
    assert (usage.keys, usage.quota_keys) == (2, 2)
    assert usage.quota_bytes in (
        len(f"_uid.{bare}") + 1 + len(f"_uid_ses.{bare}") + 1 + k for k in (0, 4)
    )
    assert uidstore.keyrings_only(bare, usage)
    as_uid(with_key, "add")
    try:
        assert uidstore.key_count(with_key) == 3
        assert uidstore.has_keys(with_key)
        assert not uidstore.has_keys(bare)
        assert uidstore.key_ids(with_key, other) == {with_key}
        queues = str(mqueue)
        assert uidstore.probe(with_key, mqueue_directory=queues) is SkipReason.IPC
        assert uidstore.probe(bare, mqueue_directory=queues) is None
        assert uidstore.scan(with_key, other, mqueue_directory=queues) == {with_key: SkipReason.IPC}
        batch = uidstore.probe_many([with_key, bare, other], mqueue_directory=queues)
        assert batch == {with_key: SkipReason.IPC, bare: None, other: None}
    finally:
        as_uid(with_key, "clear")
    eventually(lambda: not uidstore.has_keys(with_key))
    assert uidstore.key_count(with_key) == 2
    assert uidstore.probe(with_key, mqueue_directory=str(mqueue)) is None


def test_key_usage_reads_the_kernels_format(tmp_path: Path) -> None:
    path = tmp_path / "key-users"
    path.write_text(
        "    0:     9 8/8 3/1000000 112/25000000\n"
        "  100:     1 1/1 1/200 5/20000\n"
        "61261:     2 2/2 2/200 26/20000\n"
        "65112:     3 3/3 3/200 35/20000\n"
    )
    found = uidstore.key_users(str(path))
    assert found == {
        0: uidstore.KeyUsage(8, 3, 112),
        100: uidstore.KeyUsage(1, 1, 5),
        61261: uidstore.KeyUsage(2, 2, 26),
        65112: uidstore.KeyUsage(3, 3, 35),
    }
    for uid, usage in found.items():
        assert uidstore.key_usage(uid, str(path)) == usage
    assert uidstore.key_usage(10, str(path)) is None  # "100:" is not UID 10's line
    assert uidstore.key_count(1, str(path)) == 0
    assert uidstore.key_ids(1, 70000, str(path)) == {100, 65112}
    # 65112: its bare keyrings (30 bytes) and an empty session keyring of a handler on its way
    # out (5 bytes, "_ses"); 100: only such a session keyring.
    assert uidstore.has_keys(65112, str(path))
    assert not uidstore.has_keys(65112, str(path), sessions=1)
    assert not uidstore.has_keys(100, str(path), sessions=1)
    assert uidstore.has_keys(0, str(path), sessions=1)
    assert uidstore.key_users(str(tmp_path / "none")) == {}  # a kernel without keys


# --- lease locks --------------------------------------------------------------------------------

#: A child that runs one uidstore call and prints the result as JSON, then waits for EOF on stdin.
TRY = """
import json, os, sys
from activator import uidstore
directory, systemd, uids = sys.argv[1], sys.argv[2], [int(u) for u in sys.argv[3].split(",")]
held = []
for uid in uids:
    lock = uidstore.acquire(uid, {"pid": os.getpid()}, directory=directory,
                            systemd_directory=systemd)
    if lock is not None:
        held.append(lock)
stale, elsewhere = uidstore.find_stale(directory=directory, systemd_directory=systemd)
print(json.dumps({"acquired": [lock.uid for lock in held],
                  "stale": [item.lock.uid for item in stale], "elsewhere": sorted(elsewhere)}),
      flush=True)
sys.stdin.read()
"""


def try_in_child(directory: Path, systemd: Path, *uids: int) -> dict[str, list[int]]:
    with python_child(TRY, str(directory), str(systemd), ",".join(map(str, uids))) as proc:
        result: dict[str, list[int]] = json.loads(read_line(proc))
        return result


@contextlib.contextmanager
def holding(directory: Path, systemd: Path, *uids: int) -> Iterator[subprocess.Popen[str]]:
    """A child that leases ``uids`` and holds them until the block ends (it is then killed)."""
    with python_child(TRY, str(directory), str(systemd), ",".join(map(str, uids))) as proc:
        assert json.loads(read_line(proc))["acquired"] == list(uids)
        yield proc


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Another process holds an flock on ``path``, as systemd's PID 1 holds its lock files."""
    code = """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("ready", flush=True)
    sys.stdin.read()
    """
    with python_child(code, str(path)) as proc:
        assert read_line(proc) == "ready"
        yield


def test_acquire_writes_the_record_and_release_removes_it(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "uid"
    lock = uidstore.acquire(7, {"unit": "waldo.service", "uid": 7}, directory=str(directory))
    assert lock is not None
    assert (lock.uid, lock.path, lock.systemd_fd) == (7, str(directory / "7"), None)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert stat.S_IMODE((directory / "7").stat().st_mode) == 0o600
    assert json.loads((directory / "7").read_text()) == {"unit": "waldo.service", "uid": 7}

    uidstore.update(lock, {"unit": "waldo.service", "uid": 7, "cgroup": "/x/y/z" * 20})
    uidstore.update(lock, {"uid": 7})
    assert json.loads((directory / "7").read_text()) == {"uid": 7}
    # A second lease of the same UID fails even in the same process (another open file).
    assert uidstore.acquire(7, {}, directory=str(directory)) is None

    uidstore.release(lock)
    assert not (directory / "7").exists()
    uidstore.release(lock)  # twice is harmless
    with pytest.raises(ValueError, match="already released"):
        uidstore.update(lock, {})
    again = uidstore.acquire(7, {}, directory=str(directory))
    assert again is not None
    uidstore.release(again)


def test_lock_errors_name_the_path(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(OSError, match=f"{not_a_directory}: (File exists|Not a directory)"):
        uidstore.acquire(1, {}, directory=str(not_a_directory))
    directory = tmp_path / "uid"
    directory.mkdir()
    (directory / "2").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match=f"open {directory / '2'}: Too many levels of symbolic"):
        uidstore.acquire(2, {}, directory=str(directory))
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(TypeError):
        uidstore.acquire(3, {"bad": object()}, directory=str(directory))
    assert not (directory / "3").exists()


@root
def test_a_uid_leased_here_is_leased_elsewhere_for_another_process(tmp_path: Path) -> None:
    directory, systemd = tmp_path / "uid", tmp_path / "no-systemd"
    lock = uidstore.acquire(65000, {"unit": "a"}, directory=str(directory))
    assert lock is not None
    # (The child's own lease is "elsewhere" for find_stale too: another open file holds it.)
    result = try_in_child(directory, systemd, 65000, 65001)
    assert result == {"acquired": [65001], "stale": [], "elsewhere": [65000, 65001]}
    assert json.loads((directory / "65000").read_text()) == {"unit": "a"}
    # The child is gone, so its 65001 is a crash leftover now; ours is still ours.
    stale, elsewhere = uidstore.find_stale(directory=str(directory), systemd_directory=str(systemd))
    assert [item.lock.uid for item in stale] == [65001]
    assert elsewhere == {65000}
    for item in stale:
        uidstore.release(item.lock)
    uidstore.release(lock)
    assert sorted(os.listdir(directory)) == []


@root
def test_kill_9_of_a_holder_leaves_a_stale_lease_with_its_record(tmp_path: Path) -> None:
    directory, systemd = tmp_path / "uid", tmp_path / "no-systemd"
    with holding(directory, systemd, 65002, 65003) as proc:
        _, elsewhere = uidstore.find_stale(directory=str(directory), systemd_directory=str(systemd))
        assert elsewhere == {65002, 65003}
        pid = proc.pid
        os.kill(pid, signal.SIGKILL)
        proc.wait()

    stale, elsewhere = uidstore.find_stale(directory=str(directory), systemd_directory=str(systemd))
    assert elsewhere == set()
    assert [(item.lock.uid, item.record, item.problem) for item in stale] == [
        (65002, {"pid": pid}, None),
        (65003, {"pid": pid}, None),
    ]
    # We hold them now: nobody else gets them until they are released.
    assert try_in_child(directory, systemd, 65002)["acquired"] == []
    for item in stale:
        uidstore.release(item.lock)
    assert os.listdir(directory) == []
    assert try_in_child(directory, systemd, 65002)["acquired"] == [65002]


def test_find_stale_reports_unreadable_records_and_leaves_strange_names(tmp_path: Path) -> None:
    directory = tmp_path / "uid"
    directory.mkdir()
    (directory / "10").write_text("{not json")
    (directory / "11").write_text("")
    (directory / "12").write_text("[1, 2]")
    for strange in ("notauid", "013", ".hidden"):
        (directory / strange).write_text("{}")
    stale, elsewhere = uidstore.find_stale(
        directory=str(directory), systemd_directory=str(tmp_path / "none")
    )
    assert elsewhere == set()
    problems = {item.lock.uid: (item.record, item.problem) for item in stale}
    assert problems.keys() == {10, 11, 12}
    assert problems[10][0] is None
    assert "is not JSON" in str(problems[10][1])
    assert problems[11][0] is None
    assert "is empty" in str(problems[11][1])
    assert problems[12] == (None, f"{directory / '12'} holds a JSON list, not an object")
    for item in stale:
        uidstore.release(item.lock)
    assert sorted(os.listdir(directory)) == [".hidden", "013", "notauid"]
    assert uidstore.find_stale(directory=str(tmp_path / "missing")) == ([], set())


#: Two of these race: each takes and drops the same few UIDs many times and checks, each time it
#: holds one, that its lock is on the very file the name points to (had it locked a file its
#: holder had unlinked meanwhile, another process could hold the new file: a UID leased twice).
CHURN = """
import os, sys
from activator import uidstore
directory, rounds = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
got = wrong = 0
for i in range(rounds):
    lock = uidstore.acquire(i % 3, {"pid": os.getpid()}, directory=directory)
    if lock is None:
        continue
    got += 1
    if os.fstat(lock.fd).st_ino != os.stat(lock.path).st_ino:
        wrong += 1
    uidstore.release(lock)
print(got, wrong, flush=True)
"""


#: Two of these race for the same UIDs: each takes all it can at a signal, reports, and holds.
RACE = """
import json, sys
from activator import uidstore
directory, count = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
held = [uidstore.acquire(uid, {}, directory=directory) for uid in range(count)]
print(json.dumps([lock.uid for lock in held if lock is not None]), flush=True)
sys.stdin.read()
"""


def start_together(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        assert read_line(proc) == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


@root
def test_racing_processes_never_both_win_a_uid(tmp_path: Path) -> None:
    directory = tmp_path / "uid"
    with (
        python_child(RACE, str(directory), "300") as a,
        python_child(RACE, str(directory), "300") as b,
    ):
        start_together(a, b)
        got_a, got_b = (set(json.loads(read_line(proc))) for proc in (a, b))
    assert got_a.isdisjoint(got_b)
    assert got_a | got_b == set(range(300))

    churn_dir = tmp_path / "churn"
    churn_dir.mkdir()
    with (
        python_child(CHURN, str(churn_dir), "1000") as a,
        python_child(CHURN, str(churn_dir), "1000") as b,
    ):
        start_together(a, b)
        results = [read_line(proc, 30).split() for proc in (a, b)]
    assert [wrong for _, wrong in results] == ["0", "0"]
    assert all(int(got) > 0 for got, _ in results)
    assert os.listdir(churn_dir) == []


@root
def test_coexists_with_systemds_dynamic_users(tmp_path: Path) -> None:
    directory, systemd = tmp_path / "uid", tmp_path / "dynamic-uid"
    systemd.mkdir()
    (systemd / "direct:65021").symlink_to("some-unit")  # systemd's lookup links
    (systemd / "65022").write_text("gone-service\n")  # a file whose holder is gone
    with flocked(systemd / "65020"):
        # systemd leases 65020: we must not, and leave nothing behind trying.
        assert (
            uidstore.acquire(65020, {}, directory=str(directory), systemd_directory=str(systemd))
            is None
        )
        assert not (directory / "65020").exists()
        lock = uidstore.acquire(
            65021, {"unit": "b"}, directory=str(directory), systemd_directory=str(systemd)
        )
        assert lock is not None
        assert lock.systemd_path == str(systemd / "65021")
        assert (systemd / "65021").read_text() == ""

        assert try_in_child(directory, systemd, 65021) == {
            "acquired": [],
            "stale": [],
            "elsewhere": [65020, 65021],
        }
        stale, elsewhere = uidstore.find_stale(
            directory=str(directory), systemd_directory=str(systemd)
        )
        assert (stale, elsewhere) == ([], {65020, 65021})
        assert sorted(os.listdir(systemd)) == ["65020", "65021", "65022", "direct:65021"]

        uidstore.release(lock)
        assert sorted(os.listdir(systemd)) == ["65020", "65022", "direct:65021"]
        assert os.listdir(directory) == []

    # A crashed lease with systemd's directory present: we take both locks until it is released.
    with holding(directory, systemd, 65023) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    stale, elsewhere = uidstore.find_stale(directory=str(directory), systemd_directory=str(systemd))
    assert elsewhere == set()
    assert [item.lock.uid for item in stale] == [65023]
    assert stale[0].lock.systemd_path == str(systemd / "65023")
    assert try_in_child(directory, systemd, 65023)["acquired"] == []
    uidstore.release(stale[0].lock)
    assert sorted(os.listdir(systemd)) == ["65020", "65022", "direct:65021"]


# --- NSS bypass ---------------------------------------------------------------------------------

USERDB_DIRECTORY = Path("/run/systemd/userdb")

#: A userdb Varlink service in the manner of activator's: one user, everything else NoRecordFound.
FAKE_USERDB = """
import json, os, socket, sys, threading
path, name, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
record = {"userName": name, "uid": uid, "gid": uid, "realName": "uidstore test",
          "homeDirectory": "/", "shell": "/usr/sbin/nologin", "locked": True,
          "service": "io.activator.DynamicUser", "disposition": "dynamic"}
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o666)
server.listen(64)
print("ready", flush=True)

def answer(request):
    query = request.get("parameters", {})
    if (request.get("method") == "io.systemd.UserDatabase.GetUserRecord"
            and query.get("userName", name) == name and query.get("uid", uid) == uid):
        return {"parameters": {"record": record, "incomplete": False}}
    return {"error": "io.systemd.UserDatabase.NoRecordFound", "parameters": {}}

def serve(conn):
    buffer = b""
    with conn:
        while data := conn.recv(65536):
            buffer += data
            while b"\\0" in buffer:
                message, buffer = buffer.split(b"\\0", 1)
                conn.sendall(json.dumps(answer(json.loads(message))).encode() + b"\\0")

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@contextlib.contextmanager
def fake_userdb(name: str, uid: int) -> Iterator[None]:
    """Serve one user on /run/systemd/userdb/io.activator.DynamicUser; remove it all after."""
    made_directory = not USERDB_DIRECTORY.exists()
    USERDB_DIRECTORY.mkdir(mode=0o755, exist_ok=True)
    path = USERDB_DIRECTORY / uidstore.USERDB_SERVICE
    deadline = time.monotonic() + DEADLINE
    while path.exists():  # another test's live server: wait for it; a dead one's socket: replace
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
        finally:
            probe.close()
        if time.monotonic() > deadline:
            pytest.fail(f"{path} is served by someone else")
        time.sleep(0.05)
    try:
        with python_child(FAKE_USERDB, str(path), name, str(uid)) as proc:
            assert read_line(proc) == "ready"
            yield
    finally:
        path.unlink(missing_ok=True)
        if made_directory:
            with contextlib.suppress(OSError):
                USERDB_DIRECTORY.rmdir()


def getent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["getent", *args], capture_output=True, text=True, check=False, env=child_env(**env)
    )


@root
def test_bypass_own_userdb_hides_our_users_from_this_process_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, uid = "act-uidstore-dyn", BLOCK[-3]
    # setenv first: delenv of an unset variable records nothing, and bypass_own_userdb() sets it
    monkeypatch.setenv("SYSTEMD_BYPASS_USERDB", "")
    monkeypatch.delenv("SYSTEMD_BYPASS_USERDB")
    with fake_userdb(name, uid):
        # nss-systemd asks our socket: getent and this process see the dynamic user...
        seen = getent("passwd", name)
        assert seen.stdout.startswith(f"{name}:x:{uid}:{uid}:uidstore test:/:/usr/sbin/nologin")
        assert getent("passwd", str(uid)).returncode == 0
        assert pwd.getpwnam(name).pw_uid == uid
        # ...and with the variable they do not.
        hidden = getent("passwd", name, SYSTEMD_BYPASS_USERDB=uidstore.USERDB_SERVICE)
        assert (hidden.returncode, hidden.stdout) == (2, "")
        uidstore.bypass_own_userdb()
        assert os.environ["SYSTEMD_BYPASS_USERDB"] == uidstore.USERDB_SERVICE
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)
        assert uidstore.probe(uid) is None
        assert uid not in uidstore.scan(uid - 1, uid + 1, per_uid_nss=True)
    assert not (USERDB_DIRECTORY / uidstore.USERDB_SERVICE).exists()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "io.activator.DynamicUser"),
        ("", "io.activator.DynamicUser"),
        ("no", "io.activator.DynamicUser"),
        ("yes", "yes"),
        ("1", "1"),
        ("io.example.Other", "io.example.Other:io.activator.DynamicUser"),
        ("io.activator.DynamicUser:x", "io.activator.DynamicUser:x"),
    ],
)
def test_bypass_own_userdb_keeps_what_the_environment_bypasses(
    monkeypatch: pytest.MonkeyPatch, before: str | None, after: str
) -> None:
    if before is None:
        monkeypatch.setenv("SYSTEMD_BYPASS_USERDB", "")
        monkeypatch.delenv("SYSTEMD_BYPASS_USERDB")
    else:
        monkeypatch.setenv("SYSTEMD_BYPASS_USERDB", before)
    uidstore.bypass_own_userdb()
    assert os.environ["SYSTEMD_BYPASS_USERDB"] == after


def test_nss_per_uid_lookups_only_for_sources_that_may_not_enumerate(tmp_path: Path) -> None:
    conf = tmp_path / "nsswitch.conf"
    conf.write_text("passwd: files systemd\ngroup: files [SUCCESS=merge] systemd\nhosts: dns\n")
    assert not uidstore.nss_per_uid_needed(str(conf))
    conf.write_text("passwd: files systemd # sss\ngroup: files sss\n")
    assert uidstore.nss_per_uid_needed(str(conf))
    assert not uidstore.nss_per_uid_needed(str(tmp_path / "missing"))
