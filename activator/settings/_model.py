"""The settings model: one frozen attrs class per table of ``activator.toml``, and the converters
that read and write each key.

Rule 1: every field has a default, so ``Settings()`` is the configuration of a host without a
settings file.

Rule 2: a converter takes a value as tomllib returns it, and returns the model value or raises
:class:`_Invalid` with every reason it finds. It never sees the path or the line: the parser in
:mod:`activator.settings` adds them. A table check returns :class:`_Finding` items, errors and
warnings alike, and raises nothing.

Rule 3: this module reads no file; it is pure.

Theory of operation: a settings table is a frozen attrs class whose fields are its keys, and
:class:`Settings` has one field per table. Each key field carries a :class:`_Key` in its metadata:
the converter from the TOML value to the model value (it raises :class:`_Invalid` with the
reasons) and the renderer back. A table field of :class:`Settings` carries a :class:`_Table`,
whose optional check looks at rules that span keys (``pool.first <= pool.last``); it runs only
when every key of the table was valid on its own. The names, the order of rendered keys and the
"known:" lists of unknown-key errors all come from the field order, so adding a key is one field,
and adding a table one class and one field.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Callable
from typing import TypeVar

import attrs

from activator.errors import Severity

from ._toml import _toml_string, _toml_value, _type_name

_E = TypeVar("_E", bound=enum.Enum)


class OnExhausted(enum.Enum):
    """What a new connection gets when every UID of the pool is leased."""

    #: Close the connection at once.
    REJECT = "reject"
    #: Wait up to ``pool.wait_timeout_sec`` for a UID to be released, then close.
    WAIT = "wait"


class LogFormat(enum.Enum):
    """How the daemon writes its log lines."""

    PLAIN = "plain"
    JSON = "json"


@attrs.frozen
class HostPort:
    """A TCP address to listen on.

    Attributes:
        host: an IPv4 or IPv6 literal (no brackets, perhaps with a ``%scope``) or ``localhost``.
        port: 1..65535.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# --- converters: TOML value -> model value, or _Invalid with the reasons --------------------------


class _Invalid(Exception):
    """A value is not acceptable; ``reasons`` says why, one problem each."""

    def __init__(self, *reasons: str) -> None:
        super().__init__(*reasons)
        self.reasons = reasons


def _string(value: object) -> str:
    if not isinstance(value, str):
        msg = f"must be a string (got {_type_name(value)})"
        raise _Invalid(msg)
    if any("\ud800" <= char <= "\udfff" for char in value):
        msg = "must be valid Unicode (got a lone surrogate)"
        raise _Invalid(msg)
    return value


def _integer(value: object) -> int:
    # bool is an int in Python, but `first = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"must be an integer (got {_type_name(value)})"
        raise _Invalid(msg)
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        msg = f"must be true or false (got {_type_name(value)})"
        raise _Invalid(msg)
    return value


#: UIDs that must never be leased, and why.
_RESERVED_UIDS = {
    0: "root",
    65534: "nobody",
    65535: "(uint16_t)-1, invalid for the 16-bit calls",
    4294967295: "(uid_t)-1, which setresuid() reads as 'unchanged'",
}
#: UIDs below this belong to the system users (login.defs SYS_UID_MAX is 999).
_SYSTEM_UID_END = 1000
#: The highest UID we lease: UIDs >= 2**31 break tools that treat uid_t as a signed 32-bit number.
_UID_MAX = 2**31 - 2
#: The UIDs systemd-nspawn hands out to containers (0x80000..0x6FFFFFFF); a pool inside collides.
_CONTAINER_UIDS = (524288, 1879048191)
#: A pool with fewer UIDs than this fills up after a handful of concurrent connections.
_SMALL_POOL = 16


def _pool_uid(value: object) -> int:
    uid = _integer(value)
    if uid in _RESERVED_UIDS:
        msg = f"must not be {uid}: it is {_RESERVED_UIDS[uid]}"
        raise _Invalid(msg)
    if uid < _SYSTEM_UID_END:
        msg = f"must be >= {_SYSTEM_UID_END}: UIDs 0..{_SYSTEM_UID_END - 1} belong to system users"
        raise _Invalid(msg)
    if uid > _UID_MAX:
        msg = f"must be <= {_UID_MAX}: UIDs >= 2^31 break tools that treat uid_t as signed"
        raise _Invalid(msg)
    return uid


def _positive_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"must be a number of seconds (got {_type_name(value)})"
        raise _Invalid(msg)
    try:
        seconds = float(value)
    except OverflowError:  # TOML integers have no size limit in tomllib
        seconds = math.inf
    if not (math.isfinite(seconds) and seconds > 0):
        msg = "must be a finite number of seconds > 0"
        raise _Invalid(msg)
    return seconds


def _non_negative_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"must be a number of seconds (got {_type_name(value)})"
        raise _Invalid(msg)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not (math.isfinite(seconds) and seconds >= 0):
        msg = "must be a finite number of seconds >= 0"
        raise _Invalid(msg)
    return seconds


#: The largest wait queue: each waiter holds an accepted connection (a descriptor).
_MAX_WAITING = 1_000_000


def _positive_count(value: object) -> int:
    count = _integer(value)
    if not 1 <= count <= _MAX_WAITING:
        msg = f"must be 1..{_MAX_WAITING}"
        raise _Invalid(msg)
    return count


def _choice(enum_cls: type[_E]) -> Callable[[object], _E]:
    options = " or ".join(repr(member.value) for member in enum_cls)

    def convert(value: object) -> _E:
        text = _string(value)
        for member in enum_cls:
            if member.value == text:
                return member
        msg = f"must be {options}"
        raise _Invalid(msg)

    return convert


def _directories(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        msg = f"must be an array of strings (got {_type_name(value)})"
        raise _Invalid(msg)
    reasons = []
    if not value:
        reasons.append("must list at least one directory")
    for number, item in enumerate(value, start=1):
        try:
            text = _string(item)
        except _Invalid as invalid:
            reasons.extend(f"entry {number} {reason}" for reason in invalid.reasons)
            continue
        if not text:
            reasons.append(f"entry {number} must not be empty")
        elif "\0" in text:
            reasons.append(f"entry {number} must not contain a NUL byte")
    if reasons:
        raise _Invalid(*reasons)
    return tuple(value)


def _directory(value: object) -> str:
    text = _string(value)
    if not text:
        msg = "must not be empty"
        raise _Invalid(msg)
    if "\0" in text:
        msg = "must not contain a NUL byte"
        raise _Invalid(msg)
    return text


def _log_target(value: object) -> str:
    text = _string(value)
    if text in ("stderr", "syslog"):
        return text
    if not text.startswith("/") or text.endswith("/") or "\0" in text:
        msg = "must be 'stderr', 'syslog' or the absolute path of a file"
        raise _Invalid(msg)
    return text


_PORT = re.compile(r"[0-9]{1,5}")
# Interface names (IFNAMSIZ is 16 with the NUL) or numeric scope ids.
_IPV6_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_LISTEN_FORM = "must be 'host:port', '[ipv6]:port' or '' to disable"


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_ipv6(host: str) -> bool:
    _, percent, scope = host.partition("%")
    if percent and not _IPV6_SCOPE.fullmatch(scope):
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _listen(value: object) -> HostPort | None:
    text = _string(value)
    if not text:
        return None
    reasons = []
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text.startswith(":", close + 1):
            raise _Invalid(_LISTEN_FORM)
        host, port_text = text[1:close], text[close + 2 :]
        if not _is_ipv6(host):
            reasons.append(f"host in [] must be an IPv6 address (got {host!r})")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise _Invalid(_LISTEN_FORM)
        if ":" in host:
            reasons.append("an IPv6 address must be in brackets, as in '[::1]:9464'")
        elif host != "localhost" and not _is_ipv4(host):
            reasons.append(
                f"host must be an IPv4 address, an IPv6 address in [] or 'localhost' (got {host!r})"
            )
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        reasons.append(f"port must be 1..65535 (got {port_text!r})")
    if reasons:
        raise _Invalid(*reasons)
    return HostPort(host, int(port_text))


def _render_listen(value: object) -> str:
    return _toml_string("" if value is None else str(value))


#: sizeof(sockaddr_un.sun_path) is 108, and the path needs its NUL.
_SUN_PATH_MAX = 107


def _socket_path(value: object) -> str:
    path = _string(value)
    reasons = []
    if not path.startswith("/"):
        reasons.append("must be an absolute path")
    elif path.endswith("/"):
        reasons.append("must name the socket file, not a directory")
    if "\0" in path:
        reasons.append("must not contain a NUL byte")
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > _SUN_PATH_MAX:
        reasons.append(f"must be at most {_SUN_PATH_MAX} bytes, the room in sun_path (got {size})")
    if reasons:
        raise _Invalid(*reasons)
    return path


# shadow-utils' default NAME_REGEX, at most 31 characters; no trailing "$" (that is for machines).
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,30}")


def _group(value: object) -> str:
    name = _string(value)
    if name and not _GROUP_NAME.fullmatch(name):
        msg = "must be a group name ([A-Za-z_][A-Za-z0-9_-]{0,30}) or '' for root only"
        raise _Invalid(msg)
    return name


# --- the model ------------------------------------------------------------------------------------


@attrs.frozen
class _Key:
    """How one settings key is read and written."""

    convert: Callable[[object], object]
    render: Callable[[object], str] = _toml_value


@attrs.frozen
class _Finding:
    """A problem of a whole table, found by its check.

    Attributes:
        reason: what is wrong.
        key: the key at fault, or None for the table as a whole.
        value: the value at fault, as shown.
        near: keys whose line places the finding; the first one written wins.
        severity: error or warning.
    """

    reason: str
    key: str | None
    value: str | None
    near: tuple[str, ...] = ()
    severity: Severity = Severity.ERROR


@attrs.frozen
class _Table:
    """How one settings table is checked beyond its keys."""

    check: Callable[[object], list[_Finding]] | None = None


_META = "activator.settings"


def _key(
    convert: Callable[[object], object], render: Callable[[object], str] = _toml_value
) -> dict[str, _Key]:
    """The attrs metadata of a settings key: how to read and write it."""
    return {_META: _Key(convert, render)}


def _table(check: Callable[[object], list[_Finding]] | None = None) -> dict[str, _Table]:
    """The attrs metadata of a :class:`Settings` field that holds a table."""
    return {_META: _Table(check)}


@attrs.frozen
class PoolSettings:
    """``[pool]``: the UIDs leased to connections; each UID's group has the same number.

    Attributes:
        first: the lowest UID of the pool (default 0xEF00, as systemd's DynamicUser=).
        last: the highest UID of the pool (default 0xFFEF).
        on_exhausted: what a connection gets when no UID is free.
        wait_timeout_sec: with ``on_exhausted = "wait"``, how long to wait for a free UID.
        max_waiting: with ``on_exhausted = "wait"``, how many invocations may wait at once;
            one more is refused at once.
        reuse_delay_sec: how long a released UID rests before it is leased again (0: at
            once; released UIDs go to the back of the queue either way).
    """

    first: int = attrs.field(default=61184, metadata=_key(_pool_uid))
    last: int = attrs.field(default=65519, metadata=_key(_pool_uid))
    on_exhausted: OnExhausted = attrs.field(
        default=OnExhausted.REJECT, metadata=_key(_choice(OnExhausted))
    )
    wait_timeout_sec: float = attrs.field(default=5.0, metadata=_key(_positive_seconds))
    max_waiting: int = attrs.field(default=1024, metadata=_key(_positive_count))
    reuse_delay_sec: float = attrs.field(default=0.0, metadata=_key(_non_negative_seconds))


def _check_pool(pool: object) -> list[_Finding]:
    if not isinstance(pool, PoolSettings):  # pragma: no cover - the table registry says it is
        return []
    first, last = pool.first, pool.last
    if first > last:
        return [_Finding(f"must be <= pool.last (got {last})", "first", str(first), ("first",))]
    span = f"{first}..{last}"
    near = ("last", "first")
    findings = []
    # The bounds are not 65534/65535 themselves (_pool_uid), but the range may still straddle them.
    if first < 65534 and last > 65535:
        reason = "must not contain 65534 (nobody) or 65535 ((uint16_t)-1)"
        findings.append(_Finding(reason, None, span, near))
    low, high = _CONTAINER_UIDS
    if first <= high and last >= low:
        reason = f"overlaps {low}..{high}, the UIDs systemd-nspawn gives to containers"
        findings.append(_Finding(reason, None, span, near, Severity.WARNING))
    size = last - first + 1
    if size < _SMALL_POOL:
        reason = f"holds only {size} UIDs (fewer than {_SMALL_POOL}): a few connections exhaust it"
        findings.append(_Finding(reason, None, span, near, Severity.WARNING))
    return findings


@attrs.frozen
class UnitsSettings:
    """``[units]``: where the ``.socket`` and ``.service`` files are.

    Attributes:
        directories: searched in order; a unit in an earlier directory hides one of the same
            name in a later one (as /etc hides /usr/lib for systemd). :func:`load_settings`
            resolves relative entries against the directory of the settings file.
        enabled_directory: where ``activator enable`` records the enabled template instances
            (one empty file per instance unit); relative to the settings file as well.
    """

    directories: tuple[str, ...] = attrs.field(
        default=("/etc/activator/units",), metadata=_key(_directories)
    )
    enabled_directory: str = attrs.field(
        default="/etc/activator/enabled", metadata=_key(_directory)
    )


@attrs.frozen
class MetricsSettings:
    """``[metrics]``: the Prometheus endpoint.

    Attributes:
        listen: where ``/metrics`` is served over HTTP, or None when ``listen = ""`` turns it off.
    """

    listen: HostPort | None = attrs.field(
        default=HostPort("127.0.0.1", 9464), metadata=_key(_listen, _render_listen)
    )


@attrs.frozen
class ControlSettings:
    """``[control]``: the socket ``activator status/list/stop`` talk to.

    Attributes:
        socket: absolute path of the Unix socket.
        group: a group whose members may use it besides root; ``""`` means root only.
    """

    socket: str = attrs.field(default="/run/activator/control", metadata=_key(_socket_path))
    group: str = attrs.field(default="", metadata=_key(_group))


@attrs.frozen
class UserdbSettings:
    """``[userdb]``: the systemd userdb Varlink service that makes the dynamic users resolvable.

    Attributes:
        enabled: whether to serve it.
    """

    enabled: bool = attrs.field(default=True, metadata=_key(_boolean))


@attrs.frozen
class LogSettings:
    """``[log]``: the daemon's own log.

    Attributes:
        format: plain text lines or one JSON object per line.
        target: where the lines go: ``stderr``, ``syslog`` (the daemon facility), or the
            absolute path of a file, appended to.
    """

    format: LogFormat = attrs.field(default=LogFormat.PLAIN, metadata=_key(_choice(LogFormat)))
    target: str = attrs.field(default="stderr", metadata=_key(_log_target))


@attrs.frozen
class Settings:
    """The whole of ``activator.toml``; ``Settings()`` is the default configuration."""

    pool: PoolSettings = attrs.field(factory=PoolSettings, metadata=_table(_check_pool))
    units: UnitsSettings = attrs.field(factory=UnitsSettings, metadata=_table())
    metrics: MetricsSettings = attrs.field(factory=MetricsSettings, metadata=_table())
    control: ControlSettings = attrs.field(factory=ControlSettings, metadata=_table())
    userdb: UserdbSettings = attrs.field(factory=UserdbSettings, metadata=_table())
    log: LogSettings = attrs.field(factory=LogSettings, metadata=_table())


def _meta_key(field: attrs.Attribute[object]) -> _Key:
    spec = field.metadata.get(_META)
    if not isinstance(spec, _Key):  # pragma: no cover - every field is made by _key
        msg = f"settings field {field.name} has no _Key"
        raise TypeError(msg)
    return spec


def _meta_table(field: attrs.Attribute[object]) -> _Table:
    spec = field.metadata.get(_META)
    if not isinstance(spec, _Table):  # pragma: no cover - every field is made by _table
        msg = f"settings field {field.name} has no _Table"
        raise TypeError(msg)
    return spec
