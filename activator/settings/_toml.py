"""TOML text helpers of :mod:`activator.settings`: Python values written as TOML, and the line on
which each table and key of a settings file is written.

Rule 1: :func:`_toml_value` is the inverse of what tomllib returns: tomllib reads its text back to
the value it was given (a tuple comes back as a list, an enum as its value). Anything TOML cannot
hold raises TypeError.

Rule 2: tomllib reports no positions for values, so :func:`_index_lines` scans the text for
``[table]`` headers and ``key =`` lines (dotted and quoted keys included; strings and values
spanning lines are skipped) to give each problem its line. A key written inside an inline table
gets the line of the table; a key not in the text at all gets None. The scan expects valid TOML;
on anything else its index is merely incomplete.

Rule 3: everything here works on strings already in memory; nothing reads a file.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
import tomllib
from collections.abc import Mapping

# --- values as TOML text --------------------------------------------------------------------------


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
