"""The directive table: which ``Key=`` sets which field, how its value is parsed, and whether it
accumulates into a list.

Rule 1: a parser takes the raw value and the unit's name and returns the field's value or raises
``ValueError(reason)``; specifiers are resolved here, per word after splitting where the
directive is a list of words, so an instance name cannot add words.

Rule 2: keys of systemd's that restrict a process and that activator does not implement are
listed in ``UNSUPPORTED_SECURITY``: using one is an error, never a silent downgrade.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import attrs

from activator import values as v
from activator.model._units import ExecCommand, Listen
from activator.units import UnitName, expand_specifiers, parse_unit_name, unescape_unit_name_part

# ---------------------------------------------------------------------------------------------
# Value parsers: (raw text, unit name) -> value; ValueError(reason) on bad input.

Parse: TypeAlias = Callable[[str, UnitName], Any]


def _raw(conv: Callable[[str], Any]) -> Parse:
    """A value without specifiers (numbers, booleans, enums): systemd does not expand these."""
    return lambda raw, name: conv(raw)


def _convert(conv: Callable[[str], Any], written: str, expanded: str) -> Any:
    """``conv(expanded)``; when specifiers changed the text, a refusal shows what they made of
    it (``StateDirectory=foo/%I`` of ``foo@..``: the value written is fine, the instance's is
    not)."""
    try:
        return conv(expanded)
    except ValueError as e:
        if expanded == written or repr(expanded) in str(e):
            raise
        msg = f"{e} (got {expanded!r} once specifiers are resolved)"
        raise ValueError(msg) from None


def _expanded(conv: Callable[[str], Any]) -> Parse:
    """The whole value, specifiers resolved first."""
    return lambda raw, name: _convert(conv, raw, expand_specifiers(raw, name))


def _words(conv: Callable[[str], Any]) -> Parse:
    """A list of words: split first, then resolve specifiers and convert each word."""
    return lambda raw, name: tuple(
        _convert(conv, w, _utf8(expand_specifiers(w, name))) for w in v.split_words(raw)
    )


def _utf8(word: str) -> str:
    # split_words carries bytes that are not UTF-8 (from "\xff" escapes) as surrogate escapes;
    # systemd refuses such words ("not UTF-8 clean"), and so does activator.
    if any("\udc80" <= c <= "\udcff" for c in word):
        msg = f"must be valid UTF-8 (got {word!r})"
        raise ValueError(msg)
    return word


def _reject_control(text: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        msg = "must not contain control characters"
        raise ValueError(msg)
    return text


def _reject_nul(text: str) -> str:
    if "\0" in text:
        msg = "must not contain a NUL character"
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
    seen: set[str] = set()
    # systemd 252 reads each prefix at most once; a repeated one is part of the path (and fails).
    while first[:1] in ("-", "@", ":", "+", "!") and first[:1] not in seen:
        p = first[0]
        seen.add(p)
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
    # Arguments may hold any character but NUL (a newline in `sh -c` scripts is common, and
    # systemd allows it); the program path may hold no control character.
    expanded = [_reject_nul(_utf8(expand_specifiers(w, name))) for w in words]
    path = _reject_control(expanded[0])
    if "/" in path:
        if path.endswith("/"):
            msg = f"program path names a directory (got {path!r})"
            raise ValueError(msg)
        path = v.validate_absolute_path(path)
    elif path in (".", "..") or len(path.encode()) > 255:
        msg = f"program must be an absolute path or a file name (got {path!r})"
        raise ValueError(msg)
    if set_argv0:
        if len(expanded) < 2:
            msg = "'@' prefix needs argv[0] after the program"
            raise ValueError(msg)
        argv = tuple(expanded[1:])
    else:
        argv = tuple(expanded)
    return (ExecCommand(path, argv, ignore_failure, expand_environment),)


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


def _finite_timespan(text: str) -> int:
    usec = v.parse_timespan(text)
    if usec is None:
        msg = "must be a finite time span (got 'infinity')"
        raise ValueError(msg)
    return usec


def _timespan_fix_0(text: str) -> int | None:
    # systemd's config_parse_sec_fix_0 (TimeoutStopSec=): 0 means no time-out, not an instant one.
    usec = v.parse_timespan(text)
    return None if usec == 0 else usec


def _unescaped_words(conv: Callable[[str], Any]) -> Parse:
    """Words that systemd unquotes but does not C-unescape (path lists, TemporaryFileSystem=).

    A backslash there is taken literally by systemd (``\\x2fsrv`` is no absolute path), while
    ``split_words`` would decode it; refusing it keeps the two readings from ever differing.
    """
    words = _words(conv)

    def parse(raw: str, name: UnitName) -> Any:
        if "\\" in raw:
            msg = "backslash escapes are not decoded in this directive (systemd reads them as is)"
            raise ValueError(msg)
        return words(raw, name)

    return parse


def _directories(raw: str, name: UnitName) -> tuple[str, ...]:
    """``StateDirectory=`` and its siblings, as systemd's config_parse_exec_directories(): each
    word is split at ``:`` (``SOURCE[:DESTINATION]``, the symlink form, refused here) *before*
    its specifiers are resolved, so a colon that an instance name brings is part of the name
    (an Accept=yes connection's instance is ``1-127.0.0.1:80-127.0.0.1:4711``).

    What ``%I`` contributes may not hold a ``/``: ``u/%I`` of ``u@a-b`` would be ``u/a/b``,
    inside ``u@a``'s ``u/a``, so one instance (one customer, one user) would own another's
    directory. ``%i`` gives each instance a directory of its own.
    """
    out = []
    for word in v.split_words(raw):
        written = _utf8(word)
        if ":" in written:
            msg = f"symlink form {written!r} is not supported"
            raise ValueError(msg)
        expanded = _utf8(expand_specifiers(written, name))
        out.append(_convert(v.validate_resolved_directory, written, expanded))
        if "I" in _specifiers_of(written):
            unescaped = unescape_unit_name_part(name.instance or "")
            if "/" in unescaped:
                msg = (
                    f"%I gives {unescaped!r}: an instance's directory may not nest in "
                    "another's; use %i"
                )
                raise ValueError(msg)
    return tuple(out)


def _specifiers_of(text: str) -> set[str]:
    """The specifier letters ``text`` uses (``%%`` is a percent sign, not a specifier)."""
    found: set[str] = set()
    i = text.find("%")
    while i >= 0:
        found.add(text[i + 1 : i + 2])
        i = text.find("%", i + 2)
    return found - {"%", ""}


def _plain_words(conv: Callable[[str], Any]) -> Parse:
    """Words split at white space only, no quotes or escapes (SupplementaryGroups=, as systemd)."""
    return lambda raw, name: tuple(conv(expand_specifiers(w, name)) for w in raw.split() if w)


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
    #: A list accumulates over lines and an empty assignment empties it (for fields fed by
    #: several keys, Listen*, the whole list).
    is_list: bool = False
    #: What an empty scalar assignment means, as systemd 252: "reset" to the default (only
    #: the keys whose parser does that), "value" (an empty Description=), or "error": systemd
    #: ignores the line and keeps the earlier value, which activator refuses to do silently.
    empty: str = "error"
    #: For an old name of a directive: the name to use instead (a warning says so).
    deprecated_for: str | None = None


def _d(
    section: str,
    key: str,
    field: str,
    parse: Parse,
    *,
    is_list: bool = False,
    empty: str = "error",
    deprecated_for: str | None = None,
) -> Directive:
    return Directive(section, key, field, parse, is_list, empty, deprecated_for)


_COMMON = [
    _d("Unit", "Description", "description", _expanded(_parse_description), empty="value"),
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
        _d(
            "Service",
            "WorkingDirectory",
            "working_directory",
            _expanded(_parse_working_directory),
            empty="reset",
        ),
        _d("Service", "StandardInput", "standard_input", _expanded(v.parse_standard_input)),
        _d("Service", "StandardOutput", "standard_output", _expanded(v.parse_standard_output)),
        _d("Service", "StandardError", "standard_error", _expanded(v.parse_standard_output)),
        _d("Service", "DynamicUser", "dynamic_user", _BOOL),
        _d("Service", "User", "user", _expanded(_user(True)), empty="reset"),
        _d("Service", "Group", "group", _expanded(_user(True)), empty="reset"),
        _d(
            "Service",
            "SupplementaryGroups",
            "supplementary_groups",
            _plain_words(_user(True)),
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
            _unescaped_words(v.parse_path_entry),
            is_list=True,
        ),
        _d(
            "Service",
            "ReadOnlyPaths",
            "read_only_paths",
            _unescaped_words(v.parse_path_entry),
            is_list=True,
        ),
        _d(
            "Service",
            "InaccessiblePaths",
            "inaccessible_paths",
            _unescaped_words(v.parse_path_entry),
            is_list=True,
        ),
        _d("Service", "BindPaths", "bind_paths", _bind_paths, is_list=True),
        _d("Service", "BindReadOnlyPaths", "bind_read_only_paths", _bind_paths, is_list=True),
        _d(
            "Service",
            "TemporaryFileSystem",
            "temporary_file_system",
            _unescaped_words(v.parse_tmpfs_entry),
            is_list=True,
        ),
        _d(
            "Service",
            "RuntimeDirectory",
            "runtime_directory",
            _directories,
            is_list=True,
        ),
        _d(
            "Service",
            "StateDirectory",
            "state_directory",
            _directories,
            is_list=True,
        ),
        _d(
            "Service",
            "CacheDirectory",
            "cache_directory",
            _directories,
            is_list=True,
        ),
        _d(
            "Service",
            "LogsDirectory",
            "logs_directory",
            _directories,
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
        _d("Service", "Nice", "nice", _raw(v.parse_nice), empty="reset"),
        *[
            _d(
                "Service",
                f"Limit{r}",
                f"limit_{r.lower()}",
                _raw(functools.partial(v.parse_rlimit, f"Limit{r}")),
            )
            for r in ("NOFILE", "NPROC", "AS", "CPU", "FSIZE", "CORE", "DATA", "STACK")
        ],
        _d("Service", "MemoryMax", "memory_max", _raw(v.parse_memory_limit), empty="reset"),
        _d("Service", "TasksMax", "tasks_max", _raw(v.parse_tasks_max), empty="reset"),
        _d("Service", "CPUQuota", "cpu_quota", _raw(v.parse_cpu_quota), empty="reset"),
        _d("Service", "RuntimeMaxSec", "runtime_max_sec", _raw(v.parse_timespan)),
        _d("Service", "TimeoutStopSec", "timeout_stop_sec", _raw(_timespan_fix_0)),
        _d("Service", "KillSignal", "kill_signal", _raw(v.parse_signal)),
        _d("Service", "Restart", "restart", _raw(v.parse_restart_policy)),
        _d("Service", "RestartSec", "restart_sec", _raw(v.parse_timespan)),
        # Old names systemd 252 still reads; after the current ones, so rendering uses those.
        _d(
            "Service",
            "ReadWriteDirectories",
            "read_write_paths",
            _unescaped_words(v.parse_path_entry),
            is_list=True,
            deprecated_for="ReadWritePaths",
        ),
        _d(
            "Service",
            "ReadOnlyDirectories",
            "read_only_paths",
            _unescaped_words(v.parse_path_entry),
            is_list=True,
            deprecated_for="ReadOnlyPaths",
        ),
        _d(
            "Service",
            "InaccessibleDirectories",
            "inaccessible_paths",
            _unescaped_words(v.parse_path_entry),
            is_list=True,
            deprecated_for="InaccessiblePaths",
        ),
        _d(
            "Service",
            "MemoryLimit",
            "memory_max",
            _raw(v.parse_memory_limit),
            empty="reset",
            deprecated_for="MemoryMax",
        ),
    ]
}

SOCKET_DIRECTIVES: Mapping[tuple[str, str], Directive] = {
    (d.section, d.key): d
    for d in [
        *_COMMON,
        *[_d("Socket", k.value, "listen", _listen(k), is_list=True) for k in v.SocketKind],
        _d("Socket", "Accept", "accept", _BOOL),
        _d("Socket", "Service", "service", _expanded(_parse_service_name)),
        _d(
            "Socket",
            "FileDescriptorName",
            "file_descriptor_name",
            _expanded(_parse_fd_name),
            empty="reset",
        ),
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
        _d("Socket", "SocketUser", "socket_user", _expanded(_user(True)), empty="reset"),
        _d("Socket", "SocketGroup", "socket_group", _expanded(_user(True)), empty="reset"),
        _d("Socket", "SocketMode", "socket_mode", _raw(v.parse_mode)),
        _d("Socket", "DirectoryMode", "directory_mode", _raw(v.parse_mode)),
        _d("Socket", "RemoveOnStop", "remove_on_stop", _BOOL),
        _d("Socket", "PollLimitIntervalSec", "poll_limit_interval_sec", _raw(v.parse_timespan)),
        _d("Socket", "PollLimitBurst", "poll_limit_burst", _raw(_int(0, 2**32 - 1))),
        _d(
            "Socket",
            "TriggerLimitIntervalSec",
            "trigger_limit_interval_sec",
            _raw(v.parse_timespan),
        ),
        _d("Socket", "TriggerLimitBurst", "trigger_limit_burst", _raw(_int(0, 2**32 - 1))),
        _d("Socket", "IPAddressAllow", "ip_address_allow", _raw(v.parse_ip_prefixes), is_list=True),
        _d("Socket", "IPAddressDeny", "ip_address_deny", _raw(v.parse_ip_prefixes), is_list=True),
    ]
}

#: systemd directives that restrict what a process may do or use (sandboxing, identity,
#: resource limits). activator does not implement them, so a unit that asks for one is refused:
#: running it without would silently grant more than its author allowed.
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
        # file-system, network and label restrictions (systemd.exec, systemd.resource-control)
        "NoExecPaths",
        "ExecPaths",
        "IPIngressFilterPath",
        "IPEgressFilterPath",
        "BindToDevice",
        "SmackLabel",
        "SmackLabelIPIn",
        "SmackLabelIPOut",
        "SELinuxContextFromNet",
        # resource limits activator does not apply
        "LimitRSS",
        "LimitMEMLOCK",
        "LimitLOCKS",
        "LimitSIGPENDING",
        "LimitMSGQUEUE",
        "LimitNICE",
        "LimitRTPRIO",
        "LimitRTTIME",
        "MemoryHigh",
        "MemorySwapMax",
        "IOReadBandwidthMax",
        "IOWriteBandwidthMax",
        "IOReadIOPSMax",
        "IOWriteIOPSMax",
        "BlockIOReadBandwidth",
        "BlockIOWriteBandwidth",
        "AllowedCPUs",
        "AllowedMemoryNodes",
        "CPUQuotaPeriodSec",
        "Slice",
    }
)
