"""Shared fixtures for the integration tests: the real ``activator run`` CLI, and the host's view.

Integration tests drive the product as a user does: ``activator run`` as a subprocess
(:func:`run_activator`, :func:`start_activator`), and then look at the host as root would, with
no help from the product: ``/proc``, ``/proc/sysvipc``, ``/dev/shm``, the host's POSIX message
queues, the lease directory, the cgroup trees and the mount table (:class:`HostTrace`); and one
process's descriptors and memory (:func:`fd_count`, :func:`memory_kib`).

Fixtures:
    leaves_nothing: asserts, when the test ends, that nothing of the pool's UIDs was left behind
        (see :class:`HostTrace`); request it first, so it checks after the test's own clean-up.
        :func:`leaves_nothing_of` is the same check for one pool range and unit prefix only.
    directory_name: a factory of unique State/Cache/Logs/Runtime directory names, whose
        directories (public path and boundary copy) are removed when the test ends.
    background: a factory of background ``activator run`` processes (:func:`start_activator`),
        each stopped and reaped by PID when the test ends.

Everything here is for tests marked ``root``: ``activator run`` needs root.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest

#: The default pool (activator.toml's default, as systemd's): 0xEF00-0xFFEF.
POOL_FIRST: Final = 61184
POOL_LAST: Final = 65519

#: The checkout, so ``python -m activator`` imports this tree whatever the test's directory.
CHECKOUT: Final = str(Path(__file__).resolve().parents[2])

LEASE_DIRECTORY: Final = "/run/activator/uid"
CGROUP_ROOTS: Final = ("/sys/fs/cgroup/unified/activator", "/sys/fs/cgroup/activator")
BOUNDARY_DIRECTORIES: Final = ("/var/lib/private", "/var/cache/private", "/var/log/private")
_PUBLIC_ROOTS: Final = ("/var/lib", "/var/cache", "/var/log", "/run")

_UID_LINE = re.compile(r"^UID=(\d+)$", re.MULTILINE)


def in_pool(uid: int) -> bool:
    """Whether ``uid`` is in the default pool."""
    return POOL_FIRST <= uid <= POOL_LAST


def activator_command(*args: str) -> list[str]:
    """The argv of the real CLI: ``python -m activator ARGS...`` with this checkout's venv."""
    return [sys.executable, "-m", "activator", *args]


def run_activator(
    *args: str,
    input: str | None = None,  # noqa: A002 - subprocess.run's name for it
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``activator ARGS...`` to its end; stdout and stderr captured as text.

    Example: ``run_activator("run", "--pipe", "-p", "DynamicUser=yes", "id", "-u")``.
    Without ``input``, stdin is /dev/null. Raises ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds (the process is killed first, as ``subprocess.run`` does).
    """
    return subprocess.run(
        activator_command(*args),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=CHECKOUT,
        check=False,
    )


def start_activator(*args: str) -> subprocess.Popen[str]:
    """Start ``activator ARGS...`` in the background: stdin, stdout and stderr are pipes (text).

    Prefer the ``background`` fixture, which also stops it. A handler started with ``--pipe``
    that waits on stdin (``read x``) ends when the test closes ``proc.stdin``: a clean stop.
    """
    return subprocess.Popen(
        activator_command(*args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=CHECKOUT,
    )


def printed_uid(output: str) -> int:
    """The UID a handler printed as a line ``UID=N`` (``echo UID=$(id -u)``); it must be in the
    pool."""
    found = _UID_LINE.search(output)
    assert found is not None, f"the handler printed no UID= line:\n{output}"
    uid = int(found.group(1))
    assert in_pool(uid), f"UID {uid} is not in the pool {POOL_FIRST}-{POOL_LAST}"
    return uid


# ---------------------------------------------------------------------------------------------
# The host's view


def _status_uids(pid: str) -> tuple[int, ...]:
    """Real, effective, saved and filesystem UIDs of a process, or () when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("Uid:"):
                    return tuple(int(x) for x in line.split()[1:])
    except OSError:
        pass
    return ()


def pool_processes() -> dict[int, tuple[int, ...]]:
    """Every process on the host that has a UID of the pool (any of its four): pid -> UIDs."""
    out: dict[int, tuple[int, ...]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            uids = _status_uids(name)
            if any(in_pool(u) for u in uids):
                out[int(name)] = uids
    return out


def processes_of(uid: int) -> list[int]:
    """The PIDs of the host's processes that have ``uid`` as any of their UIDs."""
    return sorted(pid for pid, uids in pool_processes().items() if uid in uids)


def children_of(pid: int) -> list[int]:
    """The host PIDs whose parent is ``pid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


def fd_count(pid: int) -> int:
    """How many descriptors process ``pid`` holds now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (the peak) of process ``pid``, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    if "VmRSS" not in out:
        msg = f"no VmRSS for PID {pid} (a zombie?)"
        raise AssertionError(msg)
    return out


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` now, in KiB (``VmRSS``)."""
    return memory_kib(pid)["VmRSS"]


def sysv_objects() -> set[tuple[str, int, int, int]]:
    """The host's SysV IPC objects owned or created by a pool UID: (kind, id, uid, cuid)."""
    out: set[tuple[str, int, int, int]] = set()
    for kind, id_column in (("shm", "shmid"), ("msg", "msqid"), ("sem", "semid")):
        with open(f"/proc/sysvipc/{kind}", encoding="ascii") as file:
            header = file.readline().split()
            for line in file:
                row = dict(zip(header, line.split(), strict=False))
                uid, cuid = int(row["uid"]), int(row["cuid"])
                if in_pool(uid) or in_pool(cuid):
                    out.add((kind, int(row[id_column]), uid, cuid))
    return out


def posix_mqueues() -> dict[str, int]:
    """The host's POSIX message queues owned by a pool UID: name -> UID.

    The host need not mount ``/dev/mqueue``: an mqueue file system is mounted in a private mount
    namespace of a short-lived ``unshare`` (same IPC namespace as the host), and listed there.
    """
    script = 'mount -t mqueue mqueue /mnt && cd /mnt && for q in *; do [ -e "$q" ] && ' \
        'stat -c "%u %n" -- "$q"; done; true'  # fmt: skip
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    out: dict[str, int] = {}
    for line in done.stdout.splitlines():
        uid, name = line.split(" ", 1)
        if in_pool(int(uid)):
            out[name] = int(uid)
    return out


def _owned_files(top: str) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for parent, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(parent, name)
            try:
                uid = os.lstat(path).st_uid
            except OSError:
                continue
            if in_pool(uid):
                out.add((path, uid))
    return out


def _listing(directory: str) -> frozenset[str]:
    try:
        return frozenset(os.listdir(directory))
    except FileNotFoundError:
        return frozenset()


def cgroup_bases() -> list[str]:
    """The ``activator`` base directory of every cgroup hierarchy (v2 and v1), each once; an
    invocation's cgroup ``UNIT/INVOCATION`` is that path below each base that has it."""
    roots = [*CGROUP_ROOTS, *(str(p) for p in Path("/sys/fs/cgroup").glob("*/activator"))]
    return list(dict.fromkeys(roots))


def cgroup_populated(name: str) -> bool:
    """Whether a process is in the invocation cgroup ``name`` (``UNIT/INVOCATION``) in any
    hierarchy: v2 ``cgroup.events`` says ``populated 1``, or a ``cgroup.procs`` lists one. A
    cgroup that is gone holds nothing."""
    for base in cgroup_bases():
        for file, full in (("cgroup.events", "populated 1"), ("cgroup.procs", None)):
            try:
                with open(f"{base}/{name}/{file}", encoding="ascii") as opened:
                    text = opened.read()
            except FileNotFoundError:
                continue
            if (full in text.splitlines()) if full is not None else text.strip():
                return True
    return False


def _cgroups() -> frozenset[str]:
    """Every cgroup directory below an ``activator`` base of any hierarchy (v2 and v1)."""
    out: set[str] = set()
    for root in cgroup_bases():
        for parent, dirs, _ in os.walk(root):
            out.update(os.path.join(parent, d) for d in dirs)
    return frozenset(out)


def _mounts() -> frozenset[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        return frozenset(file.read().splitlines())


@attrs.frozen
class HostTrace:
    """What the pool's UIDs (and invocations) hold on the host at one moment.

    Attributes:
        processes: (pid, UIDs) of processes with a pool UID.
        sysv: SysV IPC objects of a pool UID, (kind, id, uid, cuid).
        mqueues: POSIX message queues of a pool UID, (name, uid).
        shm: files below /dev/shm owned by a pool UID, (path, uid).
        locks: the entries of the lease directory /run/activator/uid.
        cgroups: cgroup directories below the ``activator`` bases.
        mounts: the lines of this process's /proc/self/mountinfo (the host's mount namespace).
    """

    processes: frozenset[tuple[int, tuple[int, ...]]]
    sysv: frozenset[tuple[str, int, int, int]]
    mqueues: frozenset[tuple[str, int]]
    shm: frozenset[tuple[str, int]]
    locks: frozenset[str]
    cgroups: frozenset[str]
    mounts: frozenset[str]

    @classmethod
    def take(cls) -> HostTrace:
        """Look at the host now."""
        return cls(
            processes=frozenset(pool_processes().items()),
            sysv=frozenset(sysv_objects()),
            mqueues=frozenset(posix_mqueues().items()),
            shm=frozenset(_owned_files("/dev/shm")),
            locks=_listing(LEASE_DIRECTORY),
            cgroups=_cgroups(),
            mounts=_mounts(),
        )

    def new_since(self, before: HostTrace) -> dict[str, list[object]]:
        """What is here now and was not in ``before``, by kind (only the kinds with some)."""
        out: dict[str, list[object]] = {}
        for field in attrs.fields(HostTrace):
            added = getattr(self, field.name) - getattr(before, field.name)
            if added:
                out[field.name] = sorted(added)
        return out


def _belongs_to(kind: str, item: object, pool: range, unit_prefix: str) -> bool:
    """Whether one thing :meth:`HostTrace.new_since` found belongs to ``pool`` and the units
    starting with ``unit_prefix``: a UID of ``pool`` (process, IPC object, lease lock), or a
    cgroup of such a unit. Mounts cannot be told apart: every new one counts."""
    match kind, item:
        case "processes", (_, tuple() as uids):
            return any(uid in pool for uid in uids)
        case "sysv", (_, _, int() as uid, int() as cuid):
            return uid in pool or cuid in pool
        case (("mqueues" | "shm"), (_, int() as uid)):
            return uid in pool
        case "locks", str() as name:
            return name.isdigit() and int(name) in pool
        case "cgroups", str() as path:
            return f"/activator/{unit_prefix}" in path
    return True


@contextlib.contextmanager
def leaves_nothing_of(pool: range | None = None, unit_prefix: str = "") -> Iterator[None]:
    """Assert, when the block ends, that the host holds nothing of the pool it did not hold when
    the block began (see :func:`leaves_nothing`).

    With ``pool``, only what belongs to ``pool`` and to the units starting with ``unit_prefix``
    counts: tests that own a pool range and a unit prefix look at their own things only, and
    not at what tests of other files running at the same time hold for a moment (their leases,
    their cgroups). Every new mount counts all the same.
    """
    before = HostTrace.take()
    yield
    left = HostTrace.take().new_since(before)
    if pool is not None:
        left = {
            kind: mine
            for kind, items in left.items()
            if (mine := [i for i in items if _belongs_to(kind, i, pool, unit_prefix)])
        }
    assert not left, f"left behind on the host: {left}"


@pytest.fixture
def leaves_nothing() -> Iterator[None]:
    """Fail the test if, when it ends, the host holds anything of the pool it did not hold when
    it started: a process, a SysV IPC object, a POSIX message queue or /dev/shm file of a pool
    UID, a lease lock file, an invocation cgroup, or a mount.

    The check is immediate, not polled: ``activator run`` promises that all of it is gone when
    it returns. Request this fixture before the others, so that it checks after their clean-up.
    For a check of one pool range and unit prefix only, see :func:`leaves_nothing_of`.
    """
    with leaves_nothing_of():
        yield


def remove_directories(name: str) -> None:
    """Remove ``NAME`` under /var/lib, /var/cache, /var/log and /run, public path (a symlink
    under DynamicUser) and boundary copy alike; missing ones are fine."""
    for root in _PUBLIC_ROOTS:
        for path in (f"{root}/{name}", f"{root}/private/{name}"):
            if os.path.islink(path) or os.path.isfile(path):
                os.unlink(path)
            elif os.path.isdir(path):
                shutil.rmtree(path)


@pytest.fixture
def directory_name() -> Iterator[Callable[[str], str]]:
    """A factory: ``directory_name("wuff")`` gives ``wuff-<8 hex>``, a name for StateDirectory=
    and friends, whose directories are all removed when the test ends (see
    :func:`remove_directories`)."""
    names: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        names.append(name)
        return name

    yield make
    for name in names:
        remove_directories(name)


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Stop a background ``activator``: close its stdin, and wait; SIGTERM, then SIGKILL, to its
    PID when it does not end in ``timeout`` seconds."""
    if proc.stdin is not None and not proc.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def background() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """A factory of background ``activator ARGS...`` processes (:func:`start_activator`); each is
    stopped with :func:`stop` when the test ends, whatever happened."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = start_activator(*args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


# The ``server`` fixture (a running ``activator serve``) lives with its helpers; imported last, as
# it uses the names above.
from tests.integration.serving import server  # noqa: E402, F401
