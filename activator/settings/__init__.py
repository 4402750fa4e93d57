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

Rule 5: the public API is what this file defines and re-exports; import it from
``activator.settings``, never from a private module. This file holds the parse and load API and
:data:`DEFAULT_CONFIG_PATH` (which :func:`load_settings` looks up here, at call time). The private
modules are:

- ``_model``: the tables (:class:`Settings` and one class per table) and the converters of their
  keys.
- ``_toml``: the TOML text helpers, which render a Python value as TOML and find the line each
  table and key is written on.
"""

from __future__ import annotations

import os.path
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from activator.errors import ConfigError, Problem, Severity
from activator.loader import read_bounded

from ._model import ControlSettings as ControlSettings
from ._model import HostPort as HostPort
from ._model import LogFormat as LogFormat
from ._model import LogSettings as LogSettings
from ._model import MetricsSettings as MetricsSettings
from ._model import OnExhausted as OnExhausted
from ._model import PoolSettings as PoolSettings
from ._model import Settings as Settings
from ._model import UnitsSettings as UnitsSettings
from ._model import UserdbSettings as UserdbSettings
from ._model import _Invalid, _meta_key, _meta_table, _Table

# _index_lines, _line_of and _toml_value are re-exported for tests/unit/test_settings.py.
from ._toml import _index_lines as _index_lines
from ._toml import _line_of as _line_of
from ._toml import _show, _type_name
from ._toml import _toml_value as _toml_value

#: The settings file read when none is named (``load_settings(None)``).
DEFAULT_CONFIG_PATH = "/etc/activator/activator.toml"

#: A settings file larger than this is refused before it is read whole (``--config /dev/zero``
#: would otherwise read until memory runs out).
MAX_SETTINGS_FILE_BYTES = 4 * 1024 * 1024


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
    failed: set[str] = set()  # keys whose value was refused: the model holds their default
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
            failed.add(key)
    model = cls(**changes)  # every field has a default
    # The table's cross-key check runs even when another key is wrong, so that every problem is
    # reported at once; only findings about a refused key are dropped (they would judge its
    # default, not what the file says).
    findings = [] if table.check is None else table.check(model)
    for finding in findings:
        if failed & set(finding.near):
            continue
        place = next(((name, k) for k in finding.near if (name, k) in collect.index), (name,))
        key = name if finding.key is None else f"{name}.{finding.key}"
        collect.add(place, key, finding.value, finding.reason, finding.severity)
    return model if valid else None


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
    enabled = os.path.join(base, settings.units.enabled_directory)
    return attrs.evolve(settings, units=UnitsSettings(directories, enabled))


def _override_directories(settings: Settings, override: Sequence[str]) -> Settings:
    problems = [
        Problem("command line", None, "--units", d, "must not be empty or contain a NUL byte")
        for d in override
        if not d or "\0" in d
    ]
    if problems:
        raise ConfigError(problems)
    directories = tuple(os.path.abspath(d) for d in override)
    return attrs.evolve(settings, units=attrs.evolve(settings.units, directories=directories))


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
        ConfigError: the file given cannot be read ("No such file or directory", ...), is larger
            than :data:`MAX_SETTINGS_FILE_BYTES`, is not UTF-8, or has errors (all of them).
    """
    name = DEFAULT_CONFIG_PATH if path is None else path
    try:
        data = read_bounded(name, MAX_SETTINGS_FILE_BYTES)
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
