"""The unit model: frozen, validated ``.socket`` and ``.service`` units with systemd's defaults.

Rule 1: a model object is complete and valid by construction. Every field has systemd's default,
every implication (DynamicUser=yes forces a sandbox) is already applied, and everything later
(pool, plan, spawner) reads fields and never re-parses text.

Rule 2: fail closed. Any value that does not parse is an error, not a warning: stricter than
systemd, which logs and ignores most bad values, because an ignored ``ProtectSystem=`` or
``ReadOnlyPaths=`` silently runs a handler with less isolation than its author asked for. For the
same reason, systemd's sandboxing and identity directives that activator does not implement are
errors (``UNSUPPORTED_SECURITY``), while its other directives we do not implement are warnings.

Rule 3: the model is its own text. ``render_service``/``render_socket`` write a unit that
``build_service``/``build_socket`` read back to an equal model (tested with hypothesis).

Theory of operation: a unit's assignments (fragment, then drop-ins, from ``units``) are applied in
order through ``DIRECTIVES``: a table from (section, key) to the field it sets, how its value is
parsed and whether it accumulates. Scalar directives take the last value; list directives append,
and an empty assignment resets the list, as in systemd. ``%`` specifiers are resolved per word,
after splitting, so an instance name never changes the number of words of a command line.
Then ``_finish_*`` fills defaults that depend on other fields and checks cross-field rules.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs

from activator import values as v
from activator.errors import ConfigError, Problem, Severity
from activator.units import Assignment, UnitName, UnitText, expand_specifiers, parse_unit_name

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Where binaries named without a path are looked up, as systemd 239+ does for ExecStart=.
EXEC_SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

SECOND = 1_000_000  # timespans are microseconds, as in systemd

_NULL = v.IOSpec("null")
_JOURNAL = v.IOSpec("journal")
_INHERIT = v.IOSpec("inherit")
# systemd-system.conf DefaultTasksMax=15% (of the kernel's pid limit).
_DEFAULT_TASKS_MAX = v.Percent(1500)


@attrs.frozen
class ExecCommand:
    """One ``ExecStart=`` command line.

    Attributes:
        path: the program: absolute, or a bare name looked up in ``EXEC_SEARCH_PATH`` at spawn time.
        argv: the arguments the program sees, ``argv[0]`` included (the ``@`` prefix sets it).
        ignore_failure: the ``-`` prefix: a non-zero exit is not a failure.
        expand_environment: False with the ``:`` prefix: ``$VAR`` is passed through literally.
    """

    path: str
    argv: tuple[str, ...]
    ignore_failure: bool = False
    expand_environment: bool = True


@attrs.frozen
class Listen:
    """One ``Listen*=`` line of a socket unit."""

    kind: v.SocketKind
    address: v.ListenAddress


@attrs.frozen
class ServiceUnit:
    """A ``.service`` unit (or one instance of a template), with every default filled in."""

    name: UnitName
    description: str = ""
    wanted_by: tuple[str, ...] = ()
    # [Service]: what runs
    type: v.ServiceType = v.ServiceType.SIMPLE
    exec_start: tuple[ExecCommand, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[v.PathEntry, ...] = ()
    unset_environment: tuple[str, ...] = ()
    working_directory: v.PathEntry | None = None
    standard_input: v.IOSpec = _NULL
    standard_output: v.IOSpec = _JOURNAL
    standard_error: v.IOSpec = _INHERIT
    # identity
    dynamic_user: bool = False
    user: str | None = None
    group: str | None = None
    supplementary_groups: tuple[str, ...] = ()
    # sandbox
    private_tmp: bool = False
    private_devices: bool = False
    private_network: bool = False
    protect_system: v.ProtectSystem = v.ProtectSystem.NO
    protect_home: v.ProtectHome = v.ProtectHome.NO
    remove_ipc: bool = False
    no_new_privileges: bool = False
    restrict_suid_sgid: bool = False
    read_write_paths: tuple[v.PathEntry, ...] = ()
    read_only_paths: tuple[v.PathEntry, ...] = ()
    inaccessible_paths: tuple[v.PathEntry, ...] = ()
    bind_paths: tuple[v.BindEntry, ...] = ()
    bind_read_only_paths: tuple[v.BindEntry, ...] = ()
    temporary_file_system: tuple[v.TmpfsEntry, ...] = ()
    # directories
    runtime_directory: tuple[str, ...] = ()
    state_directory: tuple[str, ...] = ()
    cache_directory: tuple[str, ...] = ()
    logs_directory: tuple[str, ...] = ()
    runtime_directory_mode: int = 0o755
    state_directory_mode: int = 0o755
    cache_directory_mode: int = 0o755
    logs_directory_mode: int = 0o755
    runtime_directory_preserve: v.RuntimeDirectoryPreserve = v.RuntimeDirectoryPreserve.NO
    # process limits
    umask: int = 0o022
    nice: int | None = None
    limit_nofile: v.RLimit | None = None
    limit_nproc: v.RLimit | None = None
    limit_as: v.RLimit | None = None
    limit_cpu: v.RLimit | None = None
    limit_fsize: v.RLimit | None = None
    limit_core: v.RLimit | None = None
    limit_data: v.RLimit | None = None
    limit_stack: v.RLimit | None = None
    memory_max: int | v.Percent | None = None
    tasks_max: int | v.Percent | None = _DEFAULT_TASKS_MAX
    cpu_quota: v.Percent | None = None
    # lifetime
    runtime_max_sec: int | None = None
    timeout_stop_sec: int | None = 90 * SECOND
    kill_signal: int = 15
    restart: v.RestartPolicy = v.RestartPolicy.NO
    restart_sec: int | None = SECOND // 10

    @property
    def directory_environment(self) -> Mapping[str, str]:
        """``RUNTIME_DIRECTORY`` and friends as systemd sets them: public paths, ``:``-joined."""
        out = {}
        for var, base, dirs in (
            ("RUNTIME_DIRECTORY", "/run", self.runtime_directory),
            ("STATE_DIRECTORY", "/var/lib", self.state_directory),
            ("CACHE_DIRECTORY", "/var/cache", self.cache_directory),
            ("LOGS_DIRECTORY", "/var/log", self.logs_directory),
        ):
            if dirs:
                out[var] = ":".join(f"{base}/{d}" for d in dirs)
        return out


@attrs.frozen
class SocketUnit:
    """A ``.socket`` unit, with every default filled in."""

    name: UnitName
    description: str = ""
    wanted_by: tuple[str, ...] = ()
    listen: tuple[Listen, ...] = ()
    accept: bool = False
    service: UnitName | None = None
    file_descriptor_name: str | None = None
    max_connections: int = 64
    max_connections_per_source: int | None = None
    backlog: int = 4294967295
    bind_ipv6_only: v.BindIPv6Only = v.BindIPv6Only.DEFAULT
    reuse_port: bool = False
    free_bind: bool = False
    keep_alive: bool = False
    no_delay: bool = False
    defer_accept_sec: int = 0
    socket_user: str | None = None
    socket_group: str | None = None
    socket_mode: int = 0o666
    directory_mode: int = 0o755
    remove_on_stop: bool = False
    # The defaults of these four depend on Accept= (systemd 255 for PollLimit, 252 for Trigger).
    poll_limit_interval_sec: int | None = 2 * SECOND
    poll_limit_burst: int = 15
    trigger_limit_interval_sec: int | None = 2 * SECOND
    trigger_limit_burst: int = 20
    ip_address_allow: tuple[IPNetwork, ...] = ()
    ip_address_deny: tuple[IPNetwork, ...] = ()

    @property
    def activates(self) -> UnitName:
        """The service this socket starts: ``Service=``, else ``foo.service``, or ``foo@.service``
        for Accept=yes (one instance per connection), as systemd pairs them."""
        if self.service is not None:
            return self.service
        if self.accept:
            return UnitName(self.name.prefix, "", "service")
        return self.name.with_suffix("service")

    @property
    def fd_name(self) -> str:
        """``FileDescriptorName=``, defaulting to the socket unit's name as in systemd."""
        return self.file_descriptor_name or self.name.name


Unit: TypeAlias = ServiceUnit | SocketUnit


# ---------------------------------------------------------------------------------------------
# Value parsers: (raw text, unit name) -> value; ValueError(reason) on bad input.

Parse: TypeAlias = Callable[[str, UnitName], Any]


def _raw(conv: Callable[[str], Any]) -> Parse:
    """A value without specifiers (numbers, booleans, enums): systemd does not expand these."""
    return lambda raw, name: conv(raw)


def _expanded(conv: Callable[[str], Any]) -> Parse:
    """The whole value, specifiers resolved first."""
    return lambda raw, name: conv(expand_specifiers(raw, name))


def _words(conv: Callable[[str], Any]) -> Parse:
    """A list of words: split first, then resolve specifiers and convert each word."""
    return lambda raw, name: tuple(conv(expand_specifiers(w, name)) for w in v.split_words(raw))


def _reject_control(text: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        msg = "must not contain control characters"
        raise ValueError(msg)
    return text


def _parse_exec(raw: str, name: UnitName) -> tuple[ExecCommand]:
    # systemd's config_parse_exec: prefixes, then words, then specifiers per word.
    words = v.split_words(raw)
    if not words:
        msg = "empty command line"
        raise ValueError(msg)
    first = words[0]
    ignore_failure = False
    expand_environment = True
    set_argv0 = False
    while first and first[0] in "-@:+!|":
        p = first[0]
        if p == "-":
            ignore_failure = True
        elif p == "@":
            set_argv0 = True
        elif p == ":":
            expand_environment = False
        else:
            msg = (
                f"prefix {p!r} runs the command with more privileges than the unit grants, "
                "which activator does not support"
            )
            raise ValueError(msg)
        first = first[1:]
    if not first:
        msg = "command line has prefixes but no program"
        raise ValueError(msg)
    words = [first, *words[1:]]
    if ";" in words:
        msg = "several commands on one line (';') are not supported; use one ExecStart= per command"
        raise ValueError(msg)
    expanded = [_reject_control(expand_specifiers(w, name)) for w in words]
    path = expanded[0]
    if "/" in path:
        path = v.validate_absolute_path(path)
    if set_argv0:
        if len(expanded) < 2:
            msg = "'@' prefix needs argv[0] after the program"
            raise ValueError(msg)
        argv = tuple(expanded[1:])
    else:
        argv = tuple(expanded)
    return (ExecCommand(path, argv, ignore_failure, expand_environment),)


def _render_exec(cmd: ExecCommand) -> str:
    prefix = ("-" if cmd.ignore_failure else "") + ("" if cmd.expand_environment else ":")
    if cmd.argv[:1] == (cmd.path,):
        words = cmd.argv
    else:
        prefix += "@"
        words = (cmd.path, *cmd.argv)
    return prefix + " ".join(v.quote_word(w) for w in words)


def _parse_working_directory(text: str) -> v.PathEntry:
    ignore = text.startswith("-")
    path = text[1:] if ignore else text
    if path == "~":
        return v.PathEntry(path="~", ignore_missing=ignore)
    return v.PathEntry(path=v.validate_absolute_path(path), ignore_missing=ignore)


def _parse_environment_file(text: str) -> tuple[v.PathEntry]:
    ignore = text.startswith("-")
    path = text[1:] if ignore else text
    return (v.PathEntry(path=v.validate_absolute_path(path), ignore_missing=ignore),)


def _parse_unset(word: str) -> str:
    if "=" in word:
        v.parse_env_assignment(word)
        return word
    return v.parse_env_name(word)


def _parse_description(text: str) -> str:
    return _reject_control(text)


def _parse_service_name(text: str) -> UnitName:
    name = parse_unit_name(text)
    if name.suffix != "service":
        msg = f"must name a .service unit (got {text!r})"
        raise ValueError(msg)
    if name.is_template:
        msg = f"must not name a template (got {text!r})"
        raise ValueError(msg)
    return name


def _parse_fd_name(text: str) -> str:
    # sd-daemon's fdname_is_valid: printable ASCII, no ':', at most 255 characters.
    if not text or len(text) > 255:
        msg = f"must be 1..255 characters (got {len(text)})"
        raise ValueError(msg)
    bad = [c for c in text if not (32 <= ord(c) < 127) or c == ":"]
    if bad:
        msg = f"must be printable ASCII without ':' (got {bad[0]!r})"
        raise ValueError(msg)
    return text


def _parse_wanted_by(word: str) -> str:
    _reject_control(word)
    if "/" in word or not word:
        msg = f"must be a unit name (got {word!r})"
        raise ValueError(msg)
    return word


def _bind_paths(raw: str, name: UnitName) -> tuple[v.BindEntry, ...]:
    # systemd's config_parse_bind_paths splits on colons itself ("\\:" escapes one), so words
    # are not unquoted by split_words first; specifiers are resolved per entry afterwards.
    entries = v.parse_bind_paths(raw)
    return tuple(
        attrs.evolve(
            e,
            source=v.validate_absolute_path(expand_specifiers(e.source, name)),
            destination=v.validate_absolute_path(expand_specifiers(e.destination, name)),
        )
        for e in entries
    )


def _listen(kind: v.SocketKind) -> Parse:
    return _expanded(lambda text: (Listen(kind, v.parse_listen(kind, text)),))


def _int(minimum: int, maximum: int) -> Callable[[str], int]:
    return lambda text: v.parse_integer(text, minimum=minimum, maximum=maximum)


def _timespan(text: str) -> int | None:
    return v.parse_timespan(text)


def _finite_timespan(text: str) -> int:
    usec = v.parse_timespan(text)
    if usec is None:
        msg = "must be a finite time span (got 'infinity')"
        raise ValueError(msg)
    return usec


def _user(allow_numeric: bool) -> Callable[[str], str]:
    return lambda text: v.parse_user_name(text, allow_numeric=allow_numeric)


# ---------------------------------------------------------------------------------------------
# The directive table


@attrs.frozen
class Directive:
    """How one ``Key=`` is read into a model field."""

    section: str
    key: str
    field: str
    parse: Parse
    is_list: bool = False
    #: For fields fed by several keys (Listen*), the empty assignment still resets the whole list.


def _d(section: str, key: str, field: str, parse: Parse, *, is_list: bool = False) -> Directive:
    return Directive(section, key, field, parse, is_list)


_COMMON = [
    _d("Unit", "Description", "description", _expanded(_parse_description)),
    _d("Install", "WantedBy", "wanted_by", _words(_parse_wanted_by), is_list=True),
]

_BOOL = _raw(v.parse_boolean)

SERVICE_DIRECTIVES: Mapping[tuple[str, str], Directive] = {
    (d.section, d.key): d
    for d in [
        *_COMMON,
        _d("Service", "Type", "type", _raw(v.parse_service_type)),
        _d("Service", "ExecStart", "exec_start", _parse_exec, is_list=True),
        _d("Service", "Environment", "environment", _words(v.parse_env_assignment), is_list=True),
        _d(
            "Service",
            "EnvironmentFile",
            "environment_files",
            _expanded(_parse_environment_file),
            is_list=True,
        ),
        _d("Service", "UnsetEnvironment", "unset_environment", _words(_parse_unset), is_list=True),
        _d("Service", "WorkingDirectory", "working_directory", _expanded(_parse_working_directory)),
        _d("Service", "StandardInput", "standard_input", _expanded(v.parse_standard_input)),
        _d("Service", "StandardOutput", "standard_output", _expanded(v.parse_standard_output)),
        _d("Service", "StandardError", "standard_error", _expanded(v.parse_standard_output)),
        _d("Service", "DynamicUser", "dynamic_user", _BOOL),
        _d("Service", "User", "user", _expanded(_user(True))),
        _d("Service", "Group", "group", _expanded(_user(True))),
        _d(
            "Service",
            "SupplementaryGroups",
            "supplementary_groups",
            _words(_user(True)),
            is_list=True,
        ),
        _d("Service", "PrivateTmp", "private_tmp", _BOOL),
        _d("Service", "PrivateDevices", "private_devices", _BOOL),
        _d("Service", "PrivateNetwork", "private_network", _BOOL),
        _d("Service", "ProtectSystem", "protect_system", _raw(v.parse_protect_system)),
        _d("Service", "ProtectHome", "protect_home", _raw(v.parse_protect_home)),
        _d("Service", "RemoveIPC", "remove_ipc", _BOOL),
        _d("Service", "NoNewPrivileges", "no_new_privileges", _BOOL),
        _d("Service", "RestrictSUIDSGID", "restrict_suid_sgid", _BOOL),
        _d(
            "Service",
            "ReadWritePaths",
            "read_write_paths",
            _words(v.parse_path_entry),
            is_list=True,
        ),
        _d("Service", "ReadOnlyPaths", "read_only_paths", _words(v.parse_path_entry), is_list=True),
        _d(
            "Service",
            "InaccessiblePaths",
            "inaccessible_paths",
            _words(v.parse_path_entry),
            is_list=True,
        ),
        _d("Service", "BindPaths", "bind_paths", _bind_paths, is_list=True),
        _d("Service", "BindReadOnlyPaths", "bind_read_only_paths", _bind_paths, is_list=True),
        _d(
            "Service",
            "TemporaryFileSystem",
            "temporary_file_system",
            _words(v.parse_tmpfs_entry),
            is_list=True,
        ),
        _d(
            "Service",
            "RuntimeDirectory",
            "runtime_directory",
            _words(v.validate_relative_directory),
            is_list=True,
        ),
        _d(
            "Service",
            "StateDirectory",
            "state_directory",
            _words(v.validate_relative_directory),
            is_list=True,
        ),
        _d(
            "Service",
            "CacheDirectory",
            "cache_directory",
            _words(v.validate_relative_directory),
            is_list=True,
        ),
        _d(
            "Service",
            "LogsDirectory",
            "logs_directory",
            _words(v.validate_relative_directory),
            is_list=True,
        ),
        _d("Service", "RuntimeDirectoryMode", "runtime_directory_mode", _raw(v.parse_mode)),
        _d("Service", "StateDirectoryMode", "state_directory_mode", _raw(v.parse_mode)),
        _d("Service", "CacheDirectoryMode", "cache_directory_mode", _raw(v.parse_mode)),
        _d("Service", "LogsDirectoryMode", "logs_directory_mode", _raw(v.parse_mode)),
        _d(
            "Service",
            "RuntimeDirectoryPreserve",
            "runtime_directory_preserve",
            _raw(v.parse_runtime_directory_preserve),
        ),
        _d("Service", "UMask", "umask", _raw(v.parse_mode)),
        _d("Service", "Nice", "nice", _raw(v.parse_nice)),
        *[
            _d(
                "Service",
                f"Limit{r}",
                f"limit_{r.lower()}",
                _raw(functools.partial(v.parse_rlimit, f"Limit{r}")),
            )
            for r in ("NOFILE", "NPROC", "AS", "CPU", "FSIZE", "CORE", "DATA", "STACK")
        ],
        _d("Service", "MemoryMax", "memory_max", _raw(v.parse_memory_limit)),
        _d("Service", "TasksMax", "tasks_max", _raw(v.parse_tasks_max)),
        _d("Service", "CPUQuota", "cpu_quota", _raw(v.parse_cpu_quota)),
        _d("Service", "RuntimeMaxSec", "runtime_max_sec", _raw(_timespan)),
        _d("Service", "TimeoutStopSec", "timeout_stop_sec", _raw(_timespan)),
        _d("Service", "KillSignal", "kill_signal", _raw(v.parse_signal)),
        _d("Service", "Restart", "restart", _raw(v.parse_restart_policy)),
        _d("Service", "RestartSec", "restart_sec", _raw(_timespan)),
    ]
}

SOCKET_DIRECTIVES: Mapping[tuple[str, str], Directive] = {
    (d.section, d.key): d
    for d in [
        *_COMMON,
        *[_d("Socket", k.value, "listen", _listen(k), is_list=True) for k in v.SocketKind],
        _d("Socket", "Accept", "accept", _BOOL),
        _d("Socket", "Service", "service", _expanded(_parse_service_name)),
        _d("Socket", "FileDescriptorName", "file_descriptor_name", _expanded(_parse_fd_name)),
        _d("Socket", "MaxConnections", "max_connections", _raw(_int(1, 2**32 - 1))),
        _d(
            "Socket",
            "MaxConnectionsPerSource",
            "max_connections_per_source",
            _raw(_int(1, 2**32 - 1)),
        ),
        _d("Socket", "Backlog", "backlog", _raw(_int(0, 2**32 - 1))),
        _d("Socket", "BindIPv6Only", "bind_ipv6_only", _raw(v.parse_bind_ipv6_only)),
        _d("Socket", "ReusePort", "reuse_port", _BOOL),
        _d("Socket", "FreeBind", "free_bind", _BOOL),
        _d("Socket", "KeepAlive", "keep_alive", _BOOL),
        _d("Socket", "NoDelay", "no_delay", _BOOL),
        _d("Socket", "DeferAcceptSec", "defer_accept_sec", _raw(_finite_timespan)),
        _d("Socket", "SocketUser", "socket_user", _expanded(_user(True))),
        _d("Socket", "SocketGroup", "socket_group", _expanded(_user(True))),
        _d("Socket", "SocketMode", "socket_mode", _raw(v.parse_mode)),
        _d("Socket", "DirectoryMode", "directory_mode", _raw(v.parse_mode)),
        _d("Socket", "RemoveOnStop", "remove_on_stop", _BOOL),
        _d("Socket", "PollLimitIntervalSec", "poll_limit_interval_sec", _raw(_timespan)),
        _d("Socket", "PollLimitBurst", "poll_limit_burst", _raw(_int(0, 2**32 - 1))),
        _d("Socket", "TriggerLimitIntervalSec", "trigger_limit_interval_sec", _raw(_timespan)),
        _d("Socket", "TriggerLimitBurst", "trigger_limit_burst", _raw(_int(0, 2**32 - 1))),
        _d("Socket", "IPAddressAllow", "ip_address_allow", _raw(v.parse_ip_prefixes), is_list=True),
        _d("Socket", "IPAddressDeny", "ip_address_deny", _raw(v.parse_ip_prefixes), is_list=True),
    ]
}

#: systemd directives that restrict or change what a process may do. activator does not
#: implement them, so a unit that asks for one is refused: running it without would silently
#: grant more than its author allowed.
UNSUPPORTED_SECURITY = frozenset(
    {
        "AmbientCapabilities",
        "AppArmorProfile",
        "CapabilityBoundingSet",
        "DeviceAllow",
        "DevicePolicy",
        "IPAddressAllow",
        "IPAddressDeny",
        "IPCNamespacePath",
        "KeyringMode",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "MountAPIVFS",
        "NetworkNamespacePath",
        "PrivateIPC",
        "PrivateMounts",
        "PrivateUsers",
        "ProcSubset",
        "ProtectClock",
        "ProtectControlGroups",
        "ProtectHostname",
        "ProtectKernelLogs",
        "ProtectKernelModules",
        "ProtectKernelTunables",
        "ProtectProc",
        "RestrictAddressFamilies",
        "RestrictFileSystems",
        "RestrictNamespaces",
        "RestrictNetworkInterfaces",
        "RestrictRealtime",
        "RootDirectory",
        "RootImage",
        "RootImageOptions",
        "SecureBits",
        "SELinuxContext",
        "SmackProcessLabel",
        "SocketBindAllow",
        "SocketBindDeny",
        "SystemCallArchitectures",
        "SystemCallErrorNumber",
        "SystemCallFilter",
        "SystemCallLog",
        "ExtensionDirectories",
        "ExtensionImages",
        "MountImages",
        "PAMName",
        "TTYPath",
    }
)


# ---------------------------------------------------------------------------------------------
# Building


@attrs.define
class _Builder:
    name: UnitName
    texts: Sequence[UnitText]
    directives: Mapping[tuple[str, str], Directive]
    problems: list[Problem] = attrs.field(factory=list)
    values: dict[str, Any] = attrs.field(factory=dict)
    #: Where each field was last set, for cross-field messages.
    origin: dict[str, Assignment] = attrs.field(factory=dict)
    lists: dict[str, list[Any]] = attrs.field(factory=dict)
    #: For list fields, the assignment of each item, for messages about the n-th item.
    list_origin: dict[str, list[Assignment]] = attrs.field(factory=dict)

    def error(self, a: Assignment | None, reason: str, *, warning: bool = False) -> None:
        severity = Severity.WARNING if warning else Severity.ERROR
        if a is None:
            path = self.texts[0].path if self.texts else self.name.name
            self.problems.append(Problem(path, None, None, None, reason, severity))
        else:
            self.problems.append(Problem(a.path, a.line, a.key, a.value, reason, severity))

    def apply(self) -> None:
        for text in self.texts:
            self.problems.extend(text.problems)
            for a in text.assignments:
                self.assign(a)

    def assign(self, a: Assignment) -> None:
        d = self.directives.get((a.section, a.key))
        if d is None:
            self.unknown(a)
            return
        if d.is_list and a.value == "":
            self.lists[d.field] = []
            self.list_origin[d.field] = []
            self.origin[d.field] = a
            return
        if not d.is_list and a.value == "":
            # An empty scalar assignment resets the setting to its default, as in systemd.
            self.values.pop(d.field, None)
            self.origin.pop(d.field, None)
            return
        try:
            value = d.parse(a.value, self.name)
        except ValueError as e:
            self.error(a, str(e))
            return
        self.origin[d.field] = a
        if d.is_list:
            self.lists.setdefault(d.field, []).extend(value)
            self.list_origin.setdefault(d.field, []).extend([a] * len(value))
        else:
            self.values[d.field] = value

    def unknown(self, a: Assignment) -> None:
        if a.key.startswith("X-"):
            return
        if a.key in UNSUPPORTED_SECURITY:
            self.error(
                a,
                f"{a.key}= is a sandboxing or identity directive activator does not implement; "
                "refusing to run the unit with less isolation than it asks for",
            )
            return
        # systemd: "Unknown key name '%s' in section '%s', ignoring."
        self.problems.append(
            Problem(
                a.path,
                a.line,
                None,
                None,
                f"Unknown key name '{a.key}' in section '{a.section}', ignoring.",
                Severity.WARNING,
            )
        )

    def fields(self) -> dict[str, Any]:
        out = dict(self.values)
        out.update({k: tuple(items) for k, items in self.lists.items()})
        return out


def _check_errors(b: _Builder) -> list[Problem]:
    errors = [p for p in b.problems if p.is_error]
    if errors:
        raise ConfigError(sorted(b.problems, key=_problem_order))
    return sorted(b.problems, key=_problem_order)


def _problem_order(p: Problem) -> tuple[str, float]:
    # Problems of the whole unit (no line) come after those of its lines: they are often caused
    # by them (a bad ExecStart= line, then "no ExecStart=").
    return (p.path, math.inf if p.line is None else p.line)


def build_service(name: UnitName, texts: Sequence[UnitText]) -> tuple[ServiceUnit, list[Problem]]:
    """Build and validate a service from its files (fragment first, then drop-ins).

    Args:
        name: the unit; for an instance its own name (``foo@bar.service``), which ``%i`` is from.
        texts: the parsed files, in the order they apply.

    Returns:
        The unit and the warnings about it.

    Raises:
        ConfigError: with every error (and warning) found, in file and line order.
    """
    b = _Builder(name, texts, SERVICE_DIRECTIVES)
    b.apply()
    fields = b.fields()
    _finish_service(b, fields)
    warnings = _check_errors(b)
    return attrs.evolve(ServiceUnit(name=name), **fields), warnings


def _finish_service(b: _Builder, f: dict[str, Any]) -> None:
    exec_start: tuple[ExecCommand, ...] = f.get("exec_start", ())
    service_type = f.get("type", v.ServiceType.SIMPLE)
    if not exec_start:
        b.error(None, "Service has no ExecStart= setting. Refusing.")
    elif len(exec_start) > 1 and service_type is not v.ServiceType.ONESHOT:
        second = b.list_origin["exec_start"][1]
        b.error(
            second,
            "Service has more than one ExecStart= setting, which is only allowed for "
            "Type=oneshot services. Refusing.",
        )
    # Later Environment= assignments of a variable override earlier ones (strv_env_merge).
    if "environment" in f:
        f["environment"] = tuple(dict(f["environment"]).items())
    _fix_stdio(f)
    if f.get("dynamic_user"):
        user = f.get("user")
        if user is not None and user.isdigit():
            b.error(b.origin["user"], "DynamicUser=yes needs a user name, not a numeric UID")
        _apply_dynamic_user(b, f)


def _fix_stdio(f: dict[str, Any]) -> None:
    """systemd's ``service_fix_stdio``: resolve ``inherit`` against the standard input.

    A bidirectional input (a socket, a TTY) is shared by stdout and stderr; otherwise an inherited
    stdout goes to the journal (activator's log) and stderr follows stdout.
    """
    stdin = f.get("standard_input", v.IOSpec("null"))
    stdout = f.setdefault("standard_output", v.IOSpec("inherit"))
    stderr = f.setdefault("standard_error", v.IOSpec("inherit"))
    if stdin.kind in ("tty", "tty-force", "tty-fail", "socket"):
        return
    if stdout.kind == "inherit":
        f["standard_output"] = v.IOSpec("journal")
    del stderr  # stderr=inherit means "as stdout", which is now never "inherit" itself


#: What DynamicUser=yes forces (systemd's ``unit_patch_contexts``): a UID that is released when
#: the service stops must not leave files or IPC objects behind, nor gain privileges.
DYNAMIC_USER_IMPLIES: Mapping[str, Any] = {
    "private_tmp": True,
    "remove_ipc": True,
    "protect_system": v.ProtectSystem.STRICT,
    "no_new_privileges": True,
    "restrict_suid_sgid": True,
}


def _apply_dynamic_user(b: _Builder, f: dict[str, Any]) -> None:
    for field, forced in DYNAMIC_USER_IMPLIES.items():
        if field in f and f[field] != forced:
            a = b.origin[field]
            b.error(
                a,
                f"overridden: DynamicUser=yes implies {a.key}={_render_scalar(forced)}",
                warning=True,
            )
        f[field] = forced
    if f.get("protect_home", v.ProtectHome.NO) is v.ProtectHome.NO:
        f["protect_home"] = v.ProtectHome.READ_ONLY


def build_socket(name: UnitName, texts: Sequence[UnitText]) -> tuple[SocketUnit, list[Problem]]:
    """Build and validate a socket unit; see :func:`build_service` for the contract."""
    b = _Builder(name, texts, SOCKET_DIRECTIVES)
    b.apply()
    fields = b.fields()
    _finish_socket(b, fields)
    warnings = _check_errors(b)
    return attrs.evolve(SocketUnit(name=name), **fields), warnings


def _finish_socket(b: _Builder, f: dict[str, Any]) -> None:
    listen: tuple[Listen, ...] = f.get("listen", ())
    accept = f.get("accept", False)
    if not listen:
        b.error(None, "Unit has no Listen setting (ListenStream=, ListenDatagram=, ...). Refusing.")
    if accept:
        for item, a in zip(listen, b.list_origin.get("listen", []), strict=True):
            if item.kind is v.SocketKind.DATAGRAM:
                b.error(
                    a,
                    "Unit configured for accepting sockets, but sockets are non-accepting "
                    "(datagram). Refusing.",
                )
                break
        if "service" in f:
            b.error(b.origin["service"], "Service= is only allowed with Accept=no")
    # systemd's defaults for the rate limits depend on Accept=.
    f.setdefault("poll_limit_burst", 150 if accept else 15)
    f.setdefault("trigger_limit_burst", 200 if accept else 20)
    for field in ("ip_address_allow", "ip_address_deny"):
        if field in f:
            f[field] = tuple(dict.fromkeys(f[field]))


# ---------------------------------------------------------------------------------------------
# Rendering


def _render_scalar(value: Any) -> str:
    match value:
        case bool():
            return v.render_boolean(value)
        case enum.Enum():
            return str(value.value)
        case _:
            return str(value)


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _render_field(d: Directive, unit: Unit, value: Any) -> list[tuple[str, str]]:
    """The ``Key=value`` lines for one field's value (specifier-safe: ``%`` is doubled)."""
    field = d.field
    one: Callable[[Any], str]
    if field == "listen":
        return [(x.kind.value, _escape(v.render_listen(x.address))) for x in value]
    if field == "exec_start":
        return [(d.key, _escape(_render_exec(x))) for x in value]
    if field == "environment":
        return [(d.key, _escape(v.quote_word(f"{k}={val}"))) for k, val in value]
    if field in ("ip_address_allow", "ip_address_deny"):
        return [(d.key, v.render_ip_prefixes(value))] if value else []
    if field == "environment_files":
        return [(d.key, _escape(("-" if x.ignore_missing else "") + x.path)) for x in value]
    if field == "working_directory":
        return [(d.key, _escape(("-" if value.ignore_missing else "") + value.path))]
    if field.startswith("limit_"):
        return [(d.key, v.render_rlimit(d.key, value))]
    if field in ("bind_paths", "bind_read_only_paths"):
        # parse_bind_paths reads its own escapes, not split_words' quoting.
        return [(d.key, _escape(v.render_bind_entry(x))) for x in value]
    renderers: Mapping[str, Callable[[Any], str]] = {
        "read_write_paths": v.render_path_entry,
        "read_only_paths": v.render_path_entry,
        "inaccessible_paths": v.render_path_entry,
        "temporary_file_system": v.render_tmpfs_entry,
    }
    if d.is_list:
        one = renderers.get(field, str)
        return [(d.key, _escape(v.quote_word(one(x)))) for x in value]
    if field in ("standard_input", "standard_output", "standard_error"):
        return [(d.key, _escape(v.render_io_spec(value)))]
    if field.endswith("_mode") or field == "umask":
        return [(d.key, v.render_mode(value))]
    if field in ("memory_max", "tasks_max", "cpu_quota"):
        return [(d.key, v.render_limit(value))]
    if field == "kill_signal":
        return [(d.key, v.render_signal(value))]
    if field.endswith("_sec"):
        return [(d.key, v.render_timespan(value))]
    return [(d.key, _escape(_render_scalar(value)))]


#: Fields where None means "infinity" and must be written out, because the default is finite.
_INFINITY_FIELDS = frozenset(
    {"tasks_max", "memory_max", "runtime_max_sec", "timeout_stop_sec", "restart_sec"}
    | {"poll_limit_interval_sec", "trigger_limit_interval_sec"}
)


def _render(unit: Unit, directives: Mapping[tuple[str, str], Directive]) -> str:
    sections: dict[str, list[str]] = {}
    seen: set[str] = set()
    for d in directives.values():
        if d.field in seen:
            continue
        seen.add(d.field)
        value = getattr(unit, d.field)
        if value is None and d.field in _INFINITY_FIELDS:
            sections.setdefault(d.section, []).append(f"{d.key}=infinity")
            continue
        if value is None or (d.is_list and not value):
            continue
        for key, text in _render_field(d, unit, value):
            sections.setdefault(d.section, []).append(f"{key}={text}")
    order = ("Unit", "Socket", "Service", "Install")
    return "\n".join(f"[{s}]\n" + "\n".join(sections[s]) + "\n" for s in order if s in sections)


def render_service(unit: ServiceUnit) -> str:
    """Write ``unit`` as unit-file text that :func:`build_service` reads back to an equal unit."""
    return _render(unit, SERVICE_DIRECTIVES)


def render_socket(unit: SocketUnit) -> str:
    """Write ``unit`` as unit-file text that :func:`build_socket` reads back to an equal unit."""
    return _render(unit, SOCKET_DIRECTIVES)


def iter_directive_keys(directives: Iterable[Directive]) -> list[str]:
    """``Section.Key`` names, for documentation and completion."""
    return [f"{d.section}.{d.key}" for d in directives]
