"""Dynamic users through the real CLI: ``activator run -p DynamicUser=yes``, seen from the host with
the host's own tools (getent, id, ls through nss-systemd), crash recovery after ``kill -9``, and
the state directory owner's UID chosen again.

Unit names carry a random part (``t3...-<hex>``), so runs of this file never meet each other's
leases, users or directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from activator.uidpool import hash_uid, user_name
from tests.integration.conftest import (
    CHECKOUT,
    LEASE_DIRECTORY,
    POOL_FIRST,
    POOL_LAST,
    children_of,
    printed_uid,
    processes_of,
    run_activator,
)

pytestmark = pytest.mark.root

DEADLINE = 10.0
Background = Callable[..., subprocess.Popen[str]]


# --- helpers ------------------------------------------------------------------------------------


def host_env() -> dict[str, str]:
    """The environment of a host tool: nss-systemd asks every userdb service, ours included."""
    return {k: v for k, v in os.environ.items() if k != "SYSTEMD_BYPASS_USERDB"}


def host(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=host_env(), timeout=DEADLINE, check=False
    )


class Lines:
    """The stdout of a background run, line by line, each within a deadline.

    It reads the pipe's descriptor itself: a buffered reader could hold a line that select()
    no longer sees.
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def _more(self, deadline: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"activator {self.proc.pid} printed nothing more: {self.buffer!r}")
        return os.read(self.fd, 65536)

    def line(self, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            chunk = self._more(deadline)
            if not chunk:
                assert self.proc.stderr is not None
                code, err = self.proc.wait(), self.proc.stderr.read()
                pytest.fail(f"activator {self.proc.pid} ended early ({code}): {err}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def finish(self, line: str = "") -> tuple[int, str]:
        """Let the handler end (a line on its stdin, then EOF): the exit code, the rest of the
        output."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.close()
        deadline = time.monotonic() + DEADLINE
        while chunk := self._more(deadline):
            self.buffer += chunk
        return self.proc.wait(DEADLINE), self.buffer.decode()


def wait_until(what: str, done: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def token() -> str:
    return secrets.token_hex(4)


def hashed(unit: str) -> int:
    return hash_uid(user_name(unit), POOL_FIRST, POOL_LAST)


#: Holds one UID's lease lock (our lock directory, systemd's too if it exists) as another
#: activator would; releases it when its stdin closes.
HOLD_LOCK = """
import sys
from activator import uidstore
lock = uidstore.acquire(int(sys.argv[1]), {"held": "by a test"})
print("held" if lock is not None else "busy", flush=True)
sys.stdin.read()
if lock is not None:
    uidstore.release(lock)
"""


@contextlib.contextmanager
def lock_held_elsewhere(uid: int) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(uid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=CHECKOUT,
    )
    with proc:
        try:
            assert Lines(proc).line() == "held"
            yield
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(DEADLINE) == 0
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def dynamic(unit: str, script: str, *properties: str) -> tuple[str, ...]:
    """The arguments of ``activator run`` for ``sh -c SCRIPT`` as a dynamic user of ``unit``."""
    extra = [word for value in properties for word in ("-p", value)]
    return ("run", "--pipe", "--unit", unit, "-p", "DynamicUser=yes", *extra, "sh", "-c", script)


def live_processes_of(uid: int) -> list[int]:
    """The processes of ``uid`` that still run (a zombie has no resources but its PID)."""
    return [pid for pid in processes_of(uid) if alive(pid)]


# --- NSS visibility -----------------------------------------------------------------------------


def test_the_dynamic_user_is_visible_on_the_host_exactly_while_it_runs(
    leaves_nothing: None, background: Background, directory_name: Callable[[str], str]
) -> None:
    state = directory_name("t3nss")
    script = 'echo UID=$(id -u); echo NAME=$(id -un); echo hi > "$STATE_DIRECTORY/file"; ' \
        "echo ready; read line; echo bye"  # fmt: skip
    run = Lines(background(*dynamic(f"{state}.service", script, f"StateDirectory={state}")))
    uid = printed_uid(run.line())
    name = run.line().removeprefix("NAME=")
    assert name == state  # the unit's name, as systemd names it
    assert run.line() == "ready"
    file = f"/var/lib/private/{state}/file"

    record = f"{name}:x:{uid}:{uid}:Dynamic User for {state}.service"
    passwd = host("getent", "passwd", name)
    assert passwd.returncode == 0
    assert passwd.stdout.startswith(record)
    assert passwd.stdout.rstrip().endswith(":/:/usr/sbin/nologin")
    assert host("getent", "passwd", str(uid)).stdout == passwd.stdout
    assert host("getent", "group", str(uid)).stdout == f"{name}:x:{uid}:\n"
    assert host("getent", "group", name).stdout == f"{name}:x:{uid}:\n"
    assert host("id", name).stdout == f"uid={uid}({name}) gid={uid}({name}) groups={uid}({name})\n"
    assert host("ls", "-l", file).stdout.split()[2:4] == [name, name]

    assert run.finish() == (0, "bye\n")

    assert host("getent", "passwd", name).returncode == 2
    assert host("getent", "passwd", str(uid)).returncode == 2
    assert host("getent", "group", str(uid)).returncode == 2
    assert host("getent", "group", name).returncode == 2
    gone = host("id", name)
    assert gone.returncode == 1
    assert "no such user" in gone.stderr
    assert host("ls", "-l", file).stdout.split()[2:4] == [str(uid), str(uid)]


# --- crash recovery -----------------------------------------------------------------------------

#: A handler of two processes (sh and a sleep) that prints its UID and runs until killed.
FOREVER = "sleep 1000 & echo UID=$(id -u); wait"
#: A handler that prints its UID and ends when a line (or EOF) arrives on its stdin.
UNTIL_TOLD = "echo UID=$(id -u); read line"


def test_kill_9_of_the_activator_then_a_restart_reclaims_the_lease(
    leaves_nothing: None, background: Background
) -> None:
    unit = f"t3crash-{token()}.service"
    crashed = background(*dynamic(unit, FOREVER))
    uid = printed_uid(Lines(crashed).line())
    handlers = processes_of(uid)
    assert len(handlers) == 2  # sh and its sleep
    spawners = children_of(crashed.pid)
    assert spawners
    lock = Path(LEASE_DIRECTORY, str(uid))
    record = json.loads(lock.read_text())
    assert (record["unit"], record["uid"]) == (unit, uid)

    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait(DEADLINE)
    # The spawner dies with the activator's socket, and the handlers with the spawner.
    try:
        wait_until(f"the spawner {spawners} exits", lambda: not any(map(alive, spawners)))
        wait_until(f"the handlers of UID {uid} exit", lambda: live_processes_of(uid) == [])
    finally:
        for pid in [*handlers, *spawners]:  # only ours, by PID: none may outlive the test
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    # The host reaps the orphans (its PID 1 may take a moment).
    wait_until(f"the handlers of UID {uid} are reaped", lambda: processes_of(uid) == [])
    assert lock.exists()  # the crash left its lease behind: stale, nobody holds it

    # A restart reclaims the stale lease before it leases anything: the unit's UID is leased
    # anew (its hashed one again, when that is how the first got it) and works.
    restarted = Lines(background(*dynamic(unit, UNTIL_TOLD)))
    new_uid = printed_uid(restarted.line())
    if record["source"] == "name_hash":
        assert new_uid == uid == hashed(unit)
    if new_uid == uid:
        renewed = json.loads(lock.read_text())
        assert renewed["invocation"] != record["invocation"]
    else:
        assert not lock.exists()
    # And a second run of the unit at the same time gets another UID: nothing leased twice.
    concurrent = Lines(background(*dynamic(unit, UNTIL_TOLD)))
    other_uid = printed_uid(concurrent.line())
    assert other_uid != new_uid
    assert {new_uid, other_uid} <= {int(name) for name in os.listdir(LEASE_DIRECTORY)}
    assert restarted.finish() == (0, "")
    assert concurrent.finish() == (0, "")
    assert not lock.exists()


def test_a_restart_kills_what_a_crashed_activator_left_running_before_reusing_its_uid(
    leaves_nothing: None, background: Background
) -> None:
    unit = f"t3left-{token()}.service"
    crashed = background(*dynamic(unit, FOREVER))
    uid = printed_uid(Lines(crashed).line())
    handlers = processes_of(uid)
    spawners = children_of(crashed.pid)
    lock = Path(LEASE_DIRECTORY, str(uid))
    try:
        # A hung spawner cannot take its handlers down with it: they outlive the crash.
        for pid in spawners:
            os.kill(pid, signal.SIGSTOP)
        os.kill(crashed.pid, signal.SIGKILL)
        crashed.wait(DEADLINE)
        assert live_processes_of(uid) == handlers
        record = json.loads(lock.read_text())
        assert record["cgroup"]

        again = run_activator(*dynamic(unit, "echo UID=$(id -u)"))
        assert again.returncode == 0, again.stderr
        # Killed through the stale lease's cgroup before anything was leased (the zombies wait
        # for their stopped parent to reap them), and the cgroup is gone.
        assert live_processes_of(uid) == []
        assert not os.path.exists(record["cgroup"])
        printed_uid(again.stdout)
        assert not lock.exists()
    finally:
        for pid in [*spawners, *handlers]:  # ours, by PID, whatever happened
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    wait_until(f"the processes of UID {uid} are reaped", lambda: processes_of(uid) == [])


# --- the state directory's owner ----------------------------------------------------------------


def test_the_state_directory_owner_is_leased_again_without_a_chown(
    leaves_nothing: None, directory_name: Callable[[str], str]
) -> None:
    state = directory_name("t3wuff")
    suffix = token()
    first, second = (f"t3wuff-{who}-{suffix}.service" for who in ("a", "b"))
    assert hashed(first) != hashed(second)  # so the second's UID can only come from the owner
    directory = f"StateDirectory={state}"
    write = 'echo UID=$(id -u); echo wuff > "$STATE_DIRECTORY/file"'
    read = 'echo UID=$(id -u); cat "$STATE_DIRECTORY/file"'

    one = run_activator(*dynamic(first, write, directory))
    assert one.returncode == 0, one.stderr
    uid = printed_uid(one.stdout)
    file = Path(f"/var/lib/private/{state}/file")
    before = file.stat()
    assert (before.st_uid, before.st_gid) == (uid, uid)

    two = run_activator(*dynamic(second, read, directory))
    assert two.returncode == 0, two.stderr
    assert printed_uid(two.stdout) == uid
    assert two.stdout.splitlines()[1:] == ["wuff"]
    after = file.stat()
    assert (after.st_uid, after.st_ctime_ns) == (uid, before.st_ctime_ns)  # no chown

    # Its UID busy (another activator holds its lock): another UID, and the tree follows it.
    with lock_held_elsewhere(uid):
        three = run_activator(*dynamic(second, read, directory))
    assert three.returncode == 0, three.stderr
    other = printed_uid(three.stdout)
    assert other != uid
    assert three.stdout.splitlines()[1:] == ["wuff"]
    assert (file.stat().st_uid, file.stat().st_gid) == (other, other)
