"""Pure converters for the values of systemd directives: text in, typed value out, and back.

Rule 1: this module does no I/O and reads no clock. It imports only ``re``, ``ipaddress``,
``signal`` (for its name table), ``enum``, ``typing`` and ``attrs``; it knows no unit file and no
section, only how one value is spelled.

Rule 2: every ``parse_*`` takes the value text, already stripped of surrounding whitespace, and
returns an immutable value or raises ``ValueError(reason)``. The reason is a short phrase in attrs'
"must be X (got Y)" wording, where Y is the offending part only: the caller prints
``path:line: Key='value': reason``, so we never repeat the whole value. An empty value is an error
everywhere: ``Key=`` resets a list, and the caller handles that before calling us.

Rule 3: every parsed value has a ``render_*`` inverse that gives canonical text, and
``parse(render(v)) == v`` for every valid ``v``. :data:`INFINITY` (``None``) means "infinity" in
every converter that accepts it.

Rule 4: the semantics are systemd 252's, and each converter names the systemd function it copies.
Where we differ we are stricter, never laxer: we refuse what systemd would accept with a surprising
meaning (a leading ``+``, ``5:`` for a limit, a scope on an IPv4 address), and a comment says so.
Text that came from bytes which are not UTF-8 carries them as surrogate escapes
(``surrogateescape``), so a word always encodes back to the exact bytes systemd would produce.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import signal
from typing import Final, TypeVar

import attrs

INFINITY: None = None
"""The value every converter below uses for "infinity"."""

_WS: Final = " \t\n\r"  # systemd's WHITESPACE
_UINT64_MAX: Final = 2**64 - 1  # USEC_INFINITY, RLIM_INFINITY and CGROUP_LIMIT_MAX: all "infinity"
_INT_MAX: Final = 2**31 - 1
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _int(digits: str) -> int:
    # int() refuses more than 4300 digits, leading zeros included; callers bound the rest.
    return int(digits.lstrip("0") or "0")


def _decimal(text: str, minimum: int, maximum: int, what: str = "") -> int:
    subject = f"{what} " if what else ""
    # Decimal digits only: Python's int() would also take "1_000", " 1" and Arabic-Indic digits.
    if re.fullmatch(r"-?[0-9]+", text) is None:
        msg = f"{subject}must be a decimal integer (got {text!r})"
        raise ValueError(msg)
    digits = text.lstrip("-")
    too_long = len(digits.lstrip("0")) > len(str(max(abs(minimum), abs(maximum))))
    value = 0 if too_long else _int(digits) * (-1 if text.startswith("-") else 1)
    if too_long or not minimum <= value <= maximum:
        msg = f"{subject}must be {minimum}..{maximum} (got {text})"
        raise ValueError(msg)
    return value


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        msg = "must be valid UTF-8 text (got a lone surrogate)"
        raise ValueError(msg) from None


# --- Booleans -----------------------------------------------------------------------------------

# parse_boolean() in src/basic/parse-util.c, which compares with strcaseeq().
_TRUE: Final = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE: Final = frozenset({"0", "no", "n", "false", "f", "off"})


def _boolean_or_none(text: str) -> bool | None:
    word = text.lower() if text.isascii() else text
    return True if word in _TRUE else False if word in _FALSE else None


def parse_boolean(text: str) -> bool:
    """Parse a systemd boolean: ``1 yes y true t on`` or ``0 no n false f off``, any case."""
    value = _boolean_or_none(text)
    if value is None:
        msg = f"must be a boolean like 'yes' or 'no' (got {text!r})"
        raise ValueError(msg)
    return value


def render_boolean(value: bool) -> str:
    """Render a boolean as ``yes`` or ``no``."""
    return "yes" if value else "no"


# --- Time spans ---------------------------------------------------------------------------------

_SEC: Final = 1_000_000
_MINUTE, _HOUR, _DAY, _WEEK = 60 * _SEC, 3600 * _SEC, 86400 * _SEC, 604800 * _SEC
_MONTH, _YEAR = 2629800 * _SEC, 31557600 * _SEC  # 30.44 and 365.25 days, as time-util.h
# The unit table of parse_time() in src/basic/time-util.c (both spellings of the micro sign).
_TIME_UNITS: Final[dict[str, int]] = {
    **dict.fromkeys(("usec", "us", "µs", "μs"), 1),
    **dict.fromkeys(("msec", "ms"), 1000),
    **dict.fromkeys(("seconds", "second", "sec", "s"), _SEC),
    **dict.fromkeys(("minutes", "minute", "min", "m"), _MINUTE),
    **dict.fromkeys(("hours", "hour", "hr", "h"), _HOUR),
    **dict.fromkeys(("days", "day", "d"), _DAY),
    **dict.fromkeys(("weeks", "week", "w"), _WEEK),
    **dict.fromkeys(("months", "month", "M"), _MONTH),
    **dict.fromkeys(("years", "year", "y"), _YEAR),
}
# One component: "5", "1.5", ".5", each with an optional unit. A number without a unit must be
# followed by whitespace or the end: parse_time() refuses "12.34.56" but takes "12.34s.56".
_TIME_PART: Final = re.compile(
    r"[ \t\n\r]*(?:([0-9]+)(?:\.([0-9]+))?|\.([0-9]+))(?:[ \t\n\r]*([^\W\d_]+)|(?=[ \t\n\r]|\Z))"
)
# format_timespan() in src/basic/time-util.c, largest unit first.
_TIME_FORMAT: Final = (
    ("y", _YEAR), ("month", _MONTH), ("w", _WEEK), ("d", _DAY), ("h", _HOUR),
    ("min", _MINUTE), ("s", _SEC), ("ms", 1000), ("us", 1),
)  # fmt: skip


def parse_timespan(text: str, *, default_unit: str = "s") -> int | None:
    """Parse a systemd.time(7) time span into microseconds, or None for ``infinity``.

    Components add up (``1min 30s``, ``2h30m``, ``1.5s``); a number without a unit is in
    ``default_unit``. Copies parse_time() of systemd 252, including its quirks (``5s6`` is 11 s,
    fractions are truncated digit by digit), except that a leading ``+`` is refused.

    Raises:
        ValueError: empty, negative, unknown unit, bad syntax, or not below 2^64-1 µs.
    """
    text = text.strip(_WS)
    if text == "infinity":
        return INFINITY
    if not text:
        msg = "must not be empty"
        raise ValueError(msg)
    if text.startswith("-"):
        msg = "must not be negative"
        raise ValueError(msg)
    total, pos = 0, 0
    while pos < len(text):
        match = _TIME_PART.match(text, pos)
        if match is None:
            msg = f"must be a time span like '1min 30s' (got {text[pos:].strip(_WS)!r})"
            raise ValueError(msg)
        whole, fraction, bare_fraction, unit = match.groups()
        if unit is not None and unit not in _TIME_UNITS:
            msg = f"unknown time unit {unit!r}"
            raise ValueError(msg)
        multiplier = _TIME_UNITS[default_unit if unit is None else unit]
        if len((whole or "").lstrip("0")) > 19 or _int(whole or "") >= 2**63:
            msg = f"must be at most {_UINT64_MAX - 1}us"  # strtoll() overflows
            raise ValueError(msg)
        total += _int(whole or "") * multiplier
        # parse_time() adds each decimal digit times multiplier/10^i in integer arithmetic, so
        # digits past the unit's precision count for nothing; we do the same, to the microsecond.
        step = multiplier // 10
        for digit in fraction or bare_fraction or "":
            if not step:
                break
            total += int(digit) * step
            step //= 10
        pos = match.end()
    if total >= _UINT64_MAX:
        msg = f"must be at most {_UINT64_MAX - 1}us"
        raise ValueError(msg)
    return total


def render_timespan(usec: int | None) -> str:
    """Render microseconds as systemd's format_timespan() does (``1min 30s``, ``1.500000s``)."""
    if usec is None:
        return "infinity"
    if not 0 <= usec < _UINT64_MAX:
        msg = f"must be 0..{_UINT64_MAX - 1} (got {usec})"
        raise ValueError(msg)
    parts: list[str] = []
    for suffix, size in _TIME_FORMAT:
        if usec < size:
            continue
        whole, rest = divmod(usec, size)
        # Below a minute a remainder is shown as a fraction of the largest unit (accuracy 1 µs).
        if usec < _MINUTE and rest:
            parts.append(f"{whole}.{rest:0{len(str(size)) - 1}d}{suffix}")
            break
        parts.append(f"{whole}{suffix}")
        usec = rest
    return " ".join(parts) or "0"


# --- Sizes and limits ---------------------------------------------------------------------------

# parse_size() in src/basic/parse-util.c with base 1024. Suffixes are case-sensitive and must
# come in decreasing order: "1G 512M" and "1K2" are valid, "1M 1G" is not.
_SIZE_SUFFIXES: Final = ("E", "P", "T", "G", "M", "K", "B", "")
_SIZE_FACTORS: Final = (1024**6, 1024**5, 1024**4, 1024**3, 1024**2, 1024, 1, 1)
_SIZE_PART: Final = re.compile(r"[ \t\n\r]*([0-9]+)(?:\.([0-9]*))?[ \t\n\r]*([EPTGMKB]?)")


def parse_size(text: str) -> int | None:
    """Parse a size in bytes with base-1024 suffixes ``B K M G T P E`` (``1.5G``), or ``infinity``.

    Raises:
        ValueError: empty, negative, bad syntax, or not below 2^64-1 (which means infinity).
    """
    if text == "infinity":
        return INFINITY
    if not text or text.startswith("-"):
        msg = "must not be empty" if not text else "must not be negative"
        raise ValueError(msg)
    total, pos, next_suffix = 0, 0, 0
    while pos < len(text):
        match = _SIZE_PART.match(text, pos)
        if match is None:
            msg = f"must be a size like '512M' or '1.5G' (got {text[pos:].strip(_WS)!r})"
            raise ValueError(msg)
        whole, fraction, suffix = match.groups()
        index = _SIZE_SUFFIXES.index(suffix)
        if index < next_suffix:
            msg = f"size suffixes must decrease (got {suffix or 'no suffix'!r} after larger ones)"
            raise ValueError(msg)
        if len(whole.lstrip("0")) > 20 or len((fraction or "").lstrip("0")) > 20:
            msg = "must be less than 16E"
            raise ValueError(msg)
        factor = _SIZE_FACTORS[index]
        # systemd computes the fraction in double precision and truncates; so do we, bit for bit.
        frac = float(_int(fraction or ""))
        for _ in fraction or "":
            frac /= 10
        total += _int(whole) * factor + int(frac * factor)
        pos, next_suffix = match.end(), index + 1
    if total >= _UINT64_MAX:
        msg = "must be less than 16E"
        raise ValueError(msg)
    return total


def render_size(value: int | None) -> str:
    """Render bytes with the largest suffix that divides them exactly (``3G``, ``1536``)."""
    if value is None:
        return "infinity"
    if not 0 <= value < _UINT64_MAX:
        msg = f"must be 0..{_UINT64_MAX - 1} (got {value})"
        raise ValueError(msg)
    for suffix, factor in zip(_SIZE_SUFFIXES[:6], _SIZE_FACTORS, strict=False):
        if value and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


@attrs.frozen
class Percent:
    """A percentage with two decimals, as systemd's parse_permyriad(): 1% is ``permyriad=100``."""

    permyriad: int


def _parse_permyriad(text: str, *, bounded: bool) -> Percent | None:
    """parse_permyriad{,_unbounded}() in src/basic/percent-util.c; None when no % ‰ ‱ suffix."""
    for symbol, decimals in (("%", 2), ("‰", 1), ("‱", 0)):
        if text.endswith(symbol):
            match = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?", text.removesuffix(symbol))
            fraction = (match[2] or "") if match else ""
            if match is None or len(fraction) > decimals:
                msg = f"must be a number with at most {decimals} decimals before {symbol!r}"
                msg += f" (got {text!r})"
                raise ValueError(msg)
            too_big = len(match[1].lstrip("0")) > 10
            value = _int(match[1] + fraction.ljust(decimals, "0")) * 10 ** (2 - decimals)
            value = _INT_MAX + 1 if too_big else value
            if value > (10000 if bounded else _INT_MAX):
                msg = f"must be 0%..{'100' if bounded else '21474836.47'}% (got {text})"
                raise ValueError(msg)
            return Percent(value)
    return None


def _render_percent(value: Percent) -> str:
    whole, hundredths = divmod(value.permyriad, 100)
    return f"{whole}.{hundredths:02d}".rstrip("0").rstrip(".") + "%"


def parse_memory_limit(text: str, *, allow_zero: bool = False) -> int | Percent | None:
    """Parse ``MemoryMax=`` and friends: a size in bytes, 0%..100% of RAM, or ``infinity``.

    As config_parse_memory_limit(), zero (``0``, ``0%``) is refused unless ``allow_zero`` (which
    systemd sets for MemoryMin=, MemoryLow= and MemorySwapMax=).
    """
    if text == "infinity":
        return INFINITY
    value = _parse_permyriad(text, bounded=True)
    result = parse_size(text) if value is None else value
    if not allow_zero and result in (0, Percent(0)):
        msg = f"must be more than zero (got {text})"
        raise ValueError(msg)
    return result


def parse_tasks_max(text: str) -> int | Percent | None:
    """Parse ``TasksMax=``: a number 1..2^64-2, 0%..100% of the system's maximum, or ``infinity``.

    As config_parse_tasks_max() in systemd 252, ``0`` is refused but ``0%`` is accepted.
    """
    if text == "infinity":
        return INFINITY
    value = _parse_permyriad(text, bounded=True)
    return _decimal(text, 1, _UINT64_MAX - 1) if value is None else value


def parse_cpu_quota(text: str) -> Percent:
    """Parse ``CPUQuota=``: a percentage above zero, which may exceed 100% (several CPUs)."""
    value = _parse_permyriad(text, bounded=False)
    if value is None:
        msg = f"must be a percentage like '20%' (got {text!r})"
        raise ValueError(msg)
    if not value.permyriad:
        msg = "must be more than 0%"
        raise ValueError(msg)
    return value


def render_limit(value: int | Percent | None) -> str:
    """Render a value of :func:`parse_memory_limit`, :func:`parse_tasks_max` or CPU quota."""
    if value is None:
        return "infinity"
    return _render_percent(value) if isinstance(value, Percent) else str(value)


@attrs.frozen
class RLimit:
    """A resource limit pair; None is infinity. LimitCPU= values are in seconds."""

    soft: int | None
    hard: int | None


# rlimit_parse_table[] in src/basic/rlimit-util.c, for the keys activator applies.
_RLIMIT_KINDS: Final = {
    "LimitCPU": "sec", "LimitNOFILE": "number", "LimitNPROC": "number", "LimitAS": "size",
    "LimitFSIZE": "size", "LimitCORE": "size", "LimitDATA": "size", "LimitSTACK": "size",
}  # fmt: skip


def _parse_rlimit_one(kind: str, text: str) -> int | None:
    if text == "infinity":
        return INFINITY
    if kind == "number":  # rlimit_parse_u64()
        return _decimal(text, 0, _UINT64_MAX - 1)
    if kind == "size":  # rlimit_parse_size()
        return parse_size(text)
    usec = parse_timespan(text)  # rlimit_parse_sec(): rounds up to whole seconds
    return None if usec is None else -(-usec // _SEC)


def parse_rlimit(key: str, text: str) -> RLimit:
    """Parse a ``Limit*=`` value: one value for both limits, or ``soft:hard``, as rlimit_parse().

    Args:
        key: the directive, e.g. ``LimitNOFILE``; it decides between numbers, sizes and seconds.
        text: the value.

    Raises:
        ValueError: unknown key, bad value, or soft above hard. Unlike systemd, ``5:`` (an empty
            hard limit, which systemd reads as ``5:5``) is refused.
    """
    kind = _RLIMIT_KINDS.get(key)
    if kind is None:
        msg = f"unknown resource limit {key!r} (supported: {', '.join(_RLIMIT_KINDS)})"
        raise ValueError(msg)
    parts = text.split(":")
    if len(parts) > 2 or "" in parts:
        msg = f"must be one value or 'soft:hard', neither empty (got {len(parts) - 1} ':')"
        raise ValueError(msg)
    soft, hard = (_parse_rlimit_one(kind, part) for part in (parts[0], parts[-1]))
    if hard is not None and (soft is None or soft > hard):
        msg = f"soft limit must not exceed hard limit (got {parts[0]} > {parts[-1]})"
        raise ValueError(msg)
    return RLimit(soft, hard)


def render_rlimit(key: str, value: RLimit) -> str:
    """Render a resource limit for ``key``, as one value when soft and hard are equal."""
    kind = _RLIMIT_KINDS[key]
    soft, hard = (
        "infinity" if v is None else render_size(v) if kind == "size" else str(v)
        for v in (value.soft, value.hard)
    )
    return soft if soft == hard else f"{soft}:{hard}"


# --- Numbers, modes and signals -----------------------------------------------------------------


def parse_integer(text: str, *, minimum: int, maximum: int) -> int:
    """Parse a decimal integer in ``minimum..maximum``: digits and an optional ``-``, no more."""
    return _decimal(text, minimum, maximum)


def parse_nice(text: str) -> int:
    """Parse ``Nice=``: -20..19, as parse_nice() in src/basic/parse-util.c."""
    return _decimal(text, -20, 19)


def parse_mode(text: str) -> int:
    """Parse an octal file mode or umask, 0..07777, as parse_mode() in src/basic/parse-util.c."""
    if re.fullmatch(r"[0-7]+", text) is None:
        msg = f"must be an octal mode like '0755' (got {text!r})"
        raise ValueError(msg)
    if len(text.lstrip("0")) > 4 or int(text, 8) > 0o7777:
        msg = f"must be 0..07777 (got {text})"
        raise ValueError(msg)
    return int(text, 8)


def render_mode(value: int) -> str:
    """Render a mode in the four-digit octal form ``0755``."""
    if not 0 <= value <= 0o7777:
        msg = f"must be 0..0o7777 (got {value:#o})"
        raise ValueError(msg)
    return f"{value:04o}"


# signal_from_string() in src/basic/signal-util.c: names with or without "SIG", RTMIN+n, RTMAX-n,
# or any number that SIGNAL_VALID() accepts (1.._NSIG-1, so 32 and 33, which glibc keeps for
# itself, too). Python's Signals enum lists each number once, so the aliases IOT, CLD and POLL,
# which systemd's table lacks as well, are not accepted.
_RTMIN: Final = int(signal.SIGRTMIN)
_RTMAX: Final = int(signal.SIGRTMAX)
_SIGNAL_NUMBERS: Final = {
    s.name.removeprefix("SIG"): int(s) for s in signal.Signals if not _RTMIN <= s <= _RTMAX
}
_SIGNAL_NAMES: Final = {number: name for name, number in _SIGNAL_NUMBERS.items()}


def parse_signal(text: str) -> int:
    """Parse a signal: ``SIGTERM``, ``TERM``, ``15``, ``SIGRTMIN+3``, ``RTMAX-1``."""
    if re.fullmatch(r"[0-9]+", text):
        return _decimal(text, 1, _RTMAX, "signal number")
    name = text.removeprefix("SIG")
    if name in _SIGNAL_NUMBERS:
        return _SIGNAL_NUMBERS[name]
    match = re.fullmatch(r"RTMIN(?:\+([0-9]+))?|RTMAX(?:-([0-9]+))?", name)
    if match is None:
        msg = f"unknown signal {text!r}"
        raise ValueError(msg)
    offset = _decimal(match[1] or match[2] or "0", 0, _RTMAX - _RTMIN, "real-time signal offset")
    return _RTMIN + offset if name.startswith("RTMIN") else _RTMAX - offset


def render_signal(value: int) -> str:
    """Render a signal as ``SIGTERM`` or ``SIGRTMIN+3``; numbers without a name stay numbers."""
    if value in _SIGNAL_NAMES:
        return f"SIG{_SIGNAL_NAMES[value]}"
    if _RTMIN <= value <= _RTMAX:
        return "SIGRTMIN" + (f"+{value - _RTMIN}" if value > _RTMIN else "")
    if 1 <= value <= _RTMAX:
        return str(value)
    msg = f"must be a signal number 1..{_RTMAX} (got {value})"
    raise ValueError(msg)


# --- Listening addresses ------------------------------------------------------------------------


class SocketKind(enum.Enum):
    """The directive that names a listening socket, which decides its type."""

    STREAM = "ListenStream"
    DATAGRAM = "ListenDatagram"
    SEQPACKET = "ListenSequentialPacket"


@attrs.frozen
class InetListen:
    """An IP socket. ``host`` is None for a bare port: all addresses, ``[::]`` dual-stack as
    BindIPv6Only= allows; otherwise the compressed address, IPv6 with an optional ``%scope``."""

    host: str | None
    port: int
    family: int | None  # 4, 6, or None for a bare port


@attrs.frozen
class UnixListen:
    """A socket in the file system; an absolute, normalised path of at most 107 bytes."""

    path: str


@attrs.frozen
class AbstractListen:
    """A socket in the abstract namespace; the name after ``@``, 1..106 bytes."""

    name: str


ListenAddress = InetListen | UnixListen | AbstractListen
_SUN_PATH_MAX: Final = 107  # sizeof(sun_path) - 1: sockaddr_un_set_path() wants a trailing NUL


def _parse_port(text: str) -> int:
    return _decimal(text, 1, 65535, "port")  # parse_ip_port() in src/basic/parse-util.c


def _parse_scope(text: str) -> str:
    # ifname_valid_full() in src/basic/socket-util.c: printable ASCII but ':', '/', '%', at most
    # IFNAMSIZ-1 bytes (we leave out the 127-byte alternative names), or an interface number.
    if (
        re.fullmatch(r"[!-~]{1,15}", text) is None
        or re.search(r"[:/%]", text)
        or text in {".", ".."}
    ):
        msg = f"interface scope must be an interface name or number (got {text!r})"
        raise ValueError(msg)
    return text


def parse_listen(kind: SocketKind, text: str) -> ListenAddress:
    """Parse a ``Listen*=`` address, as socket_address_parse() in src/basic/socket-netlink.c.

    Accepts ``2048``, ``127.0.0.1:2048``, ``[::1]:2048``, ``[fe80::1]:80%eth0`` (systemd's
    spelling of a scope; ``[fe80::1%eth0]:80`` is accepted too), ``/run/foo.sock`` and ``@foo``.
    ``ListenSequentialPacket=`` takes only the last two, as systemd.

    Raises:
        ValueError: port 0, a bad address, a relative or unnormalised path, a missing port, or
            ``vsock:``. Unlike systemd, we refuse a scope on an IPv4 address (systemd ignores it).
    """
    if text.startswith("/"):
        path = validate_absolute_path(text)
        if path.endswith("/"):
            msg = "socket path must not end with '/'"
            raise ValueError(msg)
        if len(_encode(path)) > _SUN_PATH_MAX:
            msg = f"socket path must be at most {_SUN_PATH_MAX} bytes (got {len(_encode(path))})"
            raise ValueError(msg)
        return UnixListen(path)
    if text.startswith("@"):
        name = text[1:]
        if not name or _CONTROL.search(name) or len(_encode(name)) > _SUN_PATH_MAX - 1:
            msg = f"abstract socket name must be 1..{_SUN_PATH_MAX - 1} bytes without controls"
            raise ValueError(msg)
        return AbstractListen(name)
    if text.startswith("vsock:"):
        msg = "AF_VSOCK addresses are not supported by activator"
        raise ValueError(msg)
    if kind is SocketKind.SEQPACKET:
        msg = "must be an absolute path or @name (SOCK_SEQPACKET is only available for AF_UNIX)"
        raise ValueError(msg)
    if re.fullmatch(r"[0-9]+", text):
        return InetListen(None, _parse_port(text), None)
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^%]*)(?:%(.*))?", text, re.DOTALL)
    if bracketed is not None:
        address, port, scope = bracketed.groups()
        if scope is not None and "%" in address:
            msg = "interface scope must be given once"
            raise ValueError(msg)
        if scope is not None or "%" in address:
            scope = _parse_scope(address.partition("%")[2] if scope is None else scope)
            address = f"{address.partition('%')[0]}%{scope}"
        host = _address(address, 6)
        if host is None:
            msg = f"must be an IPv6 address in brackets (got {address!r})"
            raise ValueError(msg)
        return InetListen(host, _parse_port(port), 6)
    address, _, port = text.rpartition(":")
    if "%" in text:  # systemd parses and then ignores an IPv4 scope; we refuse it
        msg = "interface scope '%...' is only valid after an IPv6 address"
        raise ValueError(msg)
    host = _address(address, 4)
    if host is None:
        if _address(text, 4) or _address(text, 6):
            msg = "missing port: use ADDRESS:PORT for IPv4 or [ADDRESS]:PORT for IPv6"
        else:
            msg = "must be a port, IPv4:port, [IPv6]:port, an absolute path or @name"
        raise ValueError(msg)
    return InetListen(host, _parse_port(port), 4)


def _address(text: str, version: int) -> str | None:
    """The canonical text of an IP address of ``version``, or None."""
    try:
        return str(ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text))
    except ValueError:
        return None


def render_listen(value: ListenAddress) -> str:
    """Render an address in systemd's syntax, a scope after the port: ``[fe80::1]:80%eth0``."""
    if isinstance(value, UnixListen):
        return value.path
    if isinstance(value, AbstractListen):
        return f"@{value.name}"
    if value.host is None:
        return str(value.port)
    if value.family == 4:
        return f"{value.host}:{value.port}"
    address, percent, scope = value.host.partition("%")
    return f"[{address}]:{value.port}{percent}{scope}"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The words of config_parse_in_addr_prefixes() in src/core/load-fragment.c.
_PREFIX_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "any": ("0.0.0.0/0", "::/0"),
    "localhost": ("127.0.0.0/8", "::1/128"),
    "link-local": ("169.254.0.0/16", "fe80::/64"),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
}


def parse_ip_prefixes(text: str) -> tuple[IPNetwork, ...]:
    """Parse ``IPAddressAllow=``/``IPAddressDeny=``: space-separated prefixes and words.

    ``any``, ``localhost``, ``link-local`` and ``multicast`` expand as in systemd; a plain address
    is a /32 or /128; host bits are masked off; duplicates are dropped (systemd keeps a set).
    """
    networks: dict[IPNetwork, None] = {}
    for word in re.split(r"[ \t\n\r]+", text):
        if word in _PREFIX_WORDS:
            networks.update(dict.fromkeys(map(ipaddress.ip_network, _PREFIX_WORDS[word])))
            continue
        # in_addr_prefix_from_string_auto(): a decimal prefix length only, no netmask, no scope.
        if re.fullmatch(r"[0-9A-Fa-f.:]+(?:/[0-9]{1,3})?", word) is None:
            msg = (
                f"must be an IP address, a prefix like '10.0.0.0/8', or a known word (got {word!r})"
            )
            raise ValueError(msg)
        try:
            networks[ipaddress.ip_network(word, strict=False)] = None
        except ValueError:
            msg = f"must be an IP address or prefix (got {word!r})"
            raise ValueError(msg) from None
    return tuple(networks)


def render_ip_prefixes(value: tuple[IPNetwork, ...]) -> str:
    """Render prefixes as space-separated ``address/length`` words."""
    return " ".join(network.with_prefixlen for network in value)


# --- Words and quoting --------------------------------------------------------------------------

# cunescape_one() in src/basic/escape.c.
_SIMPLE_ESCAPES: Final = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}  # fmt: skip
_ESCAPES_FOR: Final = {v: k for k, v in _SIMPLE_ESCAPES.items() if k not in "s'"}


def _valid_unichar(code: int) -> bool:
    # unichar_is_valid() in src/basic/utf8.c, which \U checks and \u does not.
    return (
        code < 0x110000
        and not 0xD800 <= code <= 0xDFFF
        and not 0xFDD0 <= code <= 0xFDEF
        and (code & 0xFFFE != 0xFFFE)
    )


def _cunescape(text: str, pos: int, out: bytearray) -> int:
    """Append the escape at ``text[pos]``, just after a backslash, to ``out``; return the end."""
    if pos == len(text):
        msg = "trailing backslash"
        raise ValueError(msg)
    char = text[pos]
    if char in _SIMPLE_ESCAPES:
        out += _SIMPLE_ESCAPES[char].encode()
        return pos + 1
    # \xNN and \NNN are bytes; \uNNNN and \UNNNNNNNN are code points, written as UTF-8. None may
    # be zero.
    for lead, digits, pattern, base in (
        ("x", 2, "[0-9a-fA-F]{2}", 16), ("u", 4, "[0-9a-fA-F]{4}", 16),
        ("U", 8, "[0-9a-fA-F]{8}", 16), ("", 3, "[0-3][0-7]{2}", 8),
    ):  # fmt: skip
        start = pos + len(lead)
        if char == lead or (not lead and char in "01234567"):
            code_text = text[start : start + digits]
            code = int(code_text, base) if re.fullmatch(pattern, code_text) else 0
            if not code or (lead == "U" and not _valid_unichar(code)):
                msg = f"invalid escape '\\{text[pos : start + digits]}'"
                raise ValueError(msg)
            out += (
                bytes([code]) if lead in ("x", "") else chr(code).encode("utf-8", "surrogatepass")
            )
            return start + digits
    msg = f"unknown escape '\\{char}' (write '\\\\' for a backslash)"
    raise ValueError(msg)


def split_words(text: str) -> list[str]:
    """Split a value into words as ``ExecStart=`` and ``Environment=`` do.

    This is extract_first_word() of src/basic/extract-word.c with EXTRACT_UNQUOTE and
    EXTRACT_CUNESCAPE: whitespace separates words; ``"..."`` and ``'...'`` group, and may open
    anywhere in a word (``--name="a b"`` is one word; systemd.syntax(7) documents a stricter rule
    than the code, and ``systemd-tmpfiles`` 252 confirms the code's); C escapes (``\\n``, ``\\s``,
    ``\\xNN``, ``\\NNN``, ``\\uNNNN``, ``\\UNNNNNNNN``...) work inside and outside quotes, and a
    backslash before any other character is an error.

    Raises:
        ValueError: an unknown or invalid escape, a trailing backslash, or an unterminated quote.
    """
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in _WS:
            pos += 1
        if pos == len(text):
            return words
        out, quote = bytearray(), ""
        while pos < len(text) and (quote or text[pos] not in _WS):
            char = text[pos]
            if char == "\\":
                pos = _cunescape(text, pos + 1, out)
                continue
            if char == quote:
                quote = ""
            elif not quote and char in "'\"":
                quote = char
            else:
                out += _encode(char)
            pos += 1
        if quote:
            msg = f"unterminated {quote} quote"
            raise ValueError(msg)
        words.append(out.decode("utf-8", "surrogateescape"))


def _quote_char(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES_FOR:
        return "\\" + _ESCAPES_FOR[char]
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if char.isprintable() or (code > 0xFFFF and not _valid_unichar(code)):
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def quote_word(word: str) -> str:
    """Return a token that :func:`split_words` reads back as exactly ``[word]``.

    The word is left bare when it can be, else double-quoted with C escapes; ``""`` is the empty
    word. ``%`` specifiers and ``$`` variables are the caller's business.

    Raises:
        ValueError: the word holds a NUL, which no escape can express, or surrogates that are not
            the escapes of non-UTF-8 bytes as :func:`split_words` produces them.
    """
    if "\0" in word or _encode(word).decode("utf-8", "surrogateescape") != word:
        msg = "must be text without NUL that came from bytes (surrogateescape)"
        raise ValueError(msg)
    if word and all(c == _quote_char(c) and c not in "'\" " for c in word):
        return word
    return '"' + "".join(_quote_char(c) for c in word) + '"'


# --- Names --------------------------------------------------------------------------------------


def parse_user_name(text: str, *, allow_numeric: bool) -> str:
    """Parse a user or group name as the strict valid_user_group_name() of src/basic/user-util.c.

    ``[A-Za-z_][A-Za-z0-9_-]*``, at most 31 characters (utmp's limit). With ``allow_numeric``, a
    decimal ID 0..4294967294 but 65535 is accepted too and returned in canonical form.
    """
    if allow_numeric and re.fullmatch(r"[0-9]+", text):
        uid = _decimal(text, 0, 2**32 - 2, "numeric ID")
        if uid == 65535:  # uid_is_valid(): (uint16_t) -1 is refused, as the 32-bit (uid_t) -1
            msg = "numeric ID must not be 65535"
            raise ValueError(msg)
        return str(uid)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,30}", text) is None:
        msg = f"must be 1..31 of [A-Za-z0-9_-], not starting with a digit or '-' (got {text!r})"
        raise ValueError(msg)
    return text


def parse_env_name(word: str) -> str:
    """Parse an environment variable name, ``[A-Za-z_][A-Za-z0-9_]*`` (env_name_is_valid())."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word) is None:
        msg = f"variable name must be [A-Za-z_][A-Za-z0-9_]* (got {word!r})"
        raise ValueError(msg)
    return word


def parse_env_assignment(word: str) -> tuple[str, str]:
    """Parse ``NAME=value`` (env_assignment_is_valid()); the value may be empty.

    As env_value_is_valid(), the value must be UTF-8 without control characters but tab and newline.
    """
    name, equals, value = word.partition("=")
    if not equals:
        msg = "must be NAME=VALUE (missing '=')"
        raise ValueError(msg)
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]", value):
        msg = f"value of {name} must be UTF-8 without control characters but tab and newline"
        raise ValueError(msg)
    return parse_env_name(name), value


# --- Paths --------------------------------------------------------------------------------------

_PATH_MAX: Final = 4095  # PATH_MAX - 1, as path_is_valid()
_NAME_MAX: Final = 255


def _check_path_text(path: str) -> None:
    if _CONTROL.search(path):
        msg = "must not contain control characters"
        raise ValueError(msg)
    size = len(_encode(path))
    if size > _PATH_MAX or any(len(_encode(part)) > _NAME_MAX for part in path.split("/")):
        msg = f"must be at most {_PATH_MAX} bytes, each component at most {_NAME_MAX}"
        raise ValueError(msg)


def validate_absolute_path(word: str) -> str:
    """Check an absolute, normalised path, as path_is_absolute() and path_is_normalized().

    No ``.`` or ``..`` components and no ``//``; a trailing ``/`` is allowed, as systemd.
    """
    if not word.startswith("/"):
        msg = f"must be an absolute path (got relative path {word!r})"
        raise ValueError(msg)
    _check_path_text(word)
    parts = word.strip("/").split("/")
    if "//" in word or "." in parts or ".." in parts:
        bad = "//" if "//" in word else "." if "." in parts else ".."
        msg = f"must be normalised (no '.' or '..' components, no '//'; got {bad!r})"
        raise ValueError(msg)
    return word


def validate_relative_directory(word: str) -> str:
    """Check a ``StateDirectory=``-style name: relative, normalised, not under ``private``.

    Stricter than config_parse_exec_directories(), which simplifies ``a//b/`` silently: we refuse
    anything that is not already in canonical form. The ``a:b`` symlink form of systemd 250+ is
    refused too.
    """
    if not word:
        msg = "must not be empty"
        raise ValueError(msg)
    if ":" in word:
        msg = f"symlink form {word!r} is not supported"
        raise ValueError(msg)
    if word.startswith("/"):
        msg = f"must be relative (got absolute path {word!r})"
        raise ValueError(msg)
    _check_path_text(word)
    parts = word.split("/")
    for bad in ("..", "."):
        if bad in parts:
            msg = f"must not contain {bad!r}"
            raise ValueError(msg)
    if "" in parts:
        msg = "must not contain '//' or end with '/'"
        raise ValueError(msg)
    if parts[0] == "private":  # systemd keeps DynamicUser= state in .../private/
        msg = "must not be 'private' or below it"
        raise ValueError(msg)
    return word


@attrs.frozen
class PathEntry:
    """A word of ``ReadWritePaths=``, ``ReadOnlyPaths=`` or ``InaccessiblePaths=``."""

    path: str
    ignore_missing: bool  # the "-" prefix


def parse_path_entry(word: str) -> PathEntry:
    """Parse ``[-]PATH`` as config_parse_namespace_path_strv(); the ``+`` prefix is refused."""
    ignore_missing = word.startswith("-")
    path = word.removeprefix("-")
    if path.startswith("+"):
        msg = "'+' prefix needs RootDirectory=, which activator does not support"
        raise ValueError(msg)
    return PathEntry(validate_absolute_path(path), ignore_missing)


def render_path_entry(value: PathEntry) -> str:
    """Render ``[-]PATH``, unquoted (see :func:`quote_word`)."""
    return ("-" if value.ignore_missing else "") + value.path


@attrs.frozen
class BindEntry:
    """An entry of ``BindPaths=`` or ``BindReadOnlyPaths=``."""

    source: str
    destination: str
    ignore_missing: bool  # the "-" prefix
    recursive: bool  # rbind (the default) or norbind


def parse_bind_paths(text: str) -> tuple[BindEntry, ...]:
    """Parse a whole ``BindPaths=`` value as config_parse_bind_paths() in load-fragment.c.

    Entries are ``[-]SRC[:DST[:OPTIONS]]`` separated by whitespace, OPTIONS ``rbind`` (the default)
    or ``norbind``. Quotes group; the only escapes are ``\\:``, ``\\\\`` and a backslash before
    whitespace (EXTRACT_UNESCAPE_SEPARATORS). Prefer this to :func:`split_words`, whose C escapes
    refuse ``\\:``.
    """
    return tuple(map(_bind_entry, _scan_bind(text, split=True)))


def parse_bind_entry(word: str) -> BindEntry:
    """Parse one entry of :func:`parse_bind_paths`; whitespace in ``word`` is part of a path."""
    entries = _scan_bind(word, split=False)
    if not entries:
        msg = "must not be empty"
        raise ValueError(msg)
    return _bind_entry(entries[0])


def _scan_bind(text: str, *, split: bool) -> list[list[str]]:
    """The entries of ``text``, each a list of its ':'-separated fields, unquoted and unescaped."""
    entries: list[list[str]] = []
    fields: list[str] = []
    field: list[str] = []
    quote, started, pos = "", False, 0  # started: this entry has begun, if only with ""
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            escaped = text[pos + 1 : pos + 2]
            if not escaped or escaped not in ":\\" + _WS:
                msg = f"unknown escape '\\{escaped}' (only '\\:', '\\\\' and '\\ ' are allowed)"
                raise ValueError(msg)
            field.append(escaped)
            pos, started = pos + 2, True
            continue
        if char in _WS and not quote and split:
            if started:
                entries.append([*fields, "".join(field)])
            fields, field, started = [], [], False
        elif char == quote:
            quote = ""
        elif not quote and char in "'\"":
            quote = char
        elif not quote and char == ":":
            fields.append("".join(field))
            field = []
        else:
            field.append(char)
        started = started or char not in _WS or bool(quote) or not split
        pos += 1
    if quote:
        msg = f"unterminated {quote} quote"
        raise ValueError(msg)
    if started:
        entries.append([*fields, "".join(field)])
    return entries


def _bind_entry(fields: list[str]) -> BindEntry:
    if len(fields) > 3:
        msg = "must be [-]SOURCE[:DESTINATION[:OPTIONS]] (too many ':')"
        raise ValueError(msg)
    source = fields[0].removeprefix("-")
    destination = fields[1] if len(fields) > 1 else source
    options = fields[2] if len(fields) > 2 else ""
    if options not in ("", "rbind", "norbind"):
        msg = f"bind option must be 'rbind' or 'norbind' (got {options!r})"
        raise ValueError(msg)
    return BindEntry(
        validate_absolute_path(source),
        validate_absolute_path(destination),
        fields[0].startswith("-"),
        options != "norbind",
    )


def _escape_bind_path(path: str) -> str:
    # Colons and backslashes take a backslash; white space (which a line end would trim) and
    # quote characters are quoted.
    return "".join(
        "\\" + c if c in ":\\" else f"'{c}'" if c in _WS + '"' else '"\'"' if c == "'" else c
        for c in path
    )


def render_bind_entry(value: BindEntry) -> str:
    """Render ``[-]SRC[:DST[:norbind]]`` with the escapes :func:`parse_bind_entry` reads."""
    text = ("-" if value.ignore_missing else "") + _escape_bind_path(value.source)
    if value.destination != value.source or not value.recursive:
        text += ":" + _escape_bind_path(value.destination)
    return text if value.recursive else text + ":norbind"


@attrs.frozen
class TmpfsEntry:
    """A word of ``TemporaryFileSystem=``: where, and extra tmpfs mount options ("" for none)."""

    path: str
    options: str


# A fail-closed subset of tmpfs(5) options; "suid" and "dev" are refused because activator always
# mounts nosuid,nodev. Anything else (huge=, mpol=, atime flags...) is refused until needed.
_TMPFS_FLAGS: Final = frozenset({"ro", "rw", "nosuid", "nodev", "noexec", "exec"})
_TMPFS_VALUES: Final = {
    "size": r"[0-9]+[kKmMgGtTpPeE%]?",
    "nr_inodes": r"[0-9]+[kKmMgGtTpPeE]?",
    "mode": r"[0-7]{1,4}",
    "uid": r"[0-9]{1,10}",
    "gid": r"[0-9]{1,10}",
}


def parse_tmpfs_entry(word: str) -> TmpfsEntry:
    """Parse ``PATH[:OPTIONS]`` as config_parse_temporary_filesystems(), with our option subset.

    Options: ``ro rw nosuid nodev noexec exec size= nr_inodes= mode= uid= gid=``.
    """
    path, _, options = word.partition(":")
    for option in options.split(",") if options else ():
        key, equals, value = option.partition("=")
        if option in ("suid", "dev"):
            msg = f"mount option {option!r} is refused (activator mounts tmpfs nosuid,nodev)"
            raise ValueError(msg)
        if equals and key in _TMPFS_VALUES:
            if re.fullmatch(_TMPFS_VALUES[key], value) is None or (
                key in ("uid", "gid") and int(value) > 2**32 - 2
            ):
                msg = f"mount option {key}= has a bad value (got {value!r})"
                raise ValueError(msg)
        elif equals or option not in _TMPFS_FLAGS:
            known = ", ".join([*sorted(_TMPFS_FLAGS), *(f"{k}=" for k in _TMPFS_VALUES)])
            msg = f"mount option must be one of {known} (got {option!r})"
            raise ValueError(msg)
    return TmpfsEntry(validate_absolute_path(path), options)


def render_tmpfs_entry(value: TmpfsEntry) -> str:
    """Render ``PATH[:OPTIONS]``, unquoted (see :func:`quote_word`)."""
    return f"{value.path}:{value.options}" if value.options else value.path


# --- Enumerations -------------------------------------------------------------------------------
# Each .value is systemd's spelling, so render is ``.value``.


class ServiceType(enum.Enum):
    """``Type=``; forking, dbus and idle are not supported by activator."""

    SIMPLE = "simple"
    EXEC = "exec"
    ONESHOT = "oneshot"
    NOTIFY = "notify"


class RestartPolicy(enum.Enum):
    """``Restart=``."""

    NO = "no"
    ON_SUCCESS = "on-success"
    ON_FAILURE = "on-failure"
    ON_ABNORMAL = "on-abnormal"
    ON_WATCHDOG = "on-watchdog"
    ON_ABORT = "on-abort"
    ALWAYS = "always"


class ProtectSystem(enum.Enum):
    """``ProtectSystem=``; a boolean means yes or no."""

    NO = "no"
    YES = "yes"
    FULL = "full"
    STRICT = "strict"


class ProtectHome(enum.Enum):
    """``ProtectHome=``; a boolean means yes or no."""

    NO = "no"
    YES = "yes"
    READ_ONLY = "read-only"
    TMPFS = "tmpfs"


class BindIPv6Only(enum.Enum):
    """``BindIPv6Only=``; a boolean means ipv6-only (true) or both (false), as systemd."""

    DEFAULT = "default"
    BOTH = "both"
    IPV6_ONLY = "ipv6-only"


class RuntimeDirectoryPreserve(enum.Enum):
    """``RuntimeDirectoryPreserve=``; a boolean means yes or no."""

    NO = "no"
    YES = "yes"
    RESTART = "restart"


_E = TypeVar("_E", bound=enum.Enum)


def _parse_choice(
    cls: type[_E], text: str, *, boolean: tuple[_E, _E] | None = None, unsupported: str = ""
) -> _E:
    # DEFINE_STRING_TABLE_LOOKUP_WITH_BOOLEAN tries parse_boolean() first; the results agree.
    flag = _boolean_or_none(text) if boolean is not None else None
    if boolean is not None and flag is not None:
        return boolean[1] if flag else boolean[0]
    for member in cls:
        if member.value == text:
            return member
    choices = ", ".join(repr(m.value) for m in cls)
    if text in unsupported.split():
        msg = f"not supported by activator (supported: {choices})"
    else:
        msg = f"must be one of {choices} (got {text!r})"
    raise ValueError(msg)


def parse_service_type(text: str) -> ServiceType:
    """Parse ``Type=``."""
    return _parse_choice(ServiceType, text, unsupported="forking dbus idle notify-reload")


def parse_restart_policy(text: str) -> RestartPolicy:
    """Parse ``Restart=``."""
    return _parse_choice(RestartPolicy, text)


def parse_protect_system(text: str) -> ProtectSystem:
    """Parse ``ProtectSystem=``."""
    return _parse_choice(ProtectSystem, text, boolean=(ProtectSystem.NO, ProtectSystem.YES))


def parse_protect_home(text: str) -> ProtectHome:
    """Parse ``ProtectHome=``."""
    return _parse_choice(ProtectHome, text, boolean=(ProtectHome.NO, ProtectHome.YES))


def parse_bind_ipv6_only(text: str) -> BindIPv6Only:
    """Parse ``BindIPv6Only=`` (socket_address_bind_ipv6_only_or_bool_from_string())."""
    return _parse_choice(BindIPv6Only, text, boolean=(BindIPv6Only.BOTH, BindIPv6Only.IPV6_ONLY))


def parse_runtime_directory_preserve(text: str) -> RuntimeDirectoryPreserve:
    """Parse ``RuntimeDirectoryPreserve=``."""
    no, yes = RuntimeDirectoryPreserve.NO, RuntimeDirectoryPreserve.YES
    return _parse_choice(RuntimeDirectoryPreserve, text, boolean=(no, yes))


@attrs.frozen
class IOSpec:
    """A standard stream: ``kind`` is systemd's word (``null``, ``journal+console``, ``file``...);
    ``path`` is the absolute path of ``file:``, ``append:`` and ``truncate:``, else None."""

    kind: str
    path: str | None = None


# exec_input_from_string() and exec_output_from_string() in src/core/execute.c, less what
# activator cannot do: "data" (StandardInputData=) and "fd:NAME" (FileDescriptorName=).
_INPUT_KINDS: Final = ("null", "tty", "tty-force", "tty-fail", "socket")
_OUTPUT_KINDS: Final = (
    "inherit", "null", "tty", "journal", "kmsg", "journal+console", "kmsg+console", "socket",
)  # fmt: skip


def _parse_io(text: str, kinds: tuple[str, ...], path_kinds: tuple[str, ...]) -> IOSpec:
    kind, colon, path = text.partition(":")
    if kind in (path_kinds if colon else kinds):
        return IOSpec(kind, validate_absolute_path(path) if colon else None)
    choices = ", ".join([*map(repr, kinds), *(f"'{k}:PATH'" for k in path_kinds)])
    if kind in ("fd", "data"):
        msg = f"not supported by activator (supported: {choices})"
    else:
        msg = f"must be one of {choices} (got {text!r})"
    raise ValueError(msg)


def parse_standard_input(text: str) -> IOSpec:
    """Parse ``StandardInput=``: null, tty, tty-force, tty-fail, socket or file:PATH."""
    return _parse_io(text, _INPUT_KINDS, ("file",))


def parse_standard_output(text: str) -> IOSpec:
    """Parse ``StandardOutput=`` or ``StandardError=``, including file:, append:, truncate:."""
    return _parse_io(text, _OUTPUT_KINDS, ("file", "append", "truncate"))


def render_io_spec(value: IOSpec) -> str:
    """Render ``kind`` or ``kind:PATH``."""
    return value.kind if value.path is None else f"{value.kind}:{value.path}"
