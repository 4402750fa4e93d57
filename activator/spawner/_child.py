"""Apply a :class:`~activator.sandbox.SpawnPlan` in the spawner's forked child, then exec.

Rule 1: :func:`run` never returns. It either replaces the process with the handler (``execve``)
or writes one failure report to the report pipe and leaves with ``os._exit(127)``; a ``finally``
guarantees the exit even for an exception nobody expected, so a child never runs on in the
spawner's loop.

Rule 2: the stages run in the order :mod:`activator.sandbox` documents (cgroup, namespaces,
mount, fds, rlimit, nice, umask, chdir, session, keyring, privileges, exec), and a failure names its
stage and the thing at fault: ``mount /var/lib/private: Permission denied``.

Rule 3: the child dies with the spawner. ``PR_SET_PDEATHSIG`` (SIGKILL) is set first thing and
again after ``setresuid`` (a credential change clears it), each time followed by a look at the
spawner's pidfd, since the spawner may have died before the setting.

Theory of operation, the parts the plan does not spell out:

- Every bind source (and the device nodes of a private /dev) is opened with
  ``open_tree(OPEN_TREE_CLONE)`` before the first mount step, so a later step (a read-only
  ``/``, a tmpfs over the source's parent) cannot hide or change it; the copies keep the
  attributes of their source mounts, and the step sets the plan's flags on the detached copy
  before ``move_mount`` puts it in place (so a read-only bind is never writable, not even
  briefly).
- ``mount_setattr`` works only on the root of a mount; READ_ONLY and READ_WRITE of a path that
  is not one first bind the path onto itself, as systemd does.
- INACCESSIBLE binds a mode-0 directory or file from a small read-only tmpfs made for the child
  with ``fsopen``/``fsmount``. That tmpfs is never attached anywhere, so nothing is left on the
  host; cloning from a detached mount needs a recent kernel (it works on 6.18).
- Kernel keys (``keyring``): just before it drops to its UID, every handler joins a new
  anonymous session keyring of its own (``KEYCTL_JOIN_SESSION_KEYRING``), linked to nothing,
  owned by root (so it is not charged to the UID: a UID's key count shows only keys the
  handler made, and a released UID is not busy while the kernel frees the empty keyring) and
  possessed by the handler with every right, in the spirit of systemd's
  ``KeyringMode=private`` (its default for system services; ``setup_keyring()`` of
  ``src/core/execute.c``, which makes it owned by the service's user). Without it a handler
  would share the spawner's session keyring (under systemd, the activator service's:
  possessed by every handler, so one handler's keys there are every other handler's to
  read), or, with none, fall back to its UID's user-session keyring, which outlives the
  invocation. The user keyring is not linked in
  (that is ``KeyringMode=shared``): keys a handler puts in its UID's keyrings explicitly are
  cleared at teardown by :func:`clear_keyrings`. A kernel without keys (ENOSYS) has nothing to
  share, so that error alone is no failure.
- Descriptors move in two phases so that a target may be any source's number: every source, the
  report pipe and /dev/null are first copied above the highest target (close-on-exec), then
  ``close_range(CLOSE_RANGE_CLOEXEC)`` marks every descriptor close-on-exec, then ``dup2``
  places the copies on their targets (``dup2`` clears close-on-exec on its target only). So
  everything but the targets is closed by the exec itself, and the report pipe stays usable
  until then.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import stat
import struct
import termios
from collections.abc import Callable, Sequence
from typing import Final, NoReturn

from activator import sandbox
from activator.sandbox import Mount, MountKind, SpawnPlan
from activator.spawner import _linux

#: The device nodes of a private /dev (PrivateDevices=yes), bound from the host's /dev.
DEVICE_NODES: Final = ("null", "zero", "full", "random", "urandom", "tty")
_DEVICE_LINKS: Final = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
# The stages, in the order they run (activator.sandbox); a report names one of them.
CGROUP: Final = "cgroup"
NAMESPACES: Final = "namespaces"
MOUNT: Final = "mount"
RLIMIT: Final = "rlimit"
NICE: Final = "nice"
FDS: Final = "fds"
CHDIR: Final = "chdir"
SESSION: Final = "session"
PRIVILEGES: Final = "privileges"
KEYRING: Final = "keyring"
EXEC: Final = "exec"
#: A failure outside the stages: a bug, reported rather than lost.
INTERNAL: Final = "internal"
_DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_IFF_UP: Final = 0x1
_IFREQ: Final = struct.Struct("16sH22x")


class _Failure(Exception):
    """A stage failed: what the report says."""

    def __init__(self, stage: str, error: int, what: str | None) -> None:
        super().__init__(stage, error, what)
        self.stage = stage
        self.errno = error
        where = f" {what}" if what else ""
        self.message = f"{stage}{where}: {os.strerror(error)}"


def _failure(stage: str, error: OSError, what: str | None = None) -> _Failure:
    """The failure of ``stage`` for ``error``, naming the path the error names, else ``what``."""
    where = error.filename if isinstance(error.filename, str) else what
    return _Failure(stage, error.errno or errnos.EIO, where)


def run(
    plan: SpawnPlan,
    fds: Sequence[int],
    *,
    report_fd: int,
    spawner_watch: select.poll,
    control_fd: int,
    last_cap: int,
) -> NoReturn:
    """Apply ``plan`` and exec its program; on failure report it on ``report_fd`` and exit 127.

    Args:
        plan: the plan.
        fds: the passed descriptors, as numbered in this process; ``plan.fd_map`` indexes them.
        report_fd: the write end of the close-on-exec report pipe.
        spawner_watch: a poll object watching a pidfd of the spawner (made once, in the
            spawner), to notice that the spawner died before PDEATHSIG was set.
        control_fd: the spawner's control socket, closed at once (only the spawner talks on it).
        last_cap: the highest capability number of the kernel (``cap_last_cap``).
    """
    try:
        gc.disable()
        child = _Child(plan, fds, report_fd, spawner_watch, last_cap)
        try:
            os.close(control_fd)
            child.apply()
        except _Failure as failure:
            child.report(failure.stage, failure.errno, failure.message)
        except BaseException as error:  # anything at all is reported, then the child exits
            child.report(INTERNAL, errnos.EIO, f"internal {type(error).__name__}: {error}")
    finally:
        os._exit(sandbox.EXIT_SPAWN_FAILED)


def clear_keyrings(
    uid: int, gid: int, *, report_fd: int, spawner_watch: select.poll, control_fd: int
) -> NoReturn:
    """Become ``uid``/``gid`` and clear its user and user-session keyrings; exit 0 when both
    are cleared, else report the first failure (stage ``keyring``) and exit 127.

    Only a process of the UID can: root has no override for another user's keyrings (and a
    UID's user keyring is found only by the special IDs ``@u`` and ``@us``, which name the
    caller's own). Looking either up makes both if they do not exist yet (Linux 6.18 creates
    them on any lookup, whatever ``KEYCTL_GET_KEYRING_ID``'s create flag says): the caller asks
    only for a UID that has keys already. The process never execs and never returns.

    Args:
        uid, gid: the lease's IDs (not 0).
        report_fd: the write end of the close-on-exec report pipe.
        spawner_watch: a poll object watching a pidfd of the spawner.
        control_fd: the spawner's control socket, closed at once.
    """
    code = sandbox.EXIT_SPAWN_FAILED
    try:
        gc.disable()
        os.close(control_fd)
        step = "PR_SET_PDEATHSIG"
        try:
            _die_with_spawner(spawner_watch)
            step = "setgroups"
            os.setgroups([])
            step = f"setresgid {gid}"
            os.setresgid(gid, gid, gid)
            step = f"setresuid {uid}"
            os.setresuid(uid, uid, uid)
            step = "PR_SET_PDEATHSIG"
            _die_with_spawner(spawner_watch)  # setresuid cleared it
        except OSError as error:
            denied = _Failure(PRIVILEGES, error.errno or errnos.EPERM, step)
            _report(report_fd, denied.stage, denied.errno, denied.message)
        else:
            failure: _Failure | None = None
            for name, keyring in (
                ("@u", _linux.KEY_SPEC_USER_KEYRING),
                ("@us", _linux.KEY_SPEC_USER_SESSION_KEYRING),
            ):
                try:
                    _linux.keyctl(_linux.KEYCTL_CLEAR, keyring)
                except OSError as error:
                    failure = failure or _failure(KEYRING, error, f"clear {name} of UID {uid}")
            if failure is None:
                code = 0
            else:
                _report(report_fd, failure.stage, failure.errno, failure.message)
    except BaseException as error:  # anything at all is reported, then the child exits
        _report(report_fd, INTERNAL, errnos.EIO, f"internal {type(error).__name__}: {error}")
    finally:
        os._exit(code)


def _report(report_fd: int, stage: str, error: int, message: str) -> None:
    """Write the one failure report (a short JSON object, so one atomic pipe write)."""
    # The report is the pipe's only write, into an empty pipe of 64 KiB: it goes in whole.
    report = {"stage": stage, "errno": error, "message": message[:8192]}
    with contextlib.suppress(OSError):
        os.write(report_fd, json.dumps(report).encode())


def _die_with_spawner(spawner_watch: select.poll) -> None:
    """Set the parent-death signal, and exit now if the parent is already gone."""
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if spawner_watch.poll(0):
        os._exit(sandbox.EXIT_SPAWN_FAILED)


class _Child:
    """The child's state while it applies a plan: where its report pipe currently is."""

    def __init__(
        self,
        plan: SpawnPlan,
        fds: Sequence[int],
        report_fd: int,
        spawner_watch: select.poll,
        last_cap: int,
    ) -> None:
        self.plan = plan
        self.fds = fds
        self.report_fd = report_fd
        self.spawner_watch = spawner_watch
        self.last_cap = last_cap
        self.devnull: int | None = None

    def report(self, stage: str, error: int, message: str) -> None:
        """Write the one failure report on the report pipe, wherever it is now."""
        _report(self.report_fd, stage, error, message)

    def die_with_spawner(self) -> None:
        """Set the parent-death signal, and exit now if the parent is already gone."""
        _die_with_spawner(self.spawner_watch)

    def apply(self) -> None:
        """Every stage, in order, then exec (which does not return on success)."""
        plan = self.plan
        try:
            self.die_with_spawner()
        except OSError as error:
            raise _failure(PRIVILEGES, error, "PR_SET_PDEATHSIG") from None
        # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        if {0, 1, 2} - {target for target, _ in plan.fd_map}:
            # Opened before the mounts: a private /dev or a nodev / must not make it fail.
            try:
                self.devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            except OSError as error:
                raise _failure(FDS, error, "/dev/null") from None
        self.cgroup()
        self.namespaces()
        self.mounts()
        # Descriptors before limits: the child still holds every descriptor of the spawner
        # (close-on-exec, so until its exec), one or two per live handler, and a
        # LimitNOFILE= below that count would make the copies above the targets fail (EMFILE).
        self.descriptors()
        self.limits()
        self.chdir()
        self.session()
        # As root: the keyring is then charged to root, not to the handler's UID, so the UID's
        # key count (/proc/key-users) shows only keys the handler made, and a released UID is
        # not kept busy while the kernel frees the handler's empty session keyring (60-80 ms).
        self.keyring()
        self.privileges()
        self.execute()

    def session(self) -> None:
        """A session of its own (no handler shares the spawner's), and with
        ``controlling_tty`` fd 0 as its controlling terminal (``activator run --pty``)."""
        try:
            os.setsid()
        except OSError as error:
            raise _failure(SESSION, error, "setsid") from None
        if self.plan.controlling_tty:
            try:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            except OSError as error:
                raise _failure(SESSION, error, "TIOCSCTTY") from None

    def cgroup(self) -> None:
        for path in self.plan.cgroup_procs:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            except OSError as error:
                raise _failure(CGROUP, error, path) from None

    def namespaces(self) -> None:
        plan = self.plan
        flags, names = 0, []
        for wanted, flag, name in (
            (plan.new_mount, _linux.CLONE_NEWNS, "mount"),
            (plan.new_ipc, _linux.CLONE_NEWIPC, "ipc"),
            (plan.new_net, _linux.CLONE_NEWNET, "net"),
        ):
            if wanted:
                flags |= flag
                names.append(name)
        if not flags:
            return
        try:
            _linux.unshare(flags)
        except OSError as error:
            raise _failure(NAMESPACES, error, ",".join(names)) from None
        if plan.new_net:
            try:
                _loopback_up()
            except OSError as error:
                raise _failure(NAMESPACES, error, "lo") from None

    def mounts(self) -> None:
        plan = self.plan
        if not plan.new_mount:
            if plan.mounts:
                raise _Failure(MOUNT, errnos.EINVAL, "(mounts need a new mount namespace)")
            return
        try:
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE, None)
        except OSError as error:
            raise _failure(MOUNT, error, "/") from None
        trees: dict[int, int | None] = {}
        devices: dict[str, int] = {}
        scratch: list[int] = []
        # Open every source first: no later step may cover or change one.
        for index, step in enumerate(plan.mounts):
            if step.kind in (MountKind.BIND, MountKind.BIND_READ_ONLY):
                trees[index] = _open_source(step)
            elif step.kind is MountKind.DEVICES and not devices:
                for name in DEVICE_NODES:
                    path = f"/dev/{name}"
                    try:
                        devices[name] = _linux.open_tree(path, _CLONE)
                    except OSError as error:
                        raise _failure(MOUNT, error, path) from None
        for index, step in enumerate(plan.mounts):
            try:
                _apply_mount(step, trees.get(index), devices, scratch)
            except OSError as error:
                raise _failure(MOUNT, error, step.target) from None

    def limits(self) -> None:
        plan = self.plan
        for limit in plan.rlimits:
            try:
                resource.setrlimit(limit.resource, (limit.soft, limit.hard))
            except (OSError, ValueError) as error:
                code = error.errno if isinstance(error, OSError) else errnos.EINVAL
                raise _Failure(
                    RLIMIT, code or errnos.EINVAL, _rlimit_name(limit.resource)
                ) from None
        if plan.nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, plan.nice)
            except OSError as error:
                raise _failure(NICE, error, str(plan.nice)) from None
        os.umask(plan.umask)

    def descriptors(self) -> None:
        plan = self.plan
        targets = {target for target, _ in plan.fd_map}
        floor = max([2, *targets]) + 1
        try:
            self.report_fd = fcntl.fcntl(self.report_fd, fcntl.F_DUPFD_CLOEXEC, floor)
        except OSError as error:
            raise _failure(FDS, error, "report pipe") from None
        copies: dict[int, int] = {}
        for target, index in plan.fd_map:
            if index in copies:
                continue
            if not 0 <= index < len(self.fds):
                raise _Failure(FDS, errnos.EBADF, f"{target} (no passed descriptor {index})")
            try:
                copies[index] = fcntl.fcntl(self.fds[index], fcntl.F_DUPFD_CLOEXEC, floor)
            except OSError as error:
                raise _failure(FDS, error, str(target)) from None
        try:
            null = None
            if self.devnull is not None:
                null = fcntl.fcntl(self.devnull, fcntl.F_DUPFD_CLOEXEC, floor)
            _linux.close_range_cloexec(0)
            for target, index in plan.fd_map:
                os.dup2(copies[index], target, inheritable=True)
            for target in (0, 1, 2):
                if target not in targets and null is not None:
                    os.dup2(null, target, inheritable=True)
        except OSError as error:
            raise _failure(FDS, error) from None

    def chdir(self) -> None:
        plan = self.plan
        try:
            os.chdir(plan.working_directory)
        except FileNotFoundError:
            if not plan.working_directory_optional:
                raise _Failure(CHDIR, errnos.ENOENT, plan.working_directory) from None
            os.chdir("/")
        except OSError as error:
            raise _failure(CHDIR, error, plan.working_directory) from None

    def privileges(self) -> None:
        plan = self.plan
        step = "PR_CAPBSET_DROP"
        try:
            if not plan.keep_capabilities:
                for capability in range(self.last_cap + 1):
                    _linux.prctl(_linux.PR_CAPBSET_DROP, capability)
            step = "setgroups"
            os.setgroups(list(plan.groups))
            step = f"setresgid {plan.gid}"
            os.setresgid(plan.gid, plan.gid, plan.gid)
            step = f"setresuid {plan.uid}"
            os.setresuid(plan.uid, plan.uid, plan.uid)
            if plan.no_new_privileges:
                step = "PR_SET_NO_NEW_PRIVS"
                _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
            if not plan.keep_capabilities:
                step = "capset"
                _linux.clear_capabilities()
            # A credential change cleared the parent-death signal: set it again.
            step = "PR_SET_PDEATHSIG"
            self.die_with_spawner()
        except OSError as error:
            raise _Failure(PRIVILEGES, error.errno or errnos.EPERM, step) from None

    def keyring(self) -> None:
        """A new session keyring of the handler's own (see the module docstring), made as root:
        the handler possesses it (all possessor rights), and keys it adds are its UID's."""
        try:
            _linux.keyctl(_linux.KEYCTL_JOIN_SESSION_KEYRING, 0)
        except OSError as error:
            if error.errno != errnos.ENOSYS:
                raise _failure(KEYRING, error, "KEYCTL_JOIN_SESSION_KEYRING") from None
        if self.plan.uid != 0:
            # A handler must not make its user keyring uncleanable (KEYCTL_SETPERM): its UID
            # could then never be released. Installed as root, so no_new_privs is not needed.
            try:
                _linux.deny_keyctl_setperm()
            except OSError as error:
                raise _failure(KEYRING, error, "seccomp") from None

    def execute(self) -> NoReturn:
        plan = self.plan
        env = {
            name: str(os.getpid()) if name == "LISTEN_PID" else value for name, value in plan.env
        }
        if "/" in plan.path:
            candidates = [plan.path]
        else:
            search = env.get("PATH", _DEFAULT_PATH)
            candidates = [f"{folder or '.'}/{plan.path}" for folder in search.split(":")]
        found: OSError | None = None
        for candidate in candidates:
            try:
                os.execve(candidate, list(plan.argv), env)
            except (FileNotFoundError, NotADirectoryError) as error:
                found = found or error
            except PermissionError as error:
                # As execvp does: a later folder may still hold a runnable file of that name.
                if found is None or found.errno != errnos.EACCES:
                    found = error
            except OSError as error:
                raise _Failure(EXEC, error.errno or errnos.EIO, candidate) from None
        assert found is not None  # candidates is never empty
        where = found.filename if found.errno == errnos.EACCES else plan.path
        raise _Failure(EXEC, found.errno or errnos.ENOENT, str(where))


_CLONE: Final = _linux.OPEN_TREE_CLONE | _linux.OPEN_TREE_CLOEXEC


def _open_source(step: Mount) -> int | None:
    """A detached copy of a bind source, or None for a missing optional one."""
    assert step.source is not None  # a bind always has a source (plan)
    flags = _CLONE | (_linux.AT_RECURSIVE if step.recursive else 0)
    try:
        return _linux.open_tree(step.source, flags)
    except FileNotFoundError:
        if step.optional:
            return None
        raise _Failure(MOUNT, errnos.ENOENT, step.source) from None
    except OSError as error:
        raise _failure(MOUNT, error, step.source) from None


def _attributes(step: Mount) -> int:
    return (
        (_linux.MOUNT_ATTR_NOSUID if step.nosuid else 0)
        | (_linux.MOUNT_ATTR_NODEV if step.nodev else 0)
        | (_linux.MOUNT_ATTR_NOEXEC if step.noexec else 0)
    )


def _flags(step: Mount) -> int:
    return (
        (_linux.MS_NOSUID if step.nosuid else 0)
        | (_linux.MS_NODEV if step.nodev else 0)
        | (_linux.MS_NOEXEC if step.noexec else 0)
    )


def _apply_mount(
    step: Mount, tree: int | None, devices: dict[str, int], scratch: list[int]
) -> None:
    """One mount step; OSError names the path at fault when it is not ``step.target``."""
    kind = step.kind
    if kind in (MountKind.BIND, MountKind.BIND_READ_ONLY):
        if tree is None:
            return  # an optional source that does not exist
        attributes = _attributes(step)
        if kind is MountKind.BIND_READ_ONLY:
            attributes |= _linux.MOUNT_ATTR_RDONLY
        if attributes:
            _linux.mount_setattr("", dirfd=tree, attr_set=attributes, recursive=step.recursive)
        _optional(step, _linux.move_mount, tree, step.target)
        os.close(tree)
    elif kind is MountKind.READ_ONLY:
        attributes = _linux.MOUNT_ATTR_RDONLY | _attributes(step)
        _optional(step, _set_attributes, step, attributes, 0)
    elif kind is MountKind.READ_WRITE:
        _optional(step, _set_attributes, step, 0, _linux.MOUNT_ATTR_RDONLY)
    elif kind is MountKind.TMPFS:
        _optional(
            step, _linux.mount, "tmpfs", step.target, "tmpfs", _flags(step), step.options or None
        )
    elif kind is MountKind.PROC:
        _optional(step, _linux.mount, "proc", step.target, "proc", _flags(step), None)
    elif kind is MountKind.MQUEUE:
        _optional(step, _linux.mount, "mqueue", step.target, "mqueue", _flags(step), None)
    elif kind is MountKind.DEVICES:
        _private_dev(step.target, devices)
    elif kind is MountKind.INACCESSIBLE:
        _optional(step, _inaccessible, step.target, scratch)
    elif kind is MountKind.MKDIR:
        _mkdir(step.target, int(step.options, 8) if step.options else 0o755)
    elif kind is MountKind.SYMLINK:
        os.symlink(step.source or "", step.target)


def _optional(step: Mount, action: Callable[..., object], *args: object) -> None:
    """Run ``action(*args)``; a missing target is no error for an optional step."""
    try:
        action(*args)
    except FileNotFoundError:
        if not step.optional:
            raise


def _set_attributes(step: Mount, attr_set: int, attr_clr: int) -> None:
    """mount_setattr on ``step.target``, first binding it onto itself when it is no mount root."""
    try:
        _linux.mount_setattr(
            step.target, attr_set=attr_set, attr_clr=attr_clr, recursive=step.recursive
        )
    except OSError as error:
        if error.errno != errnos.EINVAL:
            raise
        tree = _linux.open_tree(
            step.target, _CLONE | (_linux.AT_RECURSIVE if step.recursive else 0)
        )
        try:
            _linux.mount_setattr(
                "", dirfd=tree, attr_set=attr_set, attr_clr=attr_clr, recursive=step.recursive
            )
            _linux.move_mount(tree, step.target)
        finally:
            os.close(tree)


def _private_dev(target: str, devices: dict[str, int]) -> None:
    """A tmpfs on ``target`` with the usual device nodes, a new devpts, and shm and mqueue."""
    _linux.mount("tmpfs", target, "tmpfs", _linux.MS_NOSUID | _linux.MS_NOEXEC, "mode=0755,size=4m")
    for name in DEVICE_NODES:
        node = f"{target}/{name}"
        os.close(os.open(node, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        _linux.move_mount(devices[name], node)
    os.mkdir(f"{target}/pts", 0o755)
    _linux.mount(
        "devpts",
        f"{target}/pts",
        "devpts",
        _linux.MS_NOSUID | _linux.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    for name, mode in (("shm", 0o1777), ("mqueue", 0o755)):
        _mkdir(f"{target}/{name}", mode)
    for name, link in _DEVICE_LINKS:
        os.symlink(link, f"{target}/{name}")


def _inaccessible(target: str, scratch: list[int]) -> None:
    """Cover ``target`` with an empty mode-0 directory or file of the same kind."""
    is_dir = stat.S_ISDIR(os.stat(target).st_mode)
    if not scratch:
        scratch.append(_inaccessible_nodes())
    tree = _linux.open_tree("dir" if is_dir else "reg", _CLONE, dirfd=scratch[0])
    try:
        _linux.move_mount(tree, target)
    finally:
        os.close(tree)


def _inaccessible_nodes() -> int:
    """A detached read-only tmpfs holding ``dir`` and ``reg``, both mode 0."""
    fd = _linux.fsmount_tmpfs(
        {"mode": "0755", "size": "4k"},
        _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV | _linux.MOUNT_ATTR_NOEXEC,
    )
    os.mkdir("dir", 0, dir_fd=fd)
    os.close(os.open("reg", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0, dir_fd=fd))
    os.chmod("dir", 0, dir_fd=fd)
    os.chmod("reg", 0, dir_fd=fd)
    _linux.mount_setattr("", dirfd=fd, attr_set=_linux.MOUNT_ATTR_RDONLY, recursive=False)
    return fd


def _mkdir(path: str, mode: int) -> None:
    """Create ``path`` (parents 0755) with exactly ``mode``, whatever the umask."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        _mkdir(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    os.chmod(path, mode)


def _loopback_up() -> None:
    """Bring ``lo`` up in the new network namespace (SIOCGIFFLAGS, SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ.pack(b"lo", 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def _rlimit_name(number: int) -> str:
    for name in dir(resource):
        if name.startswith("RLIMIT_") and getattr(resource, name) == number:
            return name
    return f"resource {number}"
