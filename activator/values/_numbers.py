"""Numbers as systemd spells them: booleans, time spans, sizes, percentages and limits, resource
limits, integers, nice levels, file modes and signals.

Rule 1: a quantity that systemd stores in a uint64_t reads 2^64-1 as infinity. Here infinity is
:data:`INFINITY` (None), and a finite value must be below 2^64-1.

Rule 2: values are integers in the unit systemd stores them in (microseconds, bytes, permyriad).
A fraction finer than that unit is dropped where systemd drops it (time spans) and refused where
systemd refuses it (percentages). The one float is the fraction of :func:`parse_size`, computed in
double precision as systemd computes it.

Rule 3: the signal table is read from Python's ``signal`` module at import time; it is the only
thing here that depends on the host.
"""

from __future__ import annotations

import re
import signal
from typing import Final

import attrs

from ._common import _WS, _decimal, _int

INFINITY: None = None
"""The value every converter below uses for "infinity"."""

_UINT64_MAX: Final = 2**64 - 1  # USEC_INFINITY, RLIM_INFINITY and CGROUP_LIMIT_MAX: all "infinity"
_INT_MAX: Final = 2**31 - 1


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
            digits = match[1].lstrip("0")[-12:] or "0"  # only a cut when too_big anyway
            value = _int(digits + fraction.ljust(decimals, "0")) * 10 ** (2 - decimals)
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
