"""The spawn plan of one invocation: (unit, identity, descriptors, peer) -> :class:`SpawnPlan`.

Rule 1: pure. Everything the plan depends on comes in as an argument (the unit, the identity the
caller resolved, the descriptors it will pass, the peer it accepted, the contents of
``EnvironmentFile=`` it read); nothing here reads a file, asks NSS or looks at the mount table.
Whether a path exists is the spawner's question, asked through :attr:`Mount.optional`.

Rule 2: systemd's meanings (252), and where activator differs it is stricter, never laxer. Each
difference is named where it is made: no new privileges for every non-root handler, fresh
``/tmp`` and ``/dev/shm`` per invocation, submounts of ``/dev`` and ``/sys`` stay read-only under
``ProtectSystem=strict``, more than one ``ExecStart=`` is refused.

Rule 3: the mount list is in an order where each step may cover the ones before it and never
needs one after it: parents before children, a new mount before the remounts of its path,
mount points (MKDIR) only inside file systems the plan itself made, and the seals (making a
fresh tmpfs read-only once everything inside it is mounted) last.

Theory of operation: the sandbox is first collected as unordered steps, each a :class:`Mount`
with a priority taken from systemd's ``MountMode`` order in ``src/core/namespace.c`` (lower wins
when two directives name the same path). :func:`_order` keeps one step per path as systemd's
``drop_duplicates`` does, with one change: a directive that makes a new file system (a tmpfs, a
bind) always beats a plain remount of the same path, and the remount (read-only) is applied to
the new mount afterwards, so conflicting directives give the more restrictive result. Then the
paths are sorted as ``mount_path_compare`` sorts them (by component), which puts every parent
before its children: a recursive read-only remount of ``/`` comes first and every writable path
the unit names is mounted after it. systemd reaches the same result the other way round (all
mounts first, then a read-only pass that skips the other entries); a plan is a sequence, so
order does the work of systemd's deny list.

The spawner's contract, which this order relies on (``activator/sandbox.py``): bind sources are
opened before the first step, so a BIND after ``READ_ONLY /`` still gets the source as the host
has it (writable), and a bind of ``/var/lib/private/NAME`` works after a tmpfs covered
``/var/lib/private``. READ_ONLY and READ_WRITE of a path that is not a mount point bind it onto
itself first, as systemd does. MKDIR is ``mkdir -p`` and an existing directory is not an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from activator import values as v
from activator.model import ServiceUnit
from activator.sandbox import Mount, MountKind, RLimitSetting, SpawnPlan
from activator.units import SYSTEM_DIRECTORIES

#: systemd's default ``PATH`` for services (``DEFAULT_PATH``, merged /usr).
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"

#: systemd's ``DefaultLimitNOFILE=1024:524288`` (since 240): select() stays safe by default, and
#: a handler never inherits whatever limit the activator raised its own to. Capped at the
#: activator's own hard limit (:class:`HostFacts`): raising a hard limit needs CAP_SYS_RESOURCE,
#: which root in a container often lacks.
DEFAULT_LIMIT_NOFILE: Final = RLimitSetting(7, 1024, 524288)

#: ``RLIMIT_*`` numbers of asm-generic/resource.h (x86, arm, arm64, riscv, ppc, s390; alpha, mips
#: and sparc number NOFILE, NPROC and AS differently). The ``resource`` module is not imported:
#: this module is pure, and the numbers are the kernel's ABI, not the running host's.
RLIMITS: Final = (
    ("limit_cpu", "LimitCPU", 0),
    ("limit_fsize", "LimitFSIZE", 1),
    ("limit_data", "LimitDATA", 2),
    ("limit_stack", "LimitSTACK", 3),
    ("limit_core", "LimitCORE", 4),
    ("limit_nproc", "LimitNPROC", 6),
    ("limit_nofile", "LimitNOFILE", 7),
    ("limit_as", "LimitAS", 9),
)

#: The directory kinds: (kind, directive, unit field, %-specifier of their root).
_DIRECTORY_KINDS: Final = (
    ("runtime", "RuntimeDirectory", "runtime_directory", "t"),
    ("state", "StateDirectory", "state_directory", "S"),
    ("cache", "CacheDirectory", "cache_directory", "C"),
    ("logs", "LogsDirectory", "logs_directory", "L"),
)

_INVOCATION_ID = re.compile(r"[0-9a-f]{32}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHITESPACE = " \t\n\r"  # systemd's WHITESPACE, which splits $VAR words


class PlanError(Exception):
    """Something the unit asks for cannot be planned with what the caller gave.

    The message names the unit and the directive: ``echo@1.service: StandardInput=socket: needs
    exactly one socket (got 0)``.
    """


@attrs.frozen
class Identity:
    """Who the handler runs as, resolved by the caller (a lease, a static user, or root).

    Attributes:
        uid, gid: the numbers the handler runs as.
        user, group: their names, for ``USER`` and ``LOGNAME``.
        home, shell: ``HOME`` and ``SHELL``, and where ``WorkingDirectory=~`` goes.
        groups: supplementary groups, by number (``setgroups``); empty for dynamic users.
        dynamic: a leased dynamic user.
    """

    uid: int
    gid: int
    user: str
    group: str
    home: str = "/"
    shell: str = "/usr/sbin/nologin"
    groups: tuple[int, ...] = ()
    dynamic: bool = True


@attrs.frozen
class Peer:
    """What the listener learned about the connection, for the handler's environment.

    Attributes:
        proto: ``TCP``, ``TCP6`` or ``UNIX``.
        remote_addr, remote_port, local_addr, local_port: the two ends; for UNIX the addresses
            are socket paths (``@name`` for abstract ones), where known.
        uid, gid, pid: ``SO_PEERCRED`` of a UNIX peer.
    """

    proto: str = attrs.field(validator=attrs.validators.in_(("TCP", "TCP6", "UNIX")))
    remote_addr: str | None = None
    remote_port: int | None = None
    local_addr: str | None = None
    local_port: int | None = None
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None


@attrs.frozen
class Descriptors:
    """The descriptors the caller passes (SCM_RIGHTS), by index into that list, and their roles.

    Attributes:
        sockets: become fds 3, 4, ... (``LISTEN_FDS``), or the standard streams for
            ``StandardInput=socket`` and friends.
        socket_names: ``LISTEN_FDNAMES``, one per socket, or empty (names unknown).
        stdin, stdout, stderr: explicit standard streams (``activator run --pipe``/``--pty``);
            None takes them from ``StandardInput=``, ``StandardOutput=``, ``StandardError=``.
        log: where ``journal``, ``kmsg`` (and ``+console``) output goes; None: ``/dev/null``.
        files: ``file:``, ``append:`` and ``truncate:`` paths the caller opened as
            :func:`stdio_files` asks, each with its index.
        terminal: ``stdin`` is a terminal that becomes the controlling terminal (``--pty``).
    """

    sockets: tuple[int, ...] = ()
    socket_names: tuple[str, ...] = ()
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    log: int | None = None
    files: tuple[tuple[str, int], ...] = ()
    terminal: bool = False


@attrs.frozen
class HostFacts:
    """Facts about the activator's host a plan depends on. Whether a path exists is not one:
    that is left to the spawner (:attr:`Mount.optional`), so one plan fits every host.

    Attributes:
        nofile_hard: the activator's own hard ``RLIMIT_NOFILE`` (-1: infinity), which caps
            :data:`DEFAULT_LIMIT_NOFILE`; None: no default, the handler inherits the limit.
    """

    nofile_hard: int | None = None


def public_directories(service: ServiceUnit) -> dict[str, tuple[str, ...]]:
    """The public paths of the unit's directories by kind (``runtime``, ``state``, ``cache``,
    ``logs``), kinds without directories left out: ``{"state": ("/var/lib/wuff",)}``.

    With ``DynamicUser=yes`` the state, cache and logs paths are the symlinks into the boundary
    directory (``/var/lib/wuff -> private/wuff``); the variables point at them, as in systemd.
    """
    out = {}
    for kind, _, field, specifier in _DIRECTORY_KINDS:
        names: tuple[str, ...] = getattr(service, field)
        if names:
            base = SYSTEM_DIRECTORIES[specifier]
            out[kind] = tuple(dict.fromkeys(f"{base}/{name}" for name in names))
    return out


def stdio_files(service: ServiceUnit) -> tuple[tuple[str, str], ...]:
    """The files the caller must open for ``file:``, ``append:`` and ``truncate:`` streams, as
    (path, how): ``read`` (StandardInput=file:), ``write`` (no truncation, as systemd),
    ``append``, ``truncate``, or ``readwrite`` when input and output name the same file."""
    wanted: dict[str, str] = {}
    if service.standard_input.kind == "file" and service.standard_input.path is not None:
        wanted[service.standard_input.path] = "read"
    for spec in (service.standard_output, service.standard_error):
        if spec.path is None:
            continue
        if spec.path not in wanted:
            wanted[spec.path] = "write" if spec.kind == "file" else spec.kind
        elif wanted[spec.path] == "read":
            wanted[spec.path] = "readwrite"
        # An output file named twice is opened once, and both streams share it.
    return tuple(wanted.items())


def build_plan(
    service: ServiceUnit,
    identity: Identity,
    *,
    invocation: str,
    descriptors: Descriptors = Descriptors(),
    peer: Peer | None = None,
    cgroup_procs: tuple[str, ...] = (),
    extra_env: Sequence[tuple[str, str]] = (),
    resolved_path: str | None = None,
    host: HostFacts = HostFacts(),
) -> SpawnPlan:
    """Plan one invocation of ``service``.

    Args:
        service: the unit (an instance already has its ``%i`` resolved).
        identity: who the handler runs as.
        invocation: the invocation id, 32 lowercase hex digits (``INVOCATION_ID``).
        descriptors: what the caller passes, and where each goes.
        peer: the connection's peer (Accept=yes), for ``REMOTE_ADDR`` and the UCSPI variables.
        cgroup_procs: the invocation's ``cgroup.procs`` files.
        extra_env: the assignments of the unit's ``EnvironmentFile=`` files, read and parsed by
            the caller, in file order; they override ``Environment=`` and the variables
            activator sets, as in systemd.
        resolved_path: the program when the caller searched a bare name itself; else the
            unit's path is used (a bare name is searched in the plan's ``PATH``).
        host: facts about the host.

    Returns:
        The plan.

    Raises:
        PlanError: the unit asks for something the descriptors do not provide, has more than
            one command, or its command line expands to nothing.
        ValueError: ``invocation`` is not an invocation id, or ``extra_env`` holds an invalid
            name or a NUL (the caller's mistakes, not the unit's).
    """
    unit = service.name.name
    if _INVOCATION_ID.fullmatch(invocation) is None:
        msg = f"invocation id must be 32 lowercase hex digits (got {invocation!r})"
        raise ValueError(msg)
    if not service.exec_start:
        msg = f"{unit}: ExecStart=: no command"
        raise PlanError(msg)
    if len(service.exec_start) > 1:
        msg = (
            f"{unit}: ExecStart=: {len(service.exec_start)} commands; activator runs one "
            "command per invocation (Type=oneshot with several ExecStart= is not supported)"
        )
        raise PlanError(msg)
    command = service.exec_start[0]
    fd_map, socket_stdio = _fd_map(service, descriptors)
    env = _environment(service, identity, invocation, descriptors, socket_stdio, peer, extra_env)
    argv = replace_env_argv(command.argv, env) if command.expand_environment else command.argv
    if not argv:
        msg = f"{unit}: ExecStart=: the command line expands to no arguments at all"
        raise PlanError(msg)
    workdir = service.working_directory
    cwd = "/" if workdir is None else identity.home if workdir.path == "~" else workdir.path
    return SpawnPlan(
        invocation=invocation,
        unit=unit,
        path=resolved_path or command.path,
        argv=argv,
        env=tuple(env.items()),
        uid=identity.uid,
        gid=identity.gid,
        groups=identity.groups,
        new_pid=True,
        new_mount=True,
        new_ipc=True,
        new_net=service.private_network,
        mounts=sandbox_mounts(service),
        cgroup_procs=cgroup_procs,
        rlimits=_rlimits(service, host),
        nice=service.nice,
        umask=service.umask,
        working_directory=cwd,
        working_directory_optional=workdir is not None and workdir.ignore_missing,
        fd_map=fd_map,
        # Stricter than systemd: every non-root handler gets no_new_privs. Its capabilities are
        # dropped anyway, and a setuid-root binary would still give it euid 0, which owns
        # root's files without any capability: the regained privilege DESIGN.md's invariant 4
        # forbids. A root handler follows NoNewPrivileges=.
        no_new_privileges=service.no_new_privileges or identity.uid != 0,
        keep_capabilities=identity.uid == 0 and not identity.dynamic,
        controlling_tty=descriptors.terminal,
    )


# ---------------------------------------------------------------------------------------------
# Descriptors


def _fd_map(service: ServiceUnit, d: Descriptors) -> tuple[tuple[tuple[int, int], ...], bool]:
    """The (target, index) pairs, and whether the socket went to the standard streams.

    As systemd's exec_spawn(): when a standard stream is ``socket``, exactly one socket must be
    passed, it becomes that stream, and it is not also passed as fd 3 (no ``LISTEN_FDS``);
    otherwise the sockets land on 3, 4, ...
    """
    unit = service.name.name
    if d.terminal and d.stdin is None:
        msg = f"{unit}: a controlling terminal needs an explicit standard input"
        raise PlanError(msg)
    streams = (
        ("StandardInput", service.standard_input, d.stdin),
        ("StandardOutput", service.standard_output, d.stdout),
        ("StandardError", service.standard_error, d.stderr),
    )
    socket_stdio = any(spec.kind == "socket" and given is None for _, spec, given in streams)
    if socket_stdio and len(d.sockets) != 1:
        directive = next(k for k, spec, given in streams if spec.kind == "socket" and given is None)
        msg = f"{unit}: {directive}=socket: needs exactly one socket (got {len(d.sockets)})"
        raise PlanError(msg)
    files = dict(d.files)
    targets: list[int | None] = []
    for fd, (directive, spec, given) in enumerate(streams):
        targets.append(given if given is not None else _stream(unit, fd, directive, spec, d, files))
        if fd == 1 and spec.kind == "inherit" and given is None:
            targets[1] = targets[0]  # a bidirectional stdin (socket, tty) is shared
        if fd == 2 and spec.kind == "inherit" and given is None:
            targets[2] = targets[1]  # stderr follows stdout, whatever it became
    pairs = [(fd, index) for fd, index in enumerate(targets) if index is not None]
    if not socket_stdio:
        pairs.extend((3 + n, index) for n, index in enumerate(d.sockets))
    return tuple(pairs), socket_stdio


def _stream(
    unit: str, fd: int, directive: str, spec: v.IOSpec, d: Descriptors, files: Mapping[str, int]
) -> int | None:
    """The passed descriptor for one standard stream set by its directive (None: /dev/null)."""
    kind = spec.kind
    if kind in ("null", "inherit"):  # inherit is resolved by the caller (stdout and stderr)
        return None
    if kind == "socket":
        return d.sockets[0]
    if kind in ("journal", "kmsg", "journal+console", "kmsg+console"):
        return d.log
    if kind in ("file", "append", "truncate") and spec.path is not None:
        if spec.path not in files:
            msg = f"{unit}: {directive}={kind}:{spec.path}: the file was not opened by the caller"
            raise PlanError(msg)
        return files[spec.path]
    # tty, tty-force, tty-fail: systemd opens TTYPath=; activator opens no terminal itself.
    if fd > 0 and d.terminal and d.stdin is not None:
        return d.stdin
    msg = f"{unit}: {directive}={kind}: activator opens no terminal (use activator run --pty)"
    raise PlanError(msg)


# ---------------------------------------------------------------------------------------------
# Environment


def _environment(
    service: ServiceUnit,
    identity: Identity,
    invocation: str,
    d: Descriptors,
    socket_stdio: bool,
    peer: Peer | None,
    extra_env: Sequence[tuple[str, str]],
) -> dict[str, str]:
    """The whole environment, in order: PATH, the unit's, activator's, the files'.

    Precedence is systemd's (exec_child(): the manager's, then the executor's, then
    ``Environment=``, then ``EnvironmentFile=``): what the unit sets wins over what activator
    sets, and ``UnsetEnvironment=`` applies to the result.
    """
    unit = service.name.name
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    env.update(service.environment)
    ours: list[tuple[str, str]] = [
        ("USER", identity.user),
        ("LOGNAME", identity.user),
        ("HOME", identity.home),
        ("SHELL", identity.shell),
        ("INVOCATION_ID", invocation),
        *service.directory_environment.items(),
    ]
    if d.sockets and not socket_stdio:
        ours += [("LISTEN_FDS", str(len(d.sockets))), ("LISTEN_PID", "")]
        if d.socket_names:
            ours.append(("LISTEN_FDNAMES", _fd_names(unit, d)))
    if peer is not None:
        ours += _peer_environment(peer)
    for name, value in ours:
        env.setdefault(name, value)
    for name, value in extra_env:
        if _ENV_NAME.fullmatch(name) is None or "\0" in value:
            msg = f"environment assignment {name!r} must have a valid name and no NUL"
            raise ValueError(msg)
        env[name] = value
    for pattern in service.unset_environment:  # strv_env_delete(): NAME, or exactly NAME=VALUE
        name, equals, value = pattern.partition("=")
        if not equals or env.get(name) == value:
            env.pop(name, None)
    return env


def _fd_names(unit: str, d: Descriptors) -> str:
    if len(d.socket_names) != len(d.sockets):
        msg = f"{unit}: {len(d.socket_names)} socket names for {len(d.sockets)} sockets"
        raise PlanError(msg)
    for name in d.socket_names:  # fdname_is_valid()
        if not 0 < len(name) <= 255 or not all(" " <= c <= "~" and c != ":" for c in name):
            msg = f"{unit}: FileDescriptorName={name!r}: must be 1..255 printable ASCII, no ':'"
            raise PlanError(msg)
    return ":".join(d.socket_names)


def _peer_environment(peer: Peer) -> list[tuple[str, str]]:
    """systemd's ``REMOTE_ADDR``/``REMOTE_PORT`` and UCSPI's variables for one peer.

    UCSPI names its variables after ``PROTO``: ``TCP`` gives ``TCPREMOTEIP``, ``TCP6`` (as
    ucspi-tcp6) ``TCP6REMOTEIP``, and since most programs read the ``TCP`` names whatever the
    family, an IPv6 peer gets both. A UNIX peer is UCSPI's ``IPC`` (``IPCREMOTEEUID``...).
    """
    out: list[tuple[str, str]] = []
    if peer.remote_addr is not None:
        out.append(("REMOTE_ADDR", peer.remote_addr))
    if peer.remote_port is not None:
        out.append(("REMOTE_PORT", str(peer.remote_port)))
    if peer.proto == "UNIX":
        out.append(("PROTO", "IPC"))
        values = [
            ("IPCREMOTEEUID", peer.uid),
            ("IPCREMOTEEGID", peer.gid),
            ("IPCREMOTEPID", peer.pid),
            ("IPCREMOTEPATH", peer.remote_addr),
            ("IPCLOCALPATH", peer.local_addr),
        ]
        out += [(name, str(value)) for name, value in values if value is not None]
        return out
    out.append(("PROTO", peer.proto))
    for prefix in dict.fromkeys((peer.proto, "TCP")):
        for suffix, value in (
            ("REMOTEIP", peer.remote_addr), ("REMOTEPORT", peer.remote_port),
            ("LOCALIP", peer.local_addr), ("LOCALPORT", peer.local_port),
        ):  # fmt: skip
            if value is not None:
                out.append((prefix + suffix, str(value)))
    return out


def replace_env_argv(argv: Sequence[str], env: Mapping[str, str]) -> tuple[str, ...]:
    """Expand ``$VAR`` and ``${VAR}`` in a command line as systemd 252's replace_env_argv().

    A word that is ``$NAME`` (not ``${`` or ``$$``) is replaced by the value of NAME split at
    whitespace, with quotes and backslashes removed: zero or more words. As in systemd the whole
    rest of the word is the name, so an unset variable, or a word like ``$HOME/x``, becomes no
    word at all. In every other word ``${NAME}`` is replaced by the value as is (an unset
    variable by nothing) and ``$$`` by ``$``; ``$NAME`` inside a word, ``${NAME:-x}`` and an
    unterminated ``${`` stay as written.
    """
    out: list[str] = []
    for word in argv:
        if word.startswith("$") and word[1:2] not in ("{", "$"):
            value = env.get(word[1:])
            out.extend(() if value is None else _split_relaxed(value))
        else:
            out.append(_replace_env(word, env))
    return tuple(out)


def _replace_env(word: str, env: Mapping[str, str]) -> str:
    """replace_env() without flags: ``${NAME}`` and ``$$`` only."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if word[i] != "$" or i + 1 == len(word):
            out.append(word[i])
            i += 1
        elif word[i + 1] == "$":
            out.append("$")
            i += 2
        elif word[i + 1] == "{":
            end = i + 2
            while end < len(word) and word[end] not in "}:":
                end += 1
            if end == len(word):  # unterminated: the rest stays as written
                out.append(word[i:])
                break
            if word[end] == ":":  # ${NAME:-...} is not supported here: as written
                out.append(word[i : end + 1])
            else:
                out.append(env.get(word[i + 2 : end], ""))
            i = end + 1
        else:  # $NAME inside a word is not expanded
            out.append("$")
            i += 1
    return "".join(out)


def _split_relaxed(text: str) -> list[str]:
    """Split a value into words as extract_first_word(EXTRACT_RELAX|EXTRACT_UNQUOTE):
    quotes group and are removed, a backslash takes the next character literally, and an
    unterminated quote or a trailing backslash just ends the word."""
    words: list[str] = []
    i = 0
    while True:
        while i < len(text) and text[i] in _WHITESPACE:
            i += 1
        if i >= len(text):
            return words
        out: list[str] = []
        quote = ""
        while i < len(text) and (quote or text[i] not in _WHITESPACE):
            char = text[i]
            if char == "\\":
                out.append(text[i + 1 : i + 2])
                i += 2
                continue
            if char == quote:
                quote = ""
            elif not quote and char in "'\"":
                quote = char
            else:
                out.append(char)
            i += 1
        words.append("".join(out))


# ---------------------------------------------------------------------------------------------
# Limits


def _rlimits(service: ServiceUnit, host: HostFacts) -> tuple[RLimitSetting, ...]:
    out = []
    for field, _, resource in RLIMITS:
        limit = getattr(service, field)
        if limit is not None:
            soft = -1 if limit.soft is None else limit.soft
            hard = -1 if limit.hard is None else limit.hard
            out.append(RLimitSetting(resource, soft, hard))
    if service.limit_nofile is None and host.nofile_hard is not None:
        cap = host.nofile_hard if host.nofile_hard >= 0 else DEFAULT_LIMIT_NOFILE.hard
        soft, hard = (
            min(limit, cap) for limit in (DEFAULT_LIMIT_NOFILE.soft, DEFAULT_LIMIT_NOFILE.hard)
        )
        out.append(RLimitSetting(DEFAULT_LIMIT_NOFILE.resource, soft, hard))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Mounts

# systemd's MountMode order (namespace.c): when two directives name one path, the lower wins.
_INACCESSIBLE, _BIND, _PRIVATE_TMP, _PRIVATE_DEV, _EMPTY_DIR, _PROC = 0, 3, 5, 7, 9, 11
_READ_ONLY, _READ_WRITE, _TMPFS, _MQUEUE, _READ_WRITE_IMPLICIT = 12, 13, 16, 20, 21

_CREATES: Final = frozenset(
    {
        MountKind.BIND,
        MountKind.BIND_READ_ONLY,
        MountKind.TMPFS,
        MountKind.PROC,
        MountKind.MQUEUE,
        MountKind.DEVICES,
    }
)
#: New, empty file systems: the plan makes the mount points inside them (MKDIR).
_FRESH: Final = frozenset({MountKind.TMPFS, MountKind.DEVICES})


@attrs.frozen
class _Step:
    mount: Mount
    priority: int
    #: Make this new file system read-only (itself only) once everything inside it is mounted.
    seal: bool = False


def _path(path: str) -> str:
    """A path as a mount target: ``/var/lib/`` and ``/var/lib`` are the same place."""
    return path.rstrip("/") or "/"


def _under(path: str, parent: str) -> bool:
    """``path`` is ``parent`` or below it."""
    return parent == "/" or path == parent or path.startswith(parent + "/")


def _host_remount(
    kind: MountKind, path: str, priority: int, *, optional: bool = False, recursive: bool = True
) -> _Step:
    # Remounts of host trees add nosuid but not nodev: nodev on "/" (or on any tree holding
    # device nodes) would reach /dev and break every device. A handler without CAP_MKNOD cannot
    # make device nodes, so nodev there would add little.
    mount = Mount(kind, _path(path), optional=optional, recursive=recursive, nodev=False)
    return _Step(mount, priority)


_CGROUP_COVER: Final = Mount(
    MountKind.TMPFS, "/sys/fs/cgroup", options="mode=0755", optional=True, noexec=True
)


def sandbox_mounts(service: ServiceUnit) -> tuple[Mount, ...]:
    """The mount steps of ``service``'s sandbox, in the order the spawner applies them (the same
    for every invocation of the unit, whoever it runs as)."""
    steps = [
        # New PID and IPC namespaces for every invocation: their /proc, a private /dev/shm, and
        # an mqueue file system (when /dev/mqueue exists: the mqueue objects live in the new IPC
        # namespace whether it is mounted or not).
        _Step(Mount(MountKind.PROC, "/proc", noexec=True), _PROC),
        _Step(Mount(MountKind.TMPFS, "/dev/shm", options="mode=1777"), _TMPFS),
        _Step(Mount(MountKind.MQUEUE, "/dev/mqueue", optional=True, noexec=True), _MQUEUE),
        # The host's cgroup tree names every live invocation and its process count; a handler
        # sees an empty, read-only directory there instead (invariant 4: it cannot see other
        # handlers). Its own cgroup was joined before the mounts.
        _Step(_CGROUP_COVER, _EMPTY_DIR, seal=True),
    ]
    steps += _protect_system(service)
    steps += _protect_home(service)
    if service.private_tmp:
        steps += [
            _Step(Mount(MountKind.TMPFS, path, options="mode=1777"), _PRIVATE_TMP)
            for path in ("/tmp", "/var/tmp")
        ]
    if service.private_devices:
        steps.append(_Step(Mount(MountKind.DEVICES, "/dev", noexec=True), _PRIVATE_DEV, seal=True))
    for entry in service.read_write_paths:
        steps.append(
            _host_remount(
                MountKind.READ_WRITE, entry.path, _READ_WRITE, optional=entry.ignore_missing
            )
        )
    for entry in service.read_only_paths:
        steps.append(
            _host_remount(
                MountKind.READ_ONLY, entry.path, _READ_ONLY, optional=entry.ignore_missing
            )
        )
    for entry in service.inaccessible_paths:
        mount = Mount(MountKind.INACCESSIBLE, _path(entry.path), optional=entry.ignore_missing)
        steps.append(_Step(mount, _INACCESSIBLE))
    for kind, entries in (
        (MountKind.BIND, service.bind_paths),
        (MountKind.BIND_READ_ONLY, service.bind_read_only_paths),
    ):
        for bind in entries:
            mount = Mount(
                kind,
                _path(bind.destination),
                source=_path(bind.source),
                optional=bind.ignore_missing,
                recursive=bind.recursive,
                # BindPaths=/dev/fuse and the like must stay usable.
                nodev=not _under(_path(bind.source), "/dev"),
            )
            steps.append(_Step(mount, _BIND))
    for tmpfs in service.temporary_file_system:
        steps.append(_temporary_file_system(tmpfs.path, tmpfs.options))
    steps += _directories(service)
    return _order(steps)


def _protect_system(service: ServiceUnit) -> list[_Step]:
    """ProtectSystem=, as systemd 252's protect_system_*_table."""
    level = service.protect_system.value
    if level == "strict":
        return [
            _host_remount(MountKind.READ_ONLY, "/", _READ_ONLY),
            # The API file systems stay writable (their own mount only: submounts such as a
            # host's read-only /sys/fs/cgroup tmpfs stay read-only, where systemd keeps the
            # host's flags; devices, ptys and the fresh /proc, /dev/shm and /dev/mqueue work).
            _host_remount(MountKind.READ_WRITE, "/dev", _READ_WRITE_IMPLICIT, recursive=False),
            _host_remount(MountKind.READ_WRITE, "/sys", _READ_WRITE_IMPLICIT, recursive=False),
            # ProtectHome= manages these, orthogonally; without it they stay writable.
            *(
                _host_remount(MountKind.READ_WRITE, path, _READ_WRITE_IMPLICIT, optional=True)
                for path in ("/home", "/root", "/run/user")
            ),
        ]
    paths = {"no": (), "yes": ("/usr",), "full": ("/usr", "/etc")}[level]
    steps = [_host_remount(MountKind.READ_ONLY, path, _READ_ONLY) for path in paths]
    if paths:
        steps += [
            _host_remount(MountKind.READ_ONLY, path, _READ_ONLY, optional=True)
            for path in ("/boot", "/efi")
        ]
    return steps


def _protect_home(service: ServiceUnit) -> list[_Step]:
    """ProtectHome=, as systemd 252's protect_home_*_table (every path optional)."""
    level = service.protect_home.value
    out = []
    for path in ("/home", "/root", "/run/user"):
        if level == "yes":
            out.append(_Step(Mount(MountKind.INACCESSIBLE, path, optional=True), _INACCESSIBLE))
        elif level == "read-only":
            out.append(_host_remount(MountKind.READ_ONLY, path, _READ_ONLY, optional=True))
        elif level == "tmpfs":
            mode = "0700" if path == "/root" else "0755"
            mount = Mount(MountKind.TMPFS, path, options=f"mode={mode}", optional=True)
            out.append(_Step(mount, _TMPFS, seal=True))
    return out


def _temporary_file_system(path: str, options: str) -> _Step:
    """TemporaryFileSystem=PATH:OPTIONS: mount flags out of the options, the rest as data."""
    data, seal, noexec = [], False, False
    for option in options.split(",") if options else ():
        if option in ("ro", "rw"):
            seal = option == "ro"
        elif option in ("noexec", "exec"):
            noexec = option == "noexec"
        elif option not in ("nosuid", "nodev"):  # always set
            data.append(option)
    mount = Mount(MountKind.TMPFS, _path(path), options=",".join(data), noexec=noexec)
    return _Step(mount, _TMPFS, seal=seal)


def _directories(service: ServiceUnit) -> list[_Step]:
    """Runtime, state, cache and logs directories, each bound writable onto itself.

    With DynamicUser=yes the state, cache and logs directories (and a preserved runtime
    directory) live below the boundary directory (``/var/lib/private``, ``/run/private``); in
    the sandbox it is covered by an empty tmpfs (0755, noexec, sealed read-only at the end)
    that holds only this unit's directories, bound from the host at their real paths, as
    systemd's EMPTY_DIR and compile_bind_mounts() do. The public symlinks (``/var/lib/NAME ->
    private/NAME``) are the host's, made by :mod:`activator.directories`.
    """
    out: list[_Step] = []
    for kind, _, field, specifier in _DIRECTORY_KINDS:
        names: tuple[str, ...] = getattr(service, field)
        if not names:
            continue
        base = SYSTEM_DIRECTORIES[specifier]
        preserved = service.runtime_directory_preserve is not v.RuntimeDirectoryPreserve.NO
        if service.dynamic_user and (kind != "runtime" or preserved):
            # A preserved runtime directory outlives the UID, so it lives behind /run/private,
            # as systemd does (activator.directories makes the host side).
            base += "/private"
            mount = Mount(MountKind.TMPFS, base, options="mode=0755", noexec=True)
            out.append(_Step(mount, _EMPTY_DIR, seal=True))
        for name in names:
            path = f"{base}/{name}"
            out.append(_Step(Mount(MountKind.BIND, path, source=path), _BIND))
    return out


def _order(steps: Sequence[_Step]) -> tuple[Mount, ...]:
    """One step per path (Rule 3), parents first, mount points before mounts, seals last."""
    by_path: dict[str, list[_Step]] = {}
    for step in steps:
        by_path.setdefault(step.mount.target, []).append(step)
    chosen: dict[str, list[_Step]] = {}
    for path, group in by_path.items():
        chosen[path] = _merge(group)
    ordered: list[Mount] = []
    seals: list[Mount] = []
    made: dict[str, MountKind] = {}  # path -> kind of the new mount the plan put there
    for path in sorted(chosen, key=lambda p: p.strip("/").split("/") if p != "/" else []):
        for step in chosen[path]:
            mount = step.mount
            if mount.kind in _CREATES:
                parent = max(
                    (p for p in made if p != path and _under(path, p)), key=len, default=None
                )
                if parent is not None and made[parent] in _FRESH:
                    ordered.append(Mount(MountKind.MKDIR, path, options="0755"))
                made[path] = mount.kind
            elif mount.kind is MountKind.INACCESSIBLE:
                made[path] = mount.kind
            elif mount.kind is MountKind.READ_ONLY and _redundant(mount, ordered):
                continue
            ordered.append(mount)
            if step.seal:
                seal = _host_remount(MountKind.READ_ONLY, path, _READ_ONLY, recursive=False)
                seals.append(seal.mount._replace(optional=mount.optional))
    return (*ordered, *seals)


def _merge(group: list[_Step]) -> list[_Step]:
    """The steps that stay for one path: INACCESSIBLE alone, else the new mount that wins then
    a read-only remount if any directive asks for one, else the strongest remount."""
    group = sorted(group, key=lambda step: step.priority)  # stable: first written wins a tie
    kinds = {step.mount.kind for step in group}
    if MountKind.INACCESSIBLE in kinds:
        return [group[0]]
    creators = [step for step in group if step.mount.kind in _CREATES]
    read_only = [step for step in group if step.mount.kind is MountKind.READ_ONLY]
    if not creators:
        if read_only:
            first = read_only[0].mount
            recursive = any(step.mount.recursive for step in read_only)
            optional = all(step.mount.optional for step in read_only)
            mount = first._replace(recursive=recursive, optional=optional)
            return [attrs.evolve(read_only[0], mount=mount)]
        return [group[0]]  # READ_WRITE: explicit before implicit
    winner, losers = creators[0], creators[1:]
    # As drop_duplicates(): a dropped directive's read-only flag goes to the one that stays.
    if not read_only and not any(
        step.seal or step.mount.kind is MountKind.BIND_READ_ONLY for step in losers
    ):
        return [winner]
    if winner.mount.kind is MountKind.BIND_READ_ONLY:
        return [winner]
    if winner.mount.kind in _FRESH:  # ro after whatever is mounted inside it
        return [attrs.evolve(winner, seal=True)]
    remount = _host_remount(MountKind.READ_ONLY, winner.mount.target, _READ_ONLY)
    return [winner, read_only[0] if read_only else remount]


def _redundant(mount: Mount, before: Sequence[Mount]) -> bool:
    """A recursive read-only remount under a recursive read-only remount, with nothing between
    that made anything above it writable again, changes nothing."""
    if not mount.recursive:
        return False
    for earlier in reversed(before):
        if earlier.target == mount.target:  # a new mount here, to be made read-only
            return False
        if _under(mount.target, earlier.target):
            return (
                earlier.kind is MountKind.READ_ONLY
                and earlier.recursive
                and not earlier.optional
                and earlier.noexec >= mount.noexec
            )
    return False
