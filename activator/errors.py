"""The exceptions and diagnostics of activator.

Rule 1: every problem a user can cause with a file carries the file, the line, the key and the
value at fault, and reads as systemd and compilers print it: ``path:line: Key='value': reason``.

Rule 2: the library raises or collects these; only ``cli.main`` turns them into exit codes.

Rule 3: this module imports nothing of the project, so every other module may import it.
"""

from __future__ import annotations

import enum
import math
import re

import attrs

#: What a terminal may take as a line end or a control sequence: C0, DEL, C1 (CSI is U+009B),
#: and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ActivatorError(Exception):
    """The root of every error activator raises on purpose."""


class Severity(enum.Enum):
    """How bad a :class:`Problem` is: an error stops the unit, a warning is printed and ignored."""

    ERROR = "error"
    WARNING = "warning"


@attrs.frozen
class Problem:
    """One finding about a configuration file, at a place in it.

    Attributes:
        path: the file, as the user named it.
        line: 1-based line number, or None when the problem concerns the whole file or unit.
        key: the directive (``ListenStream``) or settings path (``pool.first``), if any.
        value: the value at fault, as written, if any.
        reason: what is wrong, in the "must be X (got Y)" wording where it fits.
        severity: error or warning.
    """

    path: str
    line: int | None
    key: str | None
    value: str | None
    reason: str
    severity: Severity = Severity.ERROR

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, float]:
        """File order: by path, then line; problems of a whole file or unit (no line) come after
        those of its lines, which often cause them (a bad ExecStart= line, then "no ExecStart=")."""
        return (self.path, math.inf if self.line is None else self.line)

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.key is None:
            text = f"{where}: {self.reason}"
        elif self.value is None:
            text = f"{where}: {self.key}: {self.reason}"
        else:
            text = f"{where}: {self.key}={self.value!r}: {self.reason}"
        # One problem, one line: a file named "x\nactivator: y:1: ..." must not print a line of
        # its own that reads as another problem.
        return _CONTROL.sub(_escape, text)


@attrs.define(eq=False, init=False)
class ConfigError(ActivatorError):
    """Errors in units or settings; ``problems`` holds every one of them, in file order."""

    problems: tuple[Problem, ...]

    def __init__(self, problems: tuple[Problem, ...] | list[Problem] | Problem) -> None:
        if isinstance(problems, Problem):
            problems = (problems,)
        problems = tuple(problems)
        if not problems:
            msg = "ConfigError needs at least one problem"
            raise ValueError(msg)
        super().__init__(*problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
