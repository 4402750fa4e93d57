"""Read units directories from disk into a :class:`~activator.catalog.Catalog`.

Rule 1: this is the only module that lists or reads unit files; everything it finds goes through
the pure ``units``/``model``/``catalog`` code, so what is tested there is what runs.

Rule 2: a directory that cannot be read is a problem in the catalog, not an exception: the other
directories still load (a bad unit never stops the other units).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

import attrs

from activator.catalog import Catalog, build_catalog
from activator.errors import Problem, Severity
from activator.units import UNIT_SUFFIXES, UnitDirectory, parse_unit_name

#: A unit file or drop-in larger than this is refused before it is read whole.
MAX_UNIT_FILE_BYTES = 4 * 1024 * 1024


def _is_unit_file(name: str) -> bool:
    return name.rpartition(".")[2] in UNIT_SUFFIXES


def scan_directory(path: str) -> tuple[UnitDirectory, list[Problem]]:
    """Snapshot one units directory: its unit files and the ``*.conf`` files of its ``.d``s.

    As systemd: hidden files (a leading dot) are skipped; a unit file that is empty or a symlink
    to /dev/null is masked, as is a drop-in linked to /dev/null. A symlink to a unit file of
    another name is an alias, which activator does not support: it is left out with a warning
    (a link to a file of the same name elsewhere, or from an instance to its template, is fine).

    An entry that cannot be looked at (a symlink loop) fails its own units only, never the
    directory: a unit file or drop-in is kept as a file that the read then fails, and a ``.d``
    directory that cannot be listed as holding the unreadable entry ``.`` (``NAME.d/.``), so
    every unit it applies to fails, naming it.

    Raises:
        OSError: when the directory cannot be listed.
    """
    files: set[str] = set()
    masked: set[str] = set()
    dropins: dict[str, frozenset[str]] = {}
    problems: list[Problem] = []
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.name.endswith(".d") and _is_dir(entry):
                confs = set()
                try:
                    with os.scandir(entry.path) as inner:
                        for e in inner:
                            if e.name.startswith(".") or not e.name.endswith(".conf"):
                                continue
                            if _masked(e.path):
                                masked.add(f"{entry.name}/{e.name}")
                                confs.add(e.name)
                            elif _is_file(e):
                                confs.add(e.name)
                except OSError:
                    confs = {"."}  # reading NAME.d/. fails, with the reason
                dropins[entry.name] = frozenset(confs)
            elif _is_unit_file(entry.name):
                if _masked(entry.path) or (_is_file(entry) and _empty(entry.path)):
                    masked.add(entry.name)
                elif (target := _alias_target(entry)) is not None:
                    reason = (
                        f"a symlink to {target}: unit aliases are not supported, so this name "
                        "is not loaded (name the unit by its own name)"
                    )
                    problems.append(Problem(entry.path, None, None, None, reason, Severity.WARNING))
                elif _is_file(entry):
                    files.add(entry.name)
    snapshot = UnitDirectory(
        path=path, files=frozenset(files), dropins=dropins, masked=frozenset(masked)
    )
    return snapshot, problems


def _is_file(entry: os.DirEntry[str]) -> bool:
    """``entry.is_file()``; an entry whose type cannot be learnt for a reason other than its
    absence (ELOOP) counts as a file, so that reading it fails its unit with that reason."""
    try:
        return entry.is_file()
    except OSError:
        return True


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``, with the same rule as :func:`_is_file`."""
    try:
        return entry.is_dir()
    except OSError:
        return True


def _masked(path: str) -> bool:
    return os.path.islink(path) and os.path.realpath(path) == "/dev/null"


def _empty(path: str) -> bool:
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


def _alias_target(entry: os.DirEntry[str]) -> str | None:
    """The unit name a symlinked unit file points to, when that is another unit (an alias)."""
    if not entry.is_symlink():
        return None
    target = os.path.basename(os.path.realpath(entry.path))
    if target == entry.name:
        return None
    try:
        link, real = parse_unit_name(entry.name), parse_unit_name(target)
    except ValueError:
        return None
    if link.is_instance and real == link.template:
        return None  # foo@bar.service -> foo@.service: an instance of the template, as systemd
    return target


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Opened and read without blocking: a FIFO (which would hang the open until a writer comes)
    is refused, and a device never waits (``/dev/null`` reads as empty, as for systemd). Larger
    files are refused before they are read whole (``/dev/zero`` would read until memory runs
    out).

    Raises:
        OSError: it cannot be opened or read, is a FIFO or a socket, or is larger than
            ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    with open(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            raise OSError(errno.EINVAL, "is a FIFO or socket, not a file")
        data = file.read(limit + 1)
        if data is None:  # a device with nothing to read now (EAGAIN)
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"file is larger than {limit} bytes")
    return data


def _read(path: str) -> bytes:
    return read_bounded(path, MAX_UNIT_FILE_BYTES)


def load_catalog(directories: Sequence[str]) -> Catalog:
    """Scan and read ``directories`` (earlier ones win) and build the catalog.

    Directories or files that cannot be read become error problems of the returned catalog; a
    unit whose file or one of whose drop-ins cannot be read is not loaded (fail closed).
    """
    snapshots: list[UnitDirectory] = []
    contents: dict[str, bytes] = {}
    unreadable: dict[str, str] = {}
    problems: list[Problem] = []
    for path in dict.fromkeys(os.path.normpath(d) for d in directories):
        try:
            snapshot, found = scan_directory(path)
        except OSError as e:
            reason = f"cannot read units directory: {e.strerror or e}"
            problems.append(Problem(path, None, None, None, reason))
            continue
        problems.extend(found)
        snapshots.append(snapshot)
        paths = [f"{path}/{f}" for f in snapshot.files]
        paths += [f"{path}/{d}/{c}" for d, confs in snapshot.dropins.items() for c in confs]
        for file_path in paths:
            try:
                contents[file_path] = _read(file_path)
            except OSError as e:
                unreadable[file_path] = str(e.strerror or e)
    catalog = build_catalog(snapshots, contents, unreadable)
    if not problems:
        return catalog
    merged = sorted((*catalog.problems, *problems), key=Problem.sort_key)
    return attrs.evolve(catalog, problems=tuple(merged))
