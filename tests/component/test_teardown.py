"""Invocation cgroups on the real hierarchies, as root: limits, kill, wait, remove, leftovers.

Every test uses its own base (``activator-test-<pid>``), and the fixture kills and removes
whatever is left under it. Processes are real (``sh``, ``sleep``), started by the test and moved
into the cgroup by writing their PID to each ``cgroup.procs``, as the spawner's child does.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from activator import values as v
from activator.model import ServiceUnit
from activator.teardown import (
    Cgroup,
    CgroupLimits,
    Cgroups,
    TeardownError,
    escape_cgroup_name,
    kill_and_wait,
    limits_for,
    unescape_cgroup_name,
)
from activator.units import parse_unit_name

PR_SET_CHILD_SUBREAPER = 36
INVOCATION = "0123456789abcdef0123456789abcdef"


def base_name(suffix: str = "") -> str:
    return f"activator-test-{os.getpid()}{suffix}"


def teardown(cgroups: Cgroups, cgroup: Cgroup, *, timeout: float = 5.0) -> None:
    trio.run(functools.partial(kill_and_wait, cgroups, cgroup, timeout=timeout))


def destroy(cgroups: Cgroups) -> None:
    """Kill and remove every cgroup under the base, then the base (synchronously)."""
    for cgroup in cgroups.leftovers():
        deadline = time.monotonic() + 5
        while not cgroups.is_empty(cgroup) and time.monotonic() < deadline:
            cgroups.kill(cgroup)
            time.sleep(0.01)
        cgroups.remove(cgroup)
    cgroups.remove_base()


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    found = Cgroups.detect(base=base_name())
    try:
        yield found
    finally:
        destroy(found)


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Make this process the reaper of orphans, so a test can reap (and so prove dead) the
    grandchildren it made, instead of leaving zombies to PID 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed by PID and reaped at the end, whatever happened."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()


def join(cgroup: Cgroup, pid: int) -> None:
    for procs in cgroup.procs_files:
        Path(procs).write_text(str(pid))


def start_in(
    cgroup: Cgroup, script: str, processes: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    """Start ``sh -c script`` held at a ``read``, move it into the cgroup, then let it go: what it
    forks is born inside."""
    shell = subprocess.Popen(
        ["sh", "-c", f"read go; {script}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(shell)
    join(cgroup, shell.pid)
    assert shell.stdin is not None
    shell.stdin.write("go\n")
    shell.stdin.close()
    return shell


def start_pair(cgroup: Cgroup, processes: list[subprocess.Popen[str]]) -> tuple[int, int]:
    """A ``sleep 60`` (the shell, exec'd) and a ``sleep 60`` it forked, both in the cgroup."""
    shell = start_in(cgroup, "sleep 60 >/dev/null & echo $!; exec sleep 60", processes)
    assert shell.stdout is not None
    child = int(shell.stdout.readline())
    return shell.pid, child


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def reaped_by_sigkill(pid: int) -> bool:
    """Reap ``pid`` (a child or an adopted orphan of this process): was it killed by SIGKILL?"""
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def limit_file(cgroups: Cgroups, cgroup: Cgroup, controller: str, v2: str, v1: str) -> Path:
    """The file a limit goes to: in the v2 directory if v2 has the controller, else in v1."""
    if controller in cgroups.unified_controllers:
        assert cgroups.unified is not None
        return Path(cgroup.paths[0], v2)
    mount = dict(cgroups.legacy)[controller]
    (path,) = (path for path in cgroup.paths if path.startswith(f"{mount}/"))
    return Path(path, v1)


@pytest.mark.root
def test_kill_and_wait_leaves_no_process_and_no_directory(
    cgroups: Cgroups,
    subreaper: None,
    processes: list[subprocess.Popen[str]],
) -> None:
    cgroup = cgroups.create("echo@1.service", INVOCATION, CgroupLimits(tasks_max=16))
    shell, child = start_pair(cgroup, processes)
    wait_for(lambda: comm(shell) == "sleep", "the shell to exec sleep")
    assert cgroups.pids(cgroup) == {shell, child}
    assert not cgroups.is_empty(cgroup)

    teardown(cgroups, cgroup)

    assert processes[0].wait() == -signal.SIGKILL
    assert reaped_by_sigkill(child)
    assert not Path(f"/proc/{shell}").exists()
    assert not Path(f"/proc/{child}").exists()
    assert [path for path in cgroup.paths if os.path.exists(path)] == []
    assert cgroups.leftovers() == []


@pytest.mark.root
def test_directories_per_hierarchy(cgroups: Cgroups) -> None:
    plain = cgroups.create("a.service", "1", CgroupLimits())
    tasks = cgroups.create("a.service", "2", CgroupLimits(tasks_max=5))
    if cgroups.unified is not None:
        # v2 always (cgroup.kill and cgroup.events), first; v1 only for a limit that needs it.
        assert plain.paths == (f"{cgroups.unified}/{base_name()}/a.service/1",)
        assert tasks.paths[0] == f"{cgroups.unified}/{base_name()}/a.service/2"
    if "pids" not in cgroups.unified_controllers:
        pids = dict(cgroups.legacy)["pids"]
        assert tasks.paths[-1] == f"{pids}/{base_name()}/a.service/2"
    assert tasks.procs_files == tuple(f"{path}/cgroup.procs" for path in tasks.paths)
    assert (tasks.unit, tasks.invocation) == ("a.service", "2")


@pytest.mark.root
def test_limits_are_written_to_the_controllers_files(cgroups: Cgroups) -> None:
    limits = CgroupLimits(memory_max=64 << 20, tasks_max=7, cpu_quota_permyriad=5000)

    cgroup = cgroups.create("limited.service", INVOCATION, limits)

    memory = limit_file(cgroups, cgroup, "memory", "memory.max", "memory.limit_in_bytes")
    assert memory.read_text() == f"{64 << 20}\n"
    assert limit_file(cgroups, cgroup, "pids", "pids.max", "pids.max").read_text() == "7\n"
    if "cpu" in cgroups.unified_controllers:
        assert Path(cgroup.paths[0], "cpu.max").read_text() == "50000 100000\n"
    else:
        quota = limit_file(cgroups, cgroup, "cpu", "", "cpu.cfs_quota_us")
        assert quota.read_text() == "50000\n"
        assert Path(quota.parent, "cpu.cfs_period_us").read_text() == "100000\n"


@pytest.mark.root
def test_tasks_max_is_enforced(
    cgroups: Cgroups, subreaper: None, processes: list[subprocess.Popen[str]]
) -> None:
    cgroup = cgroups.create("forky.service", INVOCATION, CgroupLimits(tasks_max=3))

    shell = start_in(
        cgroup,
        "for i in 1 2 3 4 5; do sleep 60 >/dev/null 2>&1 & echo started $i; done",
        processes,
    )
    assert shell.stdout is not None
    assert shell.stderr is not None
    out, err = shell.stdout.read(), shell.stderr.read()  # the sleeps write nothing
    assert shell.wait() == 2  # dash gives up at the failed fork

    # The shell and two sleeps make three tasks: the third fork fails.
    assert out == "started 1\nstarted 2\n"
    assert "Cannot fork" in err
    sleeps = cgroups.pids(cgroup)
    assert len(sleeps) == 2
    teardown(cgroups, cgroup)
    assert all(reaped_by_sigkill(pid) for pid in sleeps)


@pytest.mark.root
def test_leftovers_are_found_after_a_crash(
    cgroups: Cgroups, subreaper: None, processes: list[subprocess.Popen[str]]
) -> None:
    made = cgroups.create("crashed@x.service", INVOCATION, CgroupLimits(tasks_max=9))
    shell, child = start_pair(made, processes)
    del made  # the activator that made it is gone (kill -9)

    again = Cgroups.detect(base=base_name())
    (found,) = again.leftovers()

    assert (found.unit, found.invocation) == ("crashed@x.service", INVOCATION)
    assert shell in again.pids(found)
    teardown(again, found)
    assert processes[0].wait() == -signal.SIGKILL
    assert reaped_by_sigkill(child)
    assert again.leftovers() == []


@pytest.mark.root
def test_a_v1_only_host_kills_by_passes_over_cgroup_procs(
    tmp_path: Path, subreaper: None, processes: list[subprocess.Popen[str]]
) -> None:
    # The host's real v1 hierarchies, seen without its cgroup2 mount.
    mounts = tmp_path / "mounts"
    lines = Path("/proc/self/mounts").read_text().splitlines(keepends=True)
    mounts.write_text("".join(line for line in lines if line.split()[2] == "cgroup"))
    if not mounts.read_text():
        pytest.skip("no cgroup v1 hierarchy on this host")
    v1 = Cgroups.detect(base=base_name("-v1"), mounts_file=str(mounts))
    try:
        assert v1.unified is None
        cgroup = v1.create("old.service", INVOCATION, CgroupLimits())
        assert cgroup.paths == (
            f"{dict(v1.legacy)['pids']}/{base_name('-v1')}/old.service/{INVOCATION}",
        )
        _, child = start_pair(cgroup, processes)
        wait_for(lambda: len(v1.pids(cgroup)) == 2, "two processes")

        teardown(v1, cgroup)

        assert processes[0].wait() == -signal.SIGKILL
        assert reaped_by_sigkill(child)
        assert not os.path.exists(cgroup.paths[0])
    finally:
        destroy(v1)


@pytest.fixture
def freezer() -> Iterator[Path]:
    """A v1 freezer cgroup of the test's own: a v1-frozen task does not die of SIGKILL."""
    mount = Path("/sys/fs/cgroup/freezer")
    if not Path(mount, "freezer.state").exists() and not mount.is_dir():
        pytest.skip("no v1 freezer on this host")
    path = mount / base_name("-freezer")
    path.mkdir()
    try:
        yield path
    finally:
        (path / "freezer.state").write_text("THAWED")
        deadline = time.monotonic() + 5
        while (path / "cgroup.procs").read_text() and time.monotonic() < deadline:
            time.sleep(0.005)
        path.rmdir()


@pytest.mark.root
def test_processes_surviving_the_timeout_are_an_error(
    cgroups: Cgroups, freezer: Path, processes: list[subprocess.Popen[str]]
) -> None:
    cgroup = cgroups.create("stuck.service", INVOCATION, CgroupLimits())
    sleeper = subprocess.Popen(["sleep", "60"], text=True)
    processes.append(sleeper)
    join(cgroup, sleeper.pid)
    (freezer / "cgroup.procs").write_text(str(sleeper.pid))
    (freezer / "freezer.state").write_text("FROZEN")
    wait_for(lambda: (freezer / "freezer.state").read_text() == "FROZEN\n", "the freeze")

    with pytest.raises(TeardownError) as caught:
        teardown(cgroups, cgroup, timeout=0.2)

    assert str(caught.value) == (
        f"cgroup stuck.service/{INVOCATION}: 1 process(es) survived SIGKILL for 0.2 s: "
        f"{sleeper.pid}"
    )
    assert all(os.path.exists(path) for path in cgroup.paths)  # not removed while populated
    (freezer / "freezer.state").write_text("THAWED")
    assert sleeper.wait() == -signal.SIGKILL  # the SIGKILL was pending
    teardown(cgroups, cgroup)


@pytest.mark.root
def test_create_refuses_a_limit_without_its_controller(tmp_path: Path) -> None:
    # A host that mounts only cgroup2, and (here) v2 offers no memory controller.
    mounts = tmp_path / "mounts"
    lines = Path("/proc/self/mounts").read_text().splitlines(keepends=True)
    mounts.write_text("".join(line for line in lines if line.split()[2] == "cgroup2"))
    only_v2 = Cgroups.detect(base=base_name("-v2"), mounts_file=str(mounts))
    try:
        if "memory" in only_v2.unified_controllers:
            pytest.skip("cgroup v2 has the memory controller here")
        with pytest.raises(TeardownError) as caught:
            only_v2.create("big.service", INVOCATION, CgroupLimits(memory_max=1 << 30))
        assert str(caught.value) == (
            "MemoryMax= needs the memory cgroup controller, "
            "which neither cgroup v2 nor a v1 mount offers on this host"
        )
        assert only_v2.leftovers() == []
    finally:
        destroy(only_v2)


def service(**fields: Any) -> ServiceUnit:
    return attrs.evolve(ServiceUnit(name=parse_unit_name("x.service")), **fields)


def test_limits_for_resolves_percentages_as_systemd() -> None:
    page = 4096
    unit = service(memory_max=v.Percent(5000), tasks_max=v.Percent(1500), cpu_quota=v.Percent(250))

    limits = limits_for(unit, memory_total=1001 * page + 123, pid_max=32768)

    # physical_memory_scale(): whole pages, rounded down; system_tasks_max(): pid_max - 1.
    assert limits == CgroupLimits(
        memory_max=500 * page, tasks_max=32767 * 1500 // 10000, cpu_quota_permyriad=250
    )
    assert limits_for(service(), memory_total=1 << 30, pid_max=32768) == CgroupLimits(
        tasks_max=4915
    )
    absolute = service(memory_max=12345678, tasks_max=None)
    assert limits_for(absolute, memory_total=1, pid_max=2) == CgroupLimits(memory_max=12345678)


def test_escaped_names() -> None:
    assert escape_cgroup_name("echo@1.service") == "echo@1.service"
    assert escape_cgroup_name("cpu.service") == "_cpu.service"
    assert escape_cgroup_name("cgroup.procs") == "_cgroup.procs"
    assert escape_cgroup_name("tasks") == "_tasks"
    assert escape_cgroup_name("_x") == "__x"
    assert escape_cgroup_name(".hidden") == "_.hidden"


@given(st.text(st.characters(blacklist_characters="/\0"), min_size=1))
def test_escaping_round_trips(name: str) -> None:
    assert unescape_cgroup_name(escape_cgroup_name(name)) == name
