"""The spelling rules that several converters of :mod:`activator.values` share.

Rule 1: this is the one home of the helpers more than one module of the package needs: systemd's
white space, the control characters no path or name may hold, strict decimal integers, and text
encoded as UTF-8 with surrogate escapes. A module imports them from here and never keeps a copy.

Rule 2: a helper raises ``ValueError(reason)`` in the package's wording and names no directive;
the caller adds the key and the value.
"""

from __future__ import annotations

import re
from typing import Final

_WS: Final = " \t\n\r"  # systemd's WHITESPACE
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
