"""The catalog: every unit of the units directories, built, paired and ready to instantiate.

Rule 1: pure. It takes directory snapshots and file contents (``loader`` reads them) and returns
models and problems; instantiating a template later (a connection, ``activator enable``) needs no
file access either, so the contents are kept.

Rule 2: a bad unit never stops the others. Each unit is built on its own; one with errors is left
out of ``sockets``/``services``/``templates``, and its problems are reported. A socket whose
service is broken or missing is left out too, with a problem that says why.

Rule 3: templates are checked when loaded, by building one sample instance (``SAMPLE_INSTANCE``),
so that a broken template is reported by ``activator check`` and not at the first connection.
Errors that depend on the instance name (``StateDirectory=%i`` with an odd instance) can only show
at instantiation, and :meth:`Catalog.instantiate` reports them then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from activator.errors import ConfigError, Problem, Severity
from activator.model import SocketUnit, Unit, build_service, build_socket
from activator.units import (
    UnitDirectory,
    UnitFiles,
    UnitName,
    UnitText,
    decode_unit_bytes,
    is_masked,
    parse_unit_name,
    parse_unit_text,
    resolve_unit_files,
)

#: The instance name templates are checked with at load time.
SAMPLE_INSTANCE = "instance"


@attrs.frozen
class Loaded:
    """One unit that built cleanly: its model, the files it came from, and its warnings."""

    unit: Unit
    files: UnitFiles
    warnings: tuple[Problem, ...] = ()


@attrs.frozen
class Catalog:
    """Everything found in the units directories.

    Attributes:
        directories: the snapshots the catalog was built from, in priority order.
        contents: the bytes of every unit file and drop-in, by path.
        unreadable: files that could not be read, with the reason.
        units: plain units and instances with a file of their own, by unit name.
        templates: templates (``foo@.service``), each as built for ``SAMPLE_INSTANCE``.
        problems: every error and warning, in path and line order.
        failed: names of units left out because of errors.
        masked: names of units masked (an empty file or a symlink to /dev/null hides them).
    """

    directories: tuple[UnitDirectory, ...]
    contents: Mapping[str, bytes]
    unreadable: Mapping[str, str]
    units: Mapping[str, Loaded]
    templates: Mapping[str, Loaded]
    problems: tuple[Problem, ...]
    failed: frozenset[str]
    masked: frozenset[str] = frozenset()

    def instantiate(self, name: UnitName) -> Loaded:
        """Build one instance of a template (``foo@bar.service``), drop-ins of its own included.

        Raises:
            ConfigError: when the template is unknown or broken, or the instance does not build.
        """
        if is_masked(name, self.directories):
            msg = "unit is masked (an empty file or a symlink to /dev/null hides it)"
            raise ConfigError(Problem(name.name, None, None, None, msg))
        if not name.is_instance:
            msg = f"must name an instance such as {name.prefix}@NAME.{name.suffix}"
            raise ConfigError(Problem(name.name, None, None, None, msg))
        if name.name in self.units:
            return self.units[name.name]
        try:
            # Each name a caller built (a socket instance's service: foo@NAME.socket is 255
            # characters, foo@NAME.service one more) is checked as a name read would be.
            parse_unit_name(name.name)
        except ValueError as error:
            raise ConfigError(Problem(name.name, None, None, None, str(error))) from None
        template = name.template.name
        if template not in self.templates:
            why = "has errors" if template in self.failed else "is not in the units directories"
            dirs = ", ".join(d.path for d in self.directories) or "(none)"
            msg = f"template {template} {why} ({dirs})"
            raise ConfigError(Problem(name.name, None, None, None, msg))
        return _build(name, self.directories, self.contents, self.unreadable)


def _texts(
    files: UnitFiles,
    contents: Mapping[str, bytes],
    unreadable: Mapping[str, str],
    unit_type: str,
) -> list[UnitText]:
    texts = []
    for path in (files.fragment, *files.dropins):
        if path not in contents:
            # An unreadable file fails its unit: a drop-in may hold the unit's sandbox.
            reason = f"cannot read: {unreadable.get(path, 'not read')}"
            texts.append(UnitText(path, (), (Problem(path, None, None, None, reason),)))
            continue
        text, problem = decode_unit_bytes(contents[path], path)
        if problem is not None:
            texts.append(UnitText(path, (), (problem,)))
        else:
            assert text is not None
            texts.append(parse_unit_text(text, path, unit_type=unit_type))
    return texts


def _build(
    name: UnitName,
    directories: Sequence[UnitDirectory],
    contents: Mapping[str, bytes],
    unreadable: Mapping[str, str],
) -> Loaded:
    files = resolve_unit_files(name, directories)
    if files is None:
        msg = "no such unit in the units directories"
        raise ConfigError(Problem(name.name, None, None, None, msg))
    texts = _texts(files, contents, unreadable, name.suffix)
    build = build_service if name.suffix == "service" else build_socket
    unit, warnings = build(name, texts)
    return Loaded(unit, files, tuple(warnings))


def build_catalog(
    directories: Sequence[UnitDirectory],
    contents: Mapping[str, bytes],
    unreadable: Mapping[str, str] | None = None,
) -> Catalog:
    """Build every unit found in ``directories`` (earlier directories win), then pair sockets.

    Args:
        directories: snapshots of the units directories, in priority order.
        contents: the bytes of every file the snapshots name.
        unreadable: files that could not be read, with the reason; their units fail.
    """
    unreadable_files = dict(unreadable or {})
    names: dict[str, None] = {}
    for directory in directories:
        masked_units = {m for m in directory.masked if "/" not in m}
        names.update(dict.fromkeys(sorted(directory.files | masked_units)))
    units: dict[str, Loaded] = {}
    templates: dict[str, Loaded] = {}
    problems: list[Problem] = []
    failed: set[str] = set()
    masked: set[str] = set()
    for text_name in names:
        try:
            name = parse_unit_name(text_name)
        except ValueError as e:
            path = next(
                f"{d.path}/{text_name}"
                for d in directories
                if text_name in d.files or text_name in d.masked
            )
            problems.append(Problem(path, None, None, None, str(e), Severity.WARNING))
            continue
        if is_masked(name, directories):
            masked.add(text_name)
            continue
        try:
            if name.is_template:
                loaded = _build(
                    name.with_instance(SAMPLE_INSTANCE), directories, contents, unreadable_files
                )
                templates[name.name] = loaded
            else:
                loaded = units[name.name] = _build(name, directories, contents, unreadable_files)
            problems.extend(loaded.warnings)
        except ConfigError as e:
            problems.extend(e.problems)
            failed.add(name.name)
    # Pair sockets with their services once every unit is built; a socket whose service is
    # missing or broken is left out too.
    for table in (units, templates):
        for name_text, loaded in list(table.items()):
            if isinstance(loaded.unit, SocketUnit):
                problem = _pairing_problem(loaded, units, templates, failed)
                if problem is not None:
                    problems.append(problem)
                    failed.add(name_text)
                    del table[name_text]
    problems.sort(key=Problem.sort_key)
    return Catalog(
        directories=tuple(directories),
        contents=dict(contents),
        unreadable=unreadable_files,
        units=units,
        templates=templates,
        problems=tuple(problems),
        failed=frozenset(failed),
        masked=frozenset(masked),
    )


def _pairing_problem(
    loaded: Loaded,
    units: Mapping[str, Loaded],
    templates: Mapping[str, Loaded],
    failed: set[str],
) -> Problem | None:
    socket = loaded.unit
    assert isinstance(socket, SocketUnit)
    target = socket.activates
    path = loaded.files.fragment
    available = target.name in units or (
        target.instance is not None and target.template.name in templates
    )
    if available:
        return None
    if socket.accept:
        how = f"Accept=yes starts one {target.name} instance per connection"
    else:
        how = f"it activates {target.name}"
    if target.name in failed or (target.instance is not None and target.template.name in failed):
        why = "which has errors"
    else:
        why = "which is not in the units directories"
    return Problem(path, None, None, None, f"{how}, {why}; socket not loaded")
