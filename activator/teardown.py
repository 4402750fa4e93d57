"""The cgroup of each invocation: its limits, and killing everything in it at the end.

Rule 1: :func:`kill_and_wait` returns only when no process of the invocation is left and its
cgroup directories are gone; otherwise it raises :class:`TeardownError`, and the invocation's UID
must not be released (DESIGN.md, invariant 2).

Rule 2: our tree is ``<hierarchy>/<base>/<unit>/<invocation>`` in every hierarchy used, and
nothing outside ``<base>`` is touched except enabling controllers in the v2 root. Whatever is
under ``<base>`` is ours: after a crash, :meth:`Cgroups.leftovers` finds it all.

Rule 3: a signal goes only to a process proven to be in the cgroup. Where ``cgroup.kill`` exists
the kernel does it; otherwise a PID read from ``cgroup.procs`` is pinned with a pidfd and
checked in ``/proc/PID/cgroup`` before ``pidfd_send_signal``, so a recycled PID is never hit.

Theory of operation. The hierarchies come from ``/proc/self/mounts``:

- A pure cgroup v2 host mounts everything at ``/sys/fs/cgroup``: the invocation gets one
  directory there, with ``memory.max``, ``pids.max`` and ``cpu.max``, and the controllers are
  enabled in ``cgroup.subtree_control`` of the root, ``<base>`` and ``<unit>``.
- A hybrid host (these machines) has v2 at ``/sys/fs/cgroup/unified`` with no controllers (v1
  holds them all), and v1 ``memory``, ``pids`` and ``cpu`` at ``/sys/fs/cgroup/<controller>``.
  The v2 directory is always made (it has ``cgroup.kill`` and ``cgroup.events``), and a v1
  directory only for a controller a limit needs (``memory.limit_in_bytes``, ``pids.max``,
  ``cpu.cfs_quota_us``). Measured here (2-core VM, 300 each, :meth:`Cgroups.create` then
  :meth:`Cgroups.remove`): v2 alone 43/33 us, with v1 pids 100/63 us, with v1 memory 136/88 us,
  with all three 282/183 us (up to twice that while other tests ran); a bare v1 memory mkdir
  varies most (55-153 us against 20-57 us for pids).
- A v1-only host (no cgroup2 mount) tracks processes in the v1 ``pids`` hierarchy.

The spawned child writes ``0`` into each ``cgroup.procs`` of :attr:`Cgroup.procs_files`, v2
first, before it execs. At the end, v2 ``cgroup.kill`` kills the whole cgroup atomically (forks
racing with it are killed too); without it, SIGKILL passes over ``cgroup.procs`` repeat until
the cgroup is empty. A process with SIGKILL pending cannot fork, so each pass leaves only
children forked before their parent was hit, and the passes converge. The freezer is not used:
it would cost another v1 directory per invocation, and a v1-frozen task does not die of SIGKILL
until thawed. Emptiness is ``populated 0`` in v2 ``cgroup.events`` and an empty
``cgroup.procs`` everywhere, polled with a backoff from 1 ms (see :func:`_wait_until_empty` for
why not inotify). Only then are the directories removed (an rmdir right after the last exit
can still get EBUSY, so it is retried briefly).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Iterator

import attrs
import trio

from activator import values as v
from activator.errors import ActivatorError
from activator.model import ServiceUnit

#: systemd's default CPUQuotaPeriodSec= (100 ms), in microseconds.
CPU_PERIOD_US = 100_000
# systemd never writes a CPU quota below 1 ms per period (the kernel refuses less).
_CPU_QUOTA_MIN_US = 1_000
# pids.max refuses values above PID_MAX_LIMIT; "max" means the same there.
_PIDS_LIMIT = 4_194_304
_WANTED = ("memory", "pids", "cpu")
# cg_escape(): names the kernel or a controller could claim get a "_" prefix.
_CONTROLLER_NAMES = frozenset(
    {
        "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "io", "memory",
        "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
    }
)  # fmt: skip
_RESERVED_NAMES = frozenset({"notify_on_release", "release_agent", "tasks"})
_REMOVE_RETRY_SECONDS = 1.0


class TeardownError(ActivatorError):
    """A cgroup could not be found, made, emptied or removed.

    The message names the path and the errno text (``mkdir /sys/fs/cgroup/pids/activator/x:
    No space left on device``), or the processes that survived.
    """


# --- limits ------------------------------------------------------------------------------------


@attrs.frozen
class CgroupLimits:
    """Resource limits of one invocation, resolved to numbers; None is no limit.

    Attributes:
        memory_max: bytes (``MemoryMax=``).
        tasks_max: processes and threads (``TasksMax=``).
        cpu_quota_permyriad: CPU time per wall-clock time, 10000 is one CPU (``CPUQuota=``).
    """

    memory_max: int | None = None
    tasks_max: int | None = None
    cpu_quota_permyriad: int | None = None


def limits_for(
    service: ServiceUnit, *, memory_total: int, pid_max: int, page_size: int = 4096
) -> CgroupLimits:
    """The service's limits, with percentages resolved as systemd does.

    ``MemoryMax=N%`` is N% of ``memory_total``, rounded down to whole pages
    (``physical_memory_scale()``); ``TasksMax=N%`` is N% of the number of PIDs the kernel can
    hand out, ``pid_max - 1`` (``system_tasks_max_scale()``; PID 0 is not a PID).

    Args:
        service: the service.
        memory_total: physical memory in bytes.
        pid_max: the kernel's ``kernel.pid_max``.
        page_size: the page size in bytes.
    """
    memory = service.memory_max
    if isinstance(memory, v.Percent):
        memory = (memory_total // page_size) * memory.permyriad // 10_000 * page_size
    tasks = service.tasks_max
    if isinstance(tasks, v.Percent):
        tasks = max(pid_max - 1, 0) * tasks.permyriad // 10_000
    quota = None if service.cpu_quota is None else service.cpu_quota.permyriad
    return CgroupLimits(memory_max=memory, tasks_max=tasks, cpu_quota_permyriad=quota)


def cpu_quota_us(permyriad: int, period_us: int = CPU_PERIOD_US) -> int:
    """The CPU time per period a quota allows, in microseconds (at least 1 ms, as systemd)."""
    return max(permyriad * period_us // 10_000, _CPU_QUOTA_MIN_US)


# --- names -------------------------------------------------------------------------------------


def escape_cgroup_name(name: str) -> str:
    """A unit or invocation name as a cgroup directory name, as systemd's ``cg_escape()``:
    a ``_`` prefix for names starting with ``_`` or ``.``, the kernel's own file names, and
    names that look like a controller's files (``cpu.service``)."""
    head, dot, _ = name.rpartition(".")
    if (
        name[:1] in ("", "_", ".")
        or name in _RESERVED_NAMES
        or name.startswith("cgroup.")
        or (dot and head in _CONTROLLER_NAMES)
    ):
        return "_" + name
    return name


def unescape_cgroup_name(name: str) -> str:
    """The inverse of :func:`escape_cgroup_name`."""
    return name.removeprefix("_")


@attrs.frozen
class Cgroup:
    """The cgroup of one invocation.

    Attributes:
        name: ``<escaped unit>/<escaped invocation>``, below the base in each hierarchy.
        paths: every directory of it: the v2 one first, then v1 controllers.
    """

    name: str
    paths: tuple[str, ...]

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files the spawned child writes ``0`` into, in order."""
        return tuple(f"{path}/cgroup.procs" for path in self.paths)

    @property
    def unit(self) -> str:
        """The unit name, unescaped."""
        return unescape_cgroup_name(self.name.partition("/")[0])

    @property
    def invocation(self) -> str:
        """The invocation ID, unescaped."""
        return unescape_cgroup_name(self.name.partition("/")[2])


# --- system calls, with errors naming the path -------------------------------------------------


def _fail(error: OSError, op: str, path: str) -> TeardownError:
    code = error.errno
    reason = os.strerror(code) if code is not None else str(error)
    return TeardownError(f"{op} {path}: {reason}")


def _write(path: str, text: str) -> None:
    """One write(2) of ``text``: cgroup files take a value per write."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise _fail(error, f"write {text!r} to", path) from error


def _read(path: str) -> str | None:
    """The file's text, or None if it does not exist (a cgroup removed meanwhile)."""
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _fail(error, "read", path) from error


def _mkdir(path: str) -> None:
    """mkdir, if missing."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as error:
        raise _fail(error, "mkdir", path) from error


def _unoctal(text: str) -> str:
    """Undo the octal escapes of /proc/self/mounts (``\\040`` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), text)


def _mounts(mounts_file: str) -> tuple[str | None, dict[str, str]]:
    """The first cgroup2 mount point, and the v1 mount point of each controller."""
    unified = None
    legacy: dict[str, str] = {}
    with open(mounts_file, encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            fields = line.split()
            if len(fields) < 4:
                continue
            where, kind, options = _unoctal(fields[1]), fields[2], fields[3].split(",")
            if kind == "cgroup2" and unified is None:
                unified = where
            elif kind == "cgroup":
                for option in options:
                    legacy.setdefault(option, where)
    return unified, legacy


# --- the hierarchies ---------------------------------------------------------------------------


@attrs.frozen
class Cgroups:
    """The cgroup hierarchies of this host, and our base directory in each.

    Attributes:
        base: the directory name below each hierarchy's root (``activator``).
        unified: the cgroup v2 mount point, or None.
        unified_controllers: the controllers of :data:`_WANTED` enabled below our v2 base.
        legacy: ``(controller, v1 mount point)`` for each wanted controller v2 does not have.
    """

    base: str
    unified: str | None
    unified_controllers: frozenset[str]
    legacy: tuple[tuple[str, str], ...]

    @classmethod
    def detect(cls, *, base: str = "activator", mounts_file: str = "/proc/self/mounts") -> Cgroups:
        """Find the hierarchies and make ``<mount>/<base>`` in each one used.

        In v2, ``+memory +pids +cpu`` (those the root offers) are enabled in the root's and the
        base's ``cgroup.subtree_control``; a controller that cannot be enabled is looked for in
        v1 instead.

        Raises:
            TeardownError: no hierarchy can track processes (neither cgroup2 nor the v1 ``pids``
                controller is mounted), or a directory cannot be made.
        """
        if not base or "/" in base or base in (".", ".."):
            msg = f"cgroup base must be one directory name (got {base!r})"
            raise TeardownError(msg)
        unified, mounted = _mounts(mounts_file)
        enabled: set[str] = set()
        if unified is not None:
            offered = (_read(f"{unified}/cgroup.controllers") or "").split()
            for controller in _WANTED:
                if controller not in offered:
                    continue
                try:
                    _write(f"{unified}/cgroup.subtree_control", f"+{controller}")
                except TeardownError:
                    continue  # e.g. cpu with realtime threads around: try v1
                enabled.add(controller)
            _mkdir(f"{unified}/{base}")
            for controller in sorted(enabled):
                _write(f"{unified}/{base}/cgroup.subtree_control", f"+{controller}")
        legacy = tuple(
            (controller, mounted[controller])
            for controller in _WANTED
            if controller not in enabled and controller in mounted
        )
        if unified is None and "pids" not in dict(legacy):
            msg = (
                "no cgroup hierarchy can track processes: "
                f"neither cgroup2 nor the v1 pids controller is mounted ({mounts_file})"
            )
            raise TeardownError(msg)
        for where in dict.fromkeys(mount for _, mount in legacy):
            _mkdir(f"{where}/{base}")
        return cls(base, unified, frozenset(enabled), legacy)

    @property
    def roots(self) -> tuple[str, ...]:
        """Every hierarchy mount point used, v2 first."""
        mounts = [mount for _, mount in self.legacy]
        if self.unified is not None:
            mounts.insert(0, self.unified)
        return tuple(dict.fromkeys(mounts))

    def hierarchies_for(self, limits: CgroupLimits) -> tuple[str, ...]:
        """The mount points an invocation with ``limits`` gets a directory in, v2 first.

        Raises:
            TeardownError: a limit's controller is missing on this host.
        """
        return tuple(root for root, _ in self._roots_for(limits))

    def _roots_for(self, limits: CgroupLimits) -> list[tuple[str, list[str]]]:
        """The hierarchies an invocation with ``limits`` needs, each with the controllers to
        limit there."""
        needed = [
            controller
            for controller, value in (
                ("memory", limits.memory_max),
                ("pids", limits.tasks_max),
                ("cpu", limits.cpu_quota_permyriad),
            )
            if value is not None
        ]
        legacy = dict(self.legacy)
        out: dict[str, list[str]] = {}
        if self.unified is not None:
            out[self.unified] = [c for c in needed if c in self.unified_controllers]
        else:
            out[legacy["pids"]] = []  # to track the processes
        for controller in needed:
            if controller in self.unified_controllers:
                continue
            if controller not in legacy:
                directive = {"memory": "MemoryMax", "pids": "TasksMax", "cpu": "CPUQuota"}
                msg = (
                    f"{directive[controller]}= needs the {controller} cgroup controller, "
                    "which neither cgroup v2 nor a v1 mount offers on this host"
                )
                raise TeardownError(msg)
            out.setdefault(legacy[controller], []).append(controller)
        return list(out.items())

    def create(self, unit: str, invocation: str, limits: CgroupLimits) -> Cgroup:
        """Make the invocation's cgroup and write its limits (blocking, tens of microseconds).

        Returns:
            the cgroup; nothing is left behind when this raises.

        Raises:
            TeardownError: naming the path and the errno text, or a limit whose controller
                this host lacks.
        """
        unit_dir, invocation_dir = escape_cgroup_name(unit), escape_cgroup_name(invocation)
        for part in (unit_dir, invocation_dir):
            if "/" in part or part in (".", ".."):
                msg = f"cgroup name must not contain '/' (got {part!r})"
                raise TeardownError(msg)
        name = f"{unit_dir}/{invocation_dir}"
        made: list[str] = []
        try:
            for root, controllers in self._roots_for(limits):
                path = self._make(root, unit_dir, invocation_dir)
                made.append(path)
                for controller in controllers:
                    _write_limit(path, controller, limits, unified=root == self.unified)
        except BaseException:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                with contextlib.suppress(OSError):  # the unit's, unless another invocation is in it
                    os.rmdir(os.path.dirname(path))
            raise
        return Cgroup(name, tuple(made))

    def _make(self, root: str, unit_dir: str, invocation_dir: str) -> str:
        unit_path = f"{root}/{self.base}/{unit_dir}"
        path = f"{unit_path}/{invocation_dir}"
        for _ in range(3):
            try:
                os.mkdir(unit_path, 0o755)
            except FileExistsError:
                pass
            except FileNotFoundError:
                # The base is gone: another activator sharing it removed it at its exit.
                self._make_base(root)
                continue
            except OSError as error:
                raise _fail(error, "mkdir", unit_path) from error
            if root == self.unified and self.unified_controllers:
                wanted = " ".join(f"+{c}" for c in sorted(self.unified_controllers))
                try:
                    _write(f"{unit_path}/cgroup.subtree_control", wanted)
                except TeardownError as error:
                    if isinstance(error.__cause__, FileNotFoundError):
                        continue  # removed meanwhile by another invocation's teardown: again
                    raise
            try:
                os.mkdir(path, 0o755)
            except FileNotFoundError:
                continue  # the unit directory was removed meanwhile by remove(): again
            except OSError as error:
                raise _fail(error, "mkdir", path) from error
            return path
        msg = f"mkdir {path}: its parent keeps disappearing"
        raise TeardownError(msg)

    def _make_base(self, root: str) -> None:
        """Make ``<root>/<base>`` again (as :meth:`detect` did), with its controllers in v2."""
        _mkdir(f"{root}/{self.base}")
        if root == self.unified:
            for controller in sorted(self.unified_controllers):
                _write(f"{root}/{self.base}/cgroup.subtree_control", f"+{controller}")

    def pids(self, cgroup: Cgroup) -> set[int]:
        """The processes in the cgroup, in any of its hierarchies."""
        out: set[int] = set()
        for procs in cgroup.procs_files:
            text = _read(procs)
            if text is not None:
                out.update(int(line) for line in text.split())
        return out

    def _unified_path(self, cgroup: Cgroup) -> str | None:
        if self.unified is None:
            return None
        prefix = f"{self.unified}/"
        return next((path for path in cgroup.paths if path.startswith(prefix)), None)

    def has_kill(self, cgroup: Cgroup) -> bool:
        """True when the kernel kills the cgroup atomically (v2 ``cgroup.kill``, Linux 5.14)."""
        path = self._unified_path(cgroup)
        return path is not None and os.path.exists(f"{path}/cgroup.kill")

    def kill(self, cgroup: Cgroup) -> None:
        """SIGKILL every process of the cgroup: ``cgroup.kill``, else one pass over its PIDs.

        Does not wait; see :func:`kill_and_wait`.
        """
        path = self._unified_path(cgroup)
        if path is not None and os.path.exists(f"{path}/cgroup.kill"):
            try:
                _write(f"{path}/cgroup.kill", "1")
            except TeardownError:
                if os.path.exists(path):
                    raise
            return
        self._kill_pass(cgroup)

    def _kill_pass(self, cgroup: Cgroup) -> None:
        mine = f"/{self.base}/{cgroup.name}"
        for pid in self.pids(cgroup):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError as error:
                raise _fail(error, "pidfd_open", str(pid)) from error
            try:
                # The pidfd pins the process: if /proc/PID still shows our cgroup now, the
                # pidfd is that process (or it died and the signal finds nobody).
                if _in_cgroup(pid, mine):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)

    def is_empty(self, cgroup: Cgroup) -> bool:
        """True when no process is left: v2 ``populated 0`` and every ``cgroup.procs`` empty."""
        path = self._unified_path(cgroup)
        if path is not None:
            events = _read(f"{path}/cgroup.events")
            if events is not None and "populated 0" not in events.splitlines():
                return False
        return not self.pids(cgroup)

    def _remove_once(self, cgroup: Cgroup) -> list[tuple[str, OSError]]:
        """rmdir what is left of the cgroup; the directories still busy, with the error."""
        busy: list[tuple[str, OSError]] = []
        for path in cgroup.paths:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                if error.errno != errno.EBUSY:
                    raise _fail(error, "rmdir", path) from error
                busy.append((path, error))
        if not busy:
            for path in cgroup.paths:  # the unit's directory, if this was its last invocation
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(path))
        return busy

    def remove(self, cgroup: Cgroup) -> None:
        """Remove the cgroup's directories (blocking: EBUSY is retried for up to 1 s).

        Raises:
            TeardownError: a directory stays busy (processes are left) or cannot be removed.
        """
        deadline = time.monotonic() + _REMOVE_RETRY_SECONDS
        delay = 0.001
        while busy := self._remove_once(cgroup):
            if time.monotonic() >= deadline:
                path, error = busy[0]
                raise _fail(error, "rmdir", path)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def leftovers(self) -> list[Cgroup]:
        """Every invocation cgroup under the base, in any hierarchy (after a crash), by name."""
        found: dict[str, list[str]] = {}
        for root in self.roots:
            for unit_dir in _subdirectories(f"{root}/{self.base}"):
                for invocation_dir in _subdirectories(f"{root}/{self.base}/{unit_dir}"):
                    found.setdefault(f"{unit_dir}/{invocation_dir}", []).append(
                        f"{root}/{self.base}/{unit_dir}/{invocation_dir}"
                    )
        return [Cgroup(name, tuple(paths)) for name, paths in sorted(found.items())]

    def remove_empty(self) -> None:
        """Remove the unit directories that hold no invocation, and the base if it is empty
        then (at shutdown: another activator may still use the base; never raises)."""
        for root in self.roots:
            base = f"{root}/{self.base}"
            with contextlib.suppress(OSError, TeardownError):
                for unit_dir in _subdirectories(base):
                    with contextlib.suppress(OSError):
                        os.rmdir(f"{base}/{unit_dir}")
            with contextlib.suppress(OSError):
                os.rmdir(base)

    def remove_base(self) -> None:
        """Remove the base directories (and empty unit directories in them): at shutdown, and
        for tests.

        Raises:
            TeardownError: an invocation cgroup is still there.
        """
        for root in self.roots:
            base = f"{root}/{self.base}"
            for unit_dir in _subdirectories(base):
                try:
                    os.rmdir(f"{base}/{unit_dir}")
                except OSError as error:
                    raise _fail(error, "rmdir", f"{base}/{unit_dir}") from error
            try:
                os.rmdir(base)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise _fail(error, "rmdir", base) from error


def _subdirectories(path: str) -> Iterator[str]:
    try:
        with os.scandir(path) as entries:
            names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    except OSError as error:
        raise _fail(error, "read", path) from error
    yield from sorted(names)


def _in_cgroup(pid: int, mine: str) -> bool:
    """Whether ``/proc/PID/cgroup`` places the process in ``mine`` (or below), in any
    hierarchy."""
    text = _read(f"/proc/{pid}/cgroup")
    if text is None:
        return False
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if path == mine or path.startswith(mine + "/"):
            return True
    return False


def _write_limit(path: str, controller: str, limits: CgroupLimits, *, unified: bool) -> None:
    if controller == "memory" and limits.memory_max is not None:
        name = "memory.max" if unified else "memory.limit_in_bytes"
        _write(f"{path}/{name}", str(limits.memory_max))
    elif controller == "pids" and limits.tasks_max is not None:
        tasks = limits.tasks_max
        _write(f"{path}/pids.max", "max" if tasks > _PIDS_LIMIT else str(tasks))
    elif controller == "cpu" and limits.cpu_quota_permyriad is not None:
        quota = cpu_quota_us(limits.cpu_quota_permyriad)
        if unified:
            _write(f"{path}/cpu.max", f"{quota} {CPU_PERIOD_US}")
        else:
            _write(f"{path}/cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(f"{path}/cpu.cfs_quota_us", str(quota))


# --- waiting -----------------------------------------------------------------------------------


async def _wait_until_empty(cgroups: Cgroups, cgroup: Cgroup) -> None:
    """Poll with a backoff from 1 ms (to 100 ms); without ``cgroup.kill``, kill again each time.

    Why not inotify on ``cgroup.events``: the kernel rate-limits its notifications to one per
    10 ms per file (``CGROUP_FILE_NOTIFY_MIN_INTV``) and sends them from a workqueue, and closing
    an inotify descriptor waits for an SRCU grace period. Measured here: a killed pair of
    processes leaves the cgroup 1-3 ms after ``cgroup.kill``, which polling sees at 1.5-4 ms;
    with a watch, the wait ended 8-17 ms after the kill, most of it in ``close()``.
    """
    atomic = cgroups.has_kill(cgroup)
    delay = 0.001
    while not cgroups.is_empty(cgroup):
        if not atomic:
            cgroups.kill(cgroup)  # what was forked since the last pass
        await trio.sleep(delay)
        delay = min(delay * 2, 0.1)


# ASYNC109: the timeout is not a cancellation: running out of it is the TeardownError that keeps a
# UID from being released, and the caller shields teardown from its own cancellation.
async def kill_and_wait(
    cgroups: Cgroups,
    cgroup: Cgroup,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> None:
    """Kill every process of the cgroup, wait until none is left, and remove the cgroup.

    Args:
        cgroups: the hierarchies.
        cgroup: the invocation's cgroup (from :meth:`Cgroups.create` or
            :meth:`Cgroups.leftovers`).
        timeout: seconds to wait for the processes to die and the directories to go.

    Raises:
        TeardownError: processes survived ``timeout`` seconds after SIGKILL (stuck in the
            kernel, in uninterruptible sleep), or a directory could not be removed. The
            invocation's UID must then not be released.
    """
    with trio.move_on_after(timeout):
        cgroups.kill(cgroup)
        await _wait_until_empty(cgroups, cgroup)
        delay = 0.001
        while cgroups._remove_once(cgroup):
            await trio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return
    left = cgroups.pids(cgroup)
    if left:
        pids = " ".join(str(pid) for pid in sorted(left))
        msg = (
            f"cgroup {cgroup.name}: {len(left)} process(es) survived SIGKILL "
            f"for {timeout:g} s: {pids}"
        )
        raise TeardownError(msg)
    if busy := cgroups._remove_once(cgroup):
        path, error = busy[0]
        raise _fail(error, "rmdir", path)
