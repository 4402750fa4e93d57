"""The daemon settings: ``activator.toml`` in, a frozen :class:`Settings` out.

Rule 1: every key has a default, so ``Settings()`` is the configuration of a host without a
settings file, and an empty file means exactly the same.

Rule 2: fail closed. An unknown table or key, a value of the wrong type or out of range is an
error. A parse collects *every* problem it finds and raises them together in one
:class:`~activator.errors.ConfigError`, in file order. Warnings (legal but unwise, such as a tiny
UID pool) never stop a parse; :func:`check_settings` and ``load_settings(on_warning=...)`` hand
them out.

Rule 3: everything here is pure except :func:`load_settings`, the one function that reads a file.
:func:`parse_settings` takes the path only to name it in problems, and keeps relative paths as
written; :func:`load_settings` resolves them against the directory of the file.

Rule 4: :func:`render_settings` writes text that :func:`parse_settings` reads back to an equal
:class:`Settings`.

Theory of operation: a settings table is a frozen attrs class whose fields are its keys, and
:class:`Settings` has one field per table. Each key field carries a :class:`_Key` in its metadata:
the converter from the TOML value to the model value (it raises :class:`_Invalid` with the
reasons) and the renderer back. A table field of :class:`Settings` carries a :class:`_Table`,
whose optional check looks at rules that span keys (``pool.first <= pool.last``); it runs only
when every key of the table was valid on its own. The names, the order of rendered keys and the
"known:" lists of unknown-key errors all come from the field order, so adding a key is one field,
and adding a table one class and one field.

tomllib reports no positions for values, so :func:`_index_lines` scans the text for ``[table]``
headers and ``key =`` lines (dotted and quoted keys included; strings and values spanning lines
are skipped) to give each problem its line. A key written inside an inline table gets the line of
the table; a key not in the text at all gets None.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
import math
import os.path
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from activator.errors import ConfigError, Problem, Severity

#: The settings file read when none is named (``load_settings(None)``).
DEFAULT_CONFIG_PATH = "/etc/activator/activator.toml"

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


def _type_name(value: object) -> str:
    return type(value).__name__


def _toml_string(text: str) -> str:
    """Quote text as a TOML basic string."""
    out = ['"']
    for char in text:
        escape = _STRING_ESCAPES.get(char)
        if escape is not None:
            out.append(escape)
        elif char < " " or char == "\x7f":
            # TOML forbids raw control characters (except tab) in basic strings.
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


_STRING_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: object) -> str:
    """Render a Python value as a TOML value (the inverse of what tomllib returns)."""
    if isinstance(value, enum.Enum):
        return _toml_value(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    msg = f"cannot render {_type_name(value)} as TOML"
    raise TypeError(msg)


def _show(value: object) -> str:
    """The value at fault as a Problem shows it: strings as they are, the rest as TOML."""
    return value if isinstance(value, str) else _toml_value(value)


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
    """

    first: int = attrs.field(default=61184, metadata=_key(_pool_uid))
    last: int = attrs.field(default=65519, metadata=_key(_pool_uid))
    on_exhausted: OnExhausted = attrs.field(
        default=OnExhausted.REJECT, metadata=_key(_choice(OnExhausted))
    )
    wait_timeout_sec: float = attrs.field(default=5.0, metadata=_key(_positive_seconds))


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
    """

    directories: tuple[str, ...] = attrs.field(
        default=("/etc/activator/units",), metadata=_key(_directories)
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
    """

    format: LogFormat = attrs.field(default=LogFormat.PLAIN, metadata=_key(_choice(LogFormat)))


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


# --- line numbers ---------------------------------------------------------------------------------

_KEY_PART = re.compile(
    r"""[ \t]*(?:
        (?P<bare>[A-Za-z0-9_-]+)
      | "(?P<basic>(?:[^"\\\n]|\\.)*)"
      | '(?P<literal>[^'\n]*)'
    )[ \t]*""",
    re.VERBOSE,
)
_BASIC_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?')


def _unescape(basic: str) -> str:
    try:
        value = tomllib.loads(f'k = "{basic}"')["k"]
    except tomllib.TOMLDecodeError:
        return basic
    return value if isinstance(value, str) else basic


def _read_key(line: str, pos: int) -> tuple[tuple[str, ...], int] | None:
    """Read a dotted key starting at pos; return its parts and where it ends, or None."""
    parts: list[str] = []
    while True:
        match = _KEY_PART.match(line, pos)
        if match is None:
            return None
        if match["bare"] is not None:
            parts.append(match["bare"])
        elif match["basic"] is not None:
            parts.append(_unescape(match["basic"]))
        else:
            parts.append(match["literal"])
        pos = match.end()
        if not line.startswith(".", pos):
            return tuple(parts), pos
        pos += 1


def _scan_value(line: str, pos: int, depth: int, in_string: str | None) -> tuple[int, str | None]:
    """Follow a value from pos to the end of the line.

    Returns:
        How many arrays and inline tables are still open, and the delimiter of a multi-line string
        still open (or None), so that the next line is known to continue the value.
    """
    end = len(line)
    while pos < end:
        if in_string is not None:
            if in_string == '"""' and line[pos] == "\\":
                pos += 2
            elif line.startswith(in_string, pos):
                pos += 3
                # Up to two quotes may come right before the closing delimiter; they are content.
                while pos < end and line[pos] == in_string[0]:
                    pos += 1
                in_string = None
            else:
                pos += 1
            continue
        char = line[pos]
        if char == "#":
            break
        if line.startswith(('"""', "'''"), pos):
            in_string = line[pos : pos + 3]
            pos += 3
        elif char == '"':
            match = _BASIC_STRING.match(line, pos)
            pos = match.end() if match else end
        elif char == "'":
            close = line.find("'", pos + 1)
            pos = end if close < 0 else close + 1
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth = max(0, depth - 1)
            pos += 1
    return depth, in_string


def _index_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each table and key path written in text to the 1-based line it is first written on.

    ``[pool]`` then ``first = 1`` and a top-level ``pool.first = 1`` both give
    ``("pool", "first")``, and also ``("pool",)``. The text is expected to be valid TOML; on
    anything else the index is merely incomplete.
    """
    index: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    depth, in_string = 0, None

    def record(path: tuple[str, ...], number: int) -> None:
        for size in range(1, len(path) + 1):
            index.setdefault(path[:size], number)

    # tomllib counts lines by "\n" only; str.splitlines also splits on \v, \x1c, ... and won't do.
    for number, line in enumerate(text.split("\n"), start=1):
        if depth or in_string is not None:
            depth, in_string = _scan_value(line, 0, depth, in_string)
            continue
        start = len(line) - len(line.lstrip(" \t"))
        if line.startswith("[", start):
            header = _read_key(line, start + (2 if line.startswith("[[", start) else 1))
            if header is not None:
                table = header[0]
                record(table, number)
            continue
        key = _read_key(line, start)
        if key is None or not line.startswith("=", key[1]):
            continue
        record(table + key[0], number)
        depth, in_string = _scan_value(line, key[1] + 1, 0, None)
    return index


def _line_of(index: Mapping[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
    """The line of path, else of its nearest enclosing table (an inline table), else None."""
    for size in range(len(path), 0, -1):
        line = index.get(path[:size])
        if line is not None:
            return line
    return None


# --- parsing --------------------------------------------------------------------------------------

_TOML_POSITION = re.compile(r" \(at line (\d+), column (\d+)\)$")
_TOML_END = " (at end of document)"


def _syntax_problem(error: tomllib.TOMLDecodeError, path: str) -> Problem:
    message = str(error)
    match = _TOML_POSITION.search(message)
    if match is not None:
        reason = f"invalid TOML: {message[: match.start()]} (column {match[2]})"
        return Problem(path, int(match[1]), None, None, reason)
    if message.endswith(_TOML_END):
        message = message.removesuffix(_TOML_END) + " (at end of file)"
    return Problem(path, None, None, None, f"invalid TOML: {message}")


def _in_file_order(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    # Stable: problems without a line keep their order, after the others.
    return tuple(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))


@attrs.define
class _Collector:
    path: str
    index: Mapping[tuple[str, ...], int]
    problems: list[Problem] = attrs.Factory(list)

    def add(
        self,
        place: tuple[str, ...],
        key: str | None,
        value: str | None,
        reason: str,
        severity: Severity = Severity.ERROR,
    ) -> None:
        line = _line_of(self.index, place)
        self.problems.append(Problem(self.path, line, key, value, reason, severity))


def _parse_table(
    collect: _Collector,
    name: str,
    raw: Mapping[str, object],
    cls: type[attrs.AttrsInstance],
    table: _Table,
) -> attrs.AttrsInstance | None:
    """Read one table into its model and run its check, collecting problems.

    Returns:
        The model, or None when a key's value was invalid (an error was collected).
    """
    fields = attrs.fields_dict(cls)
    changes: dict[str, Any] = {}
    valid = True
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        field = fields.get(key)
        if field is None:
            collect.add((name, key), dotted, None, f"unknown key (known: {', '.join(fields)})")
            valid = False
            continue
        try:
            changes[key] = _meta_key(field).convert(value)
        except _Invalid as invalid:
            for reason in invalid.reasons:
                collect.add((name, key), dotted, _show(value), reason)
            valid = False
    if not valid:
        return None
    model = cls(**changes)  # every field has a default
    findings = [] if table.check is None else table.check(model)
    for finding in findings:
        place = next(((name, k) for k in finding.near if (name, k) in collect.index), (name,))
        key = name if finding.key is None else f"{name}.{finding.key}"
        collect.add(place, key, finding.value, finding.reason, finding.severity)
    return model


def check_settings(text: str, path: str) -> tuple[Settings | None, tuple[Problem, ...]]:
    """Parse the text of a settings file and report every problem, warnings included.

    Args:
        text: the contents of ``activator.toml``.
        path: the file's name, as the user gave it; used only in problems.

    Returns:
        The settings (None if any problem is an error) and all problems, in file order.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return None, (_syntax_problem(error, path),)
    except RecursionError:  # tomllib recurses per nesting level of arrays and inline tables
        return None, (Problem(path, None, None, None, "invalid TOML: nested too deeply"),)
    collect = _Collector(path, _index_lines(text))
    defaults = Settings()
    tables = attrs.fields_dict(Settings)
    known = ", ".join(tables)
    changes: dict[str, Any] = {}
    for name, raw in data.items():
        field = tables.get(name)
        if field is None:
            kind = "table" if isinstance(raw, dict) else "key"
            collect.add((name,), name, None, f"unknown {kind} (known tables: {known})")
        elif not isinstance(raw, dict):
            collect.add((name,), name, _show(raw), f"must be a table (got {_type_name(raw)})")
        else:
            cls = type(getattr(defaults, name))
            model = _parse_table(collect, name, raw, cls, _meta_table(field))
            if model is not None:
                changes[name] = model
    problems = _in_file_order(collect.problems)
    # Every failure above collected an error; an error anywhere means no settings at all.
    if any(p.is_error for p in problems):
        return None, problems
    return attrs.evolve(defaults, **changes), problems


def parse_settings(text: str, path: str) -> Settings:
    """Parse the text of a settings file.

    Args:
        text: the contents of ``activator.toml``.
        path: the file's name, as the user gave it; used only in problems.

    Returns:
        The settings. Relative ``units.directories`` are kept as written (see
        :func:`load_settings`). Warnings are dropped; :func:`check_settings` returns them.

    Raises:
        ConfigError: with every error found, in file order.
    """
    settings, problems = check_settings(text, path)
    if settings is None:
        raise ConfigError([p for p in problems if p.is_error])
    return settings


def _resolve_directories(settings: Settings, base: str) -> Settings:
    directories = tuple(os.path.join(base, d) for d in settings.units.directories)
    return attrs.evolve(settings, units=UnitsSettings(directories))


def _override_directories(settings: Settings, override: Sequence[str]) -> Settings:
    problems = [
        Problem("command line", None, "--units", d, "must not be empty or contain a NUL byte")
        for d in override
        if not d or "\0" in d
    ]
    if problems:
        raise ConfigError(problems)
    return attrs.evolve(settings, units=UnitsSettings(tuple(os.path.abspath(d) for d in override)))


def load_settings(
    path: str | None,
    *,
    units_override: Sequence[str] = (),
    on_warning: Callable[[Problem], object] | None = None,
) -> Settings:
    """Read and parse the settings file; the only function here that touches the file system.

    Relative ``units.directories`` are resolved against the directory of the settings file, so a
    settings file and its units can move together (``directories = ["units"]`` next to it).

    Args:
        path: the settings file; None means :data:`DEFAULT_CONFIG_PATH` if it exists, else the
            defaults.
        units_override: directories given on the command line (``--units DIR``, repeatable); when
            non-empty they replace ``units.directories``. Relative ones are resolved against the
            current directory, as a shell user means them.
        on_warning: called with each warning, in file order, before any error is raised.

    Returns:
        The settings, with absolute units directories.

    Raises:
        ConfigError: the file given cannot be read ("No such file or directory", ...), is not UTF-8,
            or has errors (all of them).
    """
    name = DEFAULT_CONFIG_PATH if path is None else path
    try:
        with open(name, "rb") as file:
            data = file.read()
    except FileNotFoundError as error:
        if path is not None:
            raise ConfigError(
                Problem(name, None, None, None, error.strerror or str(error))
            ) from None
        settings = Settings()
    except OSError as error:
        raise ConfigError(Problem(name, None, None, None, error.strerror or str(error))) from None
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            problem = Problem(name, line, None, None, f"not valid UTF-8 ({error.reason})")
            raise ConfigError(problem) from None
        parsed, problems = check_settings(text, name)
        if on_warning is not None:
            for problem in problems:
                if not problem.is_error:
                    on_warning(problem)
        if parsed is None:
            raise ConfigError([p for p in problems if p.is_error])
        settings = _resolve_directories(parsed, os.path.dirname(os.path.abspath(name)))
    if units_override:
        settings = _override_directories(settings, units_override)
    return settings


def render_settings(settings: Settings) -> str:
    """Write settings as ``activator.toml`` text, every key included.

    Args:
        settings: what to write.

    Returns:
        TOML text that :func:`parse_settings` reads back to an equal Settings.
    """
    chunks = []
    for table_field in attrs.fields(Settings):
        table = getattr(settings, table_field.name)
        lines = [f"[{table_field.name}]"]
        lines.extend(
            f"{field.name} = {_meta_key(field).render(getattr(table, field.name))}"
            for field in attrs.fields(type(table))
        )
        chunks.append("\n".join(lines))
    return "\n\n".join(chunks) + "\n"
