"""The spawner, for real: handlers forked into their own namespaces as UIDs 65000-65069.

Every test starts its own spawner process and reads what its handlers print through a pipe
passed in the plan's ``fd_map``. The UIDs have no NSS names (the sandbox needs none), and each
test checks that nothing of its UID runs once the handler is reported gone.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from activator import uidstore
from activator.sandbox import Mount, MountKind, RLimitSetting, SpawnPlan
from activator.spawner import SCRIPT, ExitStatus, Spawner, SpawnerDied, SpawnFailed

pytestmark = pytest.mark.root

#: What a DynamicUser=yes service gets, give or take the directories: a read-only system, a
#: minimal /dev, a private /tmp and a /proc for its own PID namespace.
SANDBOX = (
    Mount(MountKind.READ_ONLY, "/"),
    Mount(MountKind.DEVICES, "/dev"),
    Mount(MountKind.TMPFS, "/dev/shm", options="mode=1777"),
    Mount(MountKind.MQUEUE, "/dev/mqueue"),
    Mount(MountKind.TMPFS, "/tmp", options="mode=1777"),
    Mount(MountKind.PROC, "/proc", noexec=True),
)


def plan_of(*argv: str, uid: int = 65042, **changes: object) -> SpawnPlan:
    """A sandboxed plan running ``argv`` as ``uid``, stdout and stderr on passed descriptor 0."""
    plan = SpawnPlan(
        invocation=uuid.uuid4().hex,
        unit="test-spawner.service",
        path=argv[0],
        argv=argv,
        env=(("PATH", "/usr/bin:/bin"),),
        uid=uid,
        gid=uid,
        mounts=SANDBOX,
        fd_map=((1, 0), (2, 0)),
    )
    return plan._replace(**changes)  # type: ignore[arg-type]


def processes_of(uid: int, *, zombies: bool = True) -> list[int]:
    """The processes whose real or effective UID is ``uid`` (with or without zombies)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        zombie = fields["State"].strip().startswith("Z")
        if str(uid) in fields["Uid"].split()[:2] and (zombies or not zombie):
            found.append(int(name))
    return found


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (a single-threaded process)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def exists(path: str) -> bool:
    return os.path.exists(path)


async def eventually(condition: Callable[[], object], *, seconds: float = 10.0) -> None:
    """Poll ``condition`` until it holds, for at most ``seconds``: what it looks at
    (/proc, a counter) offers nothing to wait on."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (nothing to wait on; polled with a deadline)
            await trio.sleep(0.01)


async def read_all(fd: int) -> str:
    """Everything written to the pipe ``fd`` until every writer is gone; closes ``fd``."""
    chunks = []
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks).decode()


async def run(spawner: Spawner, plan: SpawnPlan) -> tuple[str, ExitStatus]:
    """Spawn ``plan`` with a pipe on passed descriptor 0; its output and its exit status."""
    read_end, write_end = os.pipe()
    try:
        handler = await spawner.spawn(plan, [write_end])
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    output = await read_all(read_end)
    status = await handler.wait()
    assert processes_of(plan.uid) == []
    return output, status


@pytest.fixture
async def spawner(nursery: trio.Nursery) -> AsyncIterator[Spawner]:
    spawner = Spawner.launch()
    await nursery.start(spawner.serve)
    yield spawner
    await spawner.aclose()


async def test_handler_runs_as_the_plan_ids(spawner: Spawner) -> None:
    output, status = await run(spawner, plan_of("sh", "-c", "id -u; id -g; id -G", uid=65001))
    assert output == "65001\n65001\n65001\n"
    assert status == ExitStatus(0, None)
    assert str(status) == "exited 0"


async def test_handler_sees_only_its_own_processes(spawner: Spawner) -> None:
    output, _ = await run(spawner, plan_of("sh", "-c", "echo $$; ls /proc | grep -x '[0-9]*'"))
    own_pid, *listed = output.split()
    assert own_pid == "1"
    # sh itself, ls and grep: nothing of the host, nothing of other handlers.
    assert "1" in listed
    assert len(listed) <= 3


async def test_root_is_read_only_and_tmp_is_private(spawner: Spawner) -> None:
    name = f"activator-test-{uuid.uuid4().hex}"
    script = f"touch /etc/{name}; ls -A /tmp | wc -l; echo hello > /tmp/{name} && cat /tmp/{name}"
    output, status = await run(spawner, plan_of("sh", "-c", script))
    assert output == f"touch: cannot touch '/etc/{name}': Read-only file system\n0\nhello\n"
    assert status.code == 0
    assert not exists(f"/etc/{name}")
    assert not exists(f"/tmp/{name}")


async def test_exec_of_a_missing_program_fails_with_its_stage_and_errno(spawner: Spawner) -> None:
    with pytest.raises(SpawnFailed) as failed:
        await run(spawner, plan_of("/usr/bin/nonexistent"))
    assert (failed.value.stage, failed.value.errno) == ("exec", errno.ENOENT)
    assert str(failed.value) == "exec /usr/bin/nonexistent: No such file or directory"
    assert failed.value.unit == "test-spawner.service"


async def test_a_bare_name_is_searched_in_the_plans_path(spawner: Spawner) -> None:
    with pytest.raises(SpawnFailed) as failed:
        await run(spawner, plan_of("id", env=(("PATH", "/nowhere:/either"),)))
    assert str(failed.value) == "exec id: No such file or directory"
    output, _ = await run(spawner, plan_of("id", "-u", env=(("PATH", "/nowhere:/usr/bin"),)))
    assert output == "65042\n"


async def test_missing_bind_source_fails_in_the_mount_stage(
    spawner: Spawner, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    bind = Mount(MountKind.BIND, "/mnt", source=str(missing))
    with pytest.raises(SpawnFailed) as failed:
        await run(spawner, plan_of("true", mounts=(*SANDBOX, bind)))
    assert (failed.value.stage, failed.value.errno) == ("mount", errno.ENOENT)
    assert str(failed.value) == f"mount {missing}: No such file or directory"
    # The same bind marked optional ("-" prefix) is skipped.
    output, status = await run(
        spawner, plan_of("true", mounts=(*SANDBOX, bind._replace(optional=True)))
    )
    assert (output, status.code) == ("", 0)


async def test_missing_working_directory_fails_in_the_chdir_stage(spawner: Spawner) -> None:
    with pytest.raises(SpawnFailed) as failed:
        await run(spawner, plan_of("true", working_directory="/nonexistent"))
    assert str(failed.value) == "chdir /nonexistent: No such file or directory"
    output, _ = await run(
        spawner,
        plan_of("pwd", working_directory="/nonexistent", working_directory_optional=True),
    )
    assert output == "/\n"


async def test_exit_codes_and_signals_are_reported(spawner: Spawner) -> None:
    _, status = await run(spawner, plan_of("sh", "-c", "exit 3"))
    assert (status, str(status)) == (ExitStatus(3, None), "exited 3")
    crash = "import ctypes; ctypes.string_at(0)"
    _, status = await run(spawner, plan_of("/usr/bin/python3", "-c", crash))
    assert (status, str(status)) == (ExitStatus(None, signal.SIGSEGV), "killed by SIGSEGV")
    # The handler is PID 1 of its namespace: a signal it has no handler for does not reach it,
    # not even from itself (only SIGKILL and SIGSTOP from outside, and real faults, do).
    _, status = await run(spawner, plan_of("sh", "-c", "kill -SEGV $$; exit 4"))
    assert status == ExitStatus(4, None)


async def test_kill_stops_a_running_handler(spawner: Spawner) -> None:
    read_end, write_end = os.pipe()
    handler = await spawner.spawn(plan_of("sh", "-c", "echo up; exec sleep 1000"), [write_end])
    os.close(write_end)
    async with trio.lowlevel.FdStream(read_end) as stream:
        assert await stream.receive_some() == b"up\n"
        await handler.kill()
        assert await handler.wait() == ExitStatus(None, signal.SIGKILL)
        assert await stream.receive_some() == b""
    assert processes_of(65042) == []
    await handler.kill()  # gone: nothing to do, no error


async def test_a_double_forked_daemon_dies_with_its_handler(spawner: Spawner) -> None:
    script = "setsid sh -c 'sleep 1000' </dev/null >/dev/null 2>&1 & echo forked"
    output, status = await run(spawner, plan_of("sh", "-c", script, uid=65003))
    assert (output, status.code) == ("forked\n", 0)
    assert processes_of(65003) == []  # run() checked it too, right after the exit report


async def test_a_setuid_root_binary_cannot_regain_root(spawner: Spawner, tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    folder.chmod(0o755)
    shutil.copy2("/usr/bin/id", folder / "id")
    os.chown(folder / "id", 0, 0)
    (folder / "id").chmod(0o4755)
    # nosuid off on purpose: no_new_privileges alone must keep the UID.
    bind = Mount(MountKind.BIND_READ_ONLY, "/mnt", source=str(folder), nosuid=False)
    plan = plan_of("/mnt/id", "-u", mounts=(*SANDBOX, bind), uid=65004)
    output, _ = await run(spawner, plan)
    assert output == "65004\n"
    # The control: without no_new_privileges that binary does make the handler root.
    output, _ = await run(spawner, plan._replace(no_new_privileges=False))
    assert output == "0\n"


async def test_descriptors_land_on_their_targets_and_nothing_else_is_open(
    spawner: Spawner, tmp_path: Path
) -> None:
    (tmp_path / "in").write_text("from descriptor 3\n")
    read_end, write_end = os.pipe()
    source = os.open(tmp_path / "in", os.O_RDONLY)
    # The shell lists its own descriptors itself: a pipeline to ls would race with the shell
    # closing the pipe's ends. The glob's own directory descriptor is the last one listed.
    script = (
        "cat <&3; echo to-4 >&4; echo $LISTEN_PID; "
        "for f in /proc/$$/fd/*; do printf '%s ' ${f##*/}; done"
    )
    # Passed descriptor 0 (the pipe) lands on 1 and 4, passed descriptor 1 (the file) on 3:
    # targets collide with whatever numbers the sources have in the spawner.
    plan = plan_of(
        "sh",
        "-c",
        script,
        fd_map=((4, 0), (3, 1), (1, 0)),
        env=(("PATH", "/usr/bin:/bin"), ("LISTEN_FDS", "2"), ("LISTEN_PID", "")),
    )
    try:
        handler = await spawner.spawn(plan, [write_end, source])
    finally:
        os.close(write_end)
        os.close(source)
    output = await read_all(read_end)
    assert await handler.wait() == ExitStatus(0, None)
    # 0-4 as placed, 5 the glob's directory: nothing else.
    assert output == "from descriptor 3\nto-4\n1\n0 1 2 3 4 5 "


async def test_mounts_limits_umask_nice_and_directory(spawner: Spawner, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "frozen").mkdir(parents=True)
    os.chown(state, 65005, 65005)
    os.chown(state / "frozen", 65005, 65005)
    mounts = (
        *SANDBOX,
        Mount(MountKind.TMPFS, "/run", options="mode=0755"),
        Mount(MountKind.MKDIR, "/run/state", options="0700"),
        Mount(MountKind.SYMLINK, "/run/link", source="state"),
        Mount(MountKind.BIND, "/run/state", source=str(state)),
        # /run and all below it read-only, then /run/state writable again, but not its
        # "frozen" folder (no mount point of its own: it is first bound onto itself).
        Mount(MountKind.READ_ONLY, "/run"),
        Mount(MountKind.READ_WRITE, "/run/state"),
        Mount(MountKind.READ_ONLY, "/run/state/frozen"),
        Mount(MountKind.INACCESSIBLE, "/etc/passwd"),
        Mount(MountKind.INACCESSIBLE, "/var"),
        Mount(MountKind.INACCESSIBLE, "/nonexistent", optional=True),
    )
    script = (
        "echo written > /run/link/file; ulimit -n; umask; nice; pwd;"
        " cat /etc/passwd; ls /var; ls -ld /var /etc/passwd | cut -c1-10;"
        " touch /run/state/frozen/file"
    )
    plan = plan_of(
        "sh",
        "-c",
        script,
        uid=65005,
        mounts=mounts,
        rlimits=(RLimitSetting(7, 64, 64),),  # RLIMIT_NOFILE
        umask=0o027,
        nice=5,
        working_directory="/run/state",
    )
    output, status = await run(spawner, plan)
    assert output.splitlines() == [
        "64",
        "0027",
        "5",
        "/run/state",
        "cat: /etc/passwd: Permission denied",
        "ls: cannot open directory '/var': Permission denied",
        "----------",  # ls sorts: /etc/passwd, then /var
        "d---------",
        "touch: cannot touch '/run/state/frozen/file': Read-only file system",
    ]
    assert status.code == 1
    written = state / "file"
    assert written.read_text() == "written\n"
    assert (written.stat().st_uid, stat.S_IMODE(written.stat().st_mode)) == (65005, 0o640)


async def test_private_network_has_only_loopback_and_it_is_up(spawner: Spawner) -> None:
    script = (
        "import socket; s = socket.create_server(('127.0.0.1', 0));"
        " socket.create_connection(s.getsockname()).close();"
        " print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev')"
        " if ':' in line))"
    )
    output, status = await run(spawner, plan_of("/usr/bin/python3", "-c", script, new_net=True))
    assert (output, status.code) == ("['lo']\n", 0)


async def test_many_concurrent_spawns_all_report(spawner: Spawner) -> None:
    limiter = trio.CapacityLimiter(16)
    statuses: list[ExitStatus] = []

    async def one(uid: int) -> None:
        async with limiter:
            handler = await spawner.spawn(plan_of("/bin/true", uid=uid, fd_map=()))
            statuses.append(await handler.wait())

    async with trio.open_nursery() as nursery:
        for number in range(200):
            nursery.start_soon(one, 65010 + number % 50)
    assert statuses == [ExitStatus(0, None)] * 200
    assert [pid for uid in range(65010, 65060) for pid in processes_of(uid)] == []


async def test_a_dead_spawner_is_restarted_and_its_handlers_die_with_it(
    spawner: Spawner,
) -> None:
    handler = await spawner.spawn(plan_of("sleep", "1000", uid=65006, fd_map=()))
    assert processes_of(65006) == [handler.pid]
    old = spawner.pid
    os.kill(old, signal.SIGKILL)
    with pytest.raises(SpawnerDied):
        await handler.wait()
    assert processes_of(65006, zombies=False) == []
    # Its spawner gone, the dead handler is the host init's to reap, not ours.
    await eventually(lambda: not processes_of(65006))
    await eventually(lambda: spawner.restarts == 1, seconds=20)
    assert spawner.pid != old
    output, _ = await run(spawner, plan_of("id", "-u", uid=65006))
    assert output == "65006\n"


async def test_a_cancelled_spawn_leaves_no_child(spawner: Spawner, tmp_path: Path) -> None:
    # The child blocks for good writing its "cgroup.procs", a FIFO nobody reads.
    fifo = tmp_path / "cgroup.procs"
    os.mkfifo(fifo)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawner.spawn, plan_of("true", cgroup_procs=(str(fifo),)))
            await eventually(lambda: children_of(spawner.pid))
            scope.cancel()
    await eventually(lambda: not children_of(spawner.pid))
    output, _ = await run(spawner, plan_of("id", "-u"))
    assert output == "65042\n"


async def test_a_spawn_in_flight_when_the_spawner_dies_fails_and_its_child_dies(
    spawner: Spawner, tmp_path: Path
) -> None:
    fifo = tmp_path / "cgroup.procs"
    os.mkfifo(fifo)
    old = spawner.pid

    async def kill_the_spawner_once_its_child_is_stuck() -> None:
        await eventually(lambda: children_of(old))
        stuck.extend(children_of(old))
        os.kill(old, signal.SIGKILL)

    stuck: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_the_spawner_once_its_child_is_stuck)
        with pytest.raises(SpawnerDied):
            await spawner.spawn(plan_of("true", cgroup_procs=(str(fifo),)))
    # The child was blocked opening the FIFO: its parent-death signal killed it.
    await eventually(lambda: not any(exists(f"/proc/{pid}") for pid in stuck))


async def test_aclose_kills_running_handlers_and_reports_them(spawner: Spawner) -> None:
    handler = await spawner.spawn(plan_of("sleep", "1000", uid=65007, fd_map=()))
    pid = spawner.pid
    await spawner.aclose()
    assert await handler.wait() == ExitStatus(None, signal.SIGKILL)
    assert processes_of(65007) == []
    assert not exists(f"/proc/{pid}")
    with pytest.raises(SpawnerDied):
        await spawner.spawn(plan_of("true"))


def test_the_spawner_process_imports_neither_trio_nor_the_unit_model_nor_threading() -> None:
    # A bad argument makes it exit right after its imports.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", SCRIPT, "not-a-descriptor"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert {"activator.sandbox", "activator.spawner._server"} <= imported
    # threading's after-fork hook doubles the fork cost; attrs would bring it in.
    assert not {"trio", "activator.model", "attrs", "threading"} & imported


# --- kernel keys ---------------------------------------------------------------------------------

#: keyctl(2) and add_key(2) for x86-64 (250, 248) through libc's syscall, in a handler or on the
#: host: ``keyctl(op, *args)`` returns the result or ``"error: <strerror>"``.
KEYCTL = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(number, *args):
    result = libc.syscall(number, *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    return result if result >= 0 else "error: " + os.strerror(ctypes.get_errno())
def keyctl(op, *args):
    return call(250, op, *args)
def add_key(description, payload, keyring):
    return call(248, b"user", description, payload, len(payload), keyring)
def describe(key):
    buffer = ctypes.create_string_buffer(256)
    n = keyctl(6, key, buffer, 256)
    return buffer.value.decode() if isinstance(n, int) else n
def read(key):
    buffer = ctypes.create_string_buffer(256)
    n = keyctl(11, key, buffer, 256)
    return "read " + buffer.raw[:n].decode() if isinstance(n, int) else n
def search(keyring, description):
    found = keyctl(10, keyring, b"user", description, 0)
    return read(found) if isinstance(found, int) else found
SESSION, USER = -3, -4
"""

#: Puts a key into its session keyring, says so, and waits until its stdin closes.
KEEPS_A_SESSION_KEY = (
    KEYCTL
    + """
print("SESSION", describe(SESSION))
print("ADDED", add_key(b"shared", sys.argv[1].encode(), SESSION), flush=True)
sys.stdin.read()
"""
)

#: Looks for the first handler's key and the spawner's, by name in its own session keyring and
#: by number; tries to add a key to the spawner's session keyring.
LOOKS_FOR_OTHERS_KEYS = (
    KEYCTL
    + """
other_key, root_keyring, root_key = (int(arg) for arg in sys.argv[1:])
print("SESSION", describe(SESSION))
print("search-other", search(SESSION, b"shared"))
print("read-other", read(other_key))
print("search-root", search(SESSION, b"root-secret"))
print("read-root", read(root_key))
print("describe-root-keyring", describe(root_keyring))
print("add-to-root-keyring", add_key(b"planted", b"x", root_keyring))
"""
)


@pytest.fixture
async def spawner_in_a_root_session(
    nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[tuple[Spawner, int, int]]:
    """A spawner started in a session keyring of root's holding a key, as under systemd (which
    gives every system service one): (the spawner, that keyring, that key)."""
    ids = tmp_path / "root-session"
    wrapper = tmp_path / "python-in-a-session"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        + KEYCTL
        + f"""
keyring = keyctl(1, 0)  # KEYCTL_JOIN_SESSION_KEYRING, anonymous
key = add_key(b"root-secret", b"root-{uuid.uuid4().hex}", SESSION)
open({str(ids)!r}, "w").write(f"{{keyring}} {{key}}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
    )
    wrapper.chmod(0o755)
    spawner = Spawner.launch(python=str(wrapper))
    keyring, key = (int(number) for number in ids.read_text().split())
    await nursery.start(spawner.serve)
    yield spawner, keyring, key
    await spawner.aclose()


async def test_each_handler_has_a_session_keyring_of_its_own(
    spawner_in_a_root_session: tuple[Spawner, int, int],
) -> None:
    spawner, root_keyring, root_key = spawner_in_a_root_session
    first_uid, second_uid = 65060, 65061
    secret = f"secret-{uuid.uuid4().hex}"
    keeps = plan_of("/usr/bin/python3", "-Ic", KEEPS_A_SESSION_KEY, secret, uid=first_uid)
    keeps = keeps._replace(fd_map=((0, 1), (1, 0), (2, 0)))
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        keeper = await spawner.spawn(keeps, [out_w, stdin_r])
    finally:
        os.close(stdin_r)
        os.close(out_w)
    try:
        async with trio.lowlevel.FdStream(out_r) as stream:
            said = b""
            while said.count(b"\n") < 2:
                said += await stream.receive_some()
        first = dict(line.split(" ", 1) for line in said.decode().splitlines())
        other_key = int(first["ADDED"])  # it could add a key to its session keyring
        # A new keyring, owned by the handler's UID, with nothing linked in.
        assert first["SESSION"] == "keyring;0;0;3f030000;_ses"  # root's: not charged to the UID
        args = (str(other_key), str(root_keyring), str(root_key))
        output, status = await run(
            spawner,
            plan_of("/usr/bin/python3", "-Ic", LOOKS_FOR_OTHERS_KEYS, *args, uid=second_uid),
        )
    finally:
        os.close(stdin_w)
    assert status == ExitStatus(0, None), output
    assert await keeper.wait() == ExitStatus(0, None)
    second = dict(line.split(" ", 1) for line in output.splitlines())
    assert second == {
        "SESSION": "keyring;0;0;3f030000;_ses",
        "search-other": "error: Required key not available",
        "read-other": "error: Permission denied",
        "search-root": "error: Required key not available",
        "read-root": "error: Permission denied",
        "describe-root-keyring": "error: Permission denied",
        "add-to-root-keyring": "error: Permission denied",
    }
    assert secret not in output


#: Links its user keyring into its session keyring (which does not link it: a key in the user
#: keyring with the default permissions is then not even its maker's to read), adds a key to the
#: user keyring if told to, then looks for it there: prints what it found.
USES_ITS_USER_KEYRING = (
    KEYCTL
    + """
print("link", keyctl(8, USER, SESSION))  # KEYCTL_LINK
if sys.argv[1] == "add":
    print("add", isinstance(add_key(b"left-behind", b"secret", USER), int))
print("search", search(USER, b"left-behind"))
"""
)


async def test_clear_keyrings_leaves_a_uid_no_key(spawner: Spawner) -> None:
    uid = 65062
    plan = plan_of("/usr/bin/python3", "-Ic", USES_ITS_USER_KEYRING, "add", uid=uid)
    try:
        output, _ = await run(spawner, plan)
        assert output == "link 0\nadd True\nsearch read secret\n"
        # The handler is gone, its key is not: the next handler of the UID would find it.
        assert uidstore.has_keys(uid)
        await spawner.clear_keyrings(uid)
        # The kernel frees the unlinked key asynchronously; then only the bare keyrings are left.
        await eventually(lambda: not uidstore.has_keys(uid))
        assert uidstore.key_count(uid) == 2
        plan = plan_of("/usr/bin/python3", "-Ic", USES_ITS_USER_KEYRING, "look", uid=uid)
        output, _ = await run(spawner, plan)
        assert output == "link 0\nsearch error: Required key not available\n"
    finally:
        await spawner.clear_keyrings(uid)


#: Puts a key into its user keyring and takes write permission on that keyring away from its UID
#: and every possessor (``lock``), or gives it back (``unlock``; the UID keeps setattr).
LOCKS_ITS_USER_KEYRING = (
    KEYCTL
    + """
if sys.argv[1] == "lock":
    print("add", isinstance(add_key(b"locked-in", b"secret", USER), int))
    print("setperm", keyctl(5, USER, 0x1B3B0000))  # no write for possessor nor owner
else:
    print("setperm", keyctl(5, USER, 0x1F3F0000))  # what the kernel makes
"""
)


async def test_clear_keyrings_refuses_root_and_reports_failures(spawner: Spawner) -> None:
    for uid in (0, -1, 2**32 - 1):
        with pytest.raises(ValueError, match=r"clear_keyrings: uid must be in 1\.\.4294967294"):
            await spawner.clear_keyrings(uid)
    with pytest.raises(ValueError, match="gid must be"):
        await spawner.clear_keyrings(65063, gid=0)
    uid = 65063
    lock = plan_of("/usr/bin/python3", "-Ic", LOCKS_ITS_USER_KEYRING, "lock", uid=uid)
    # A handler cannot take its UID's write permission on its user keyring away: the seccomp
    # filter refuses KEYCTL_SETPERM (else no one could clear the keyring, root included).
    output, _ = await run(spawner, lock)
    assert output.startswith("add True\nsetperm error: Operation not permitted"), output
    await spawner.clear_keyrings(uid)
    await eventually(lambda: not uidstore.has_keys(uid))
    # A process of the UID outside any sandbox still can; clearing then fails, and says so.
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3"]
    try:
        host = await trio.run_process(
            [*as_uid, "-Ic", LOCKS_ITS_USER_KEYRING, "lock"], capture_stdout=True, check=False
        )
        assert host.stdout == b"add True\nsetperm 0\n"
        with pytest.raises(SpawnFailed) as failed:
            await spawner.clear_keyrings(uid)
        assert (failed.value.stage, failed.value.errno) == ("keyring", errno.EACCES)
        assert str(failed.value) == f"keyring clear @u of UID {uid}: Permission denied"
        assert uidstore.has_keys(uid)
    finally:
        await trio.run_process([*as_uid, "-Ic", LOCKS_ITS_USER_KEYRING, "unlock"])
        await spawner.clear_keyrings(uid)
    await eventually(lambda: not uidstore.has_keys(uid))
