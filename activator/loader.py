"""Read units directories from disk into a :class:`~activator.catalog.Catalog`.

Rule 1: this is the only module that lists or reads unit files; everything it finds goes through
the pure ``units``/``model``/``catalog`` code, so what is tested there is what runs.

Rule 2: a directory that cannot be read is a problem in the catalog, not an exception: the other
directories still load (a bad unit never stops the other units).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs

from activator.catalog import Catalog, build_catalog
from activator.errors import Problem
from activator.units import UNIT_SUFFIXES, UnitDirectory

#: A unit file or drop-in larger than this is refused before it is read whole.
MAX_UNIT_FILE_BYTES = 4 * 1024 * 1024


def _is_unit_file(name: str) -> bool:
    return name.rpartition(".")[2] in UNIT_SUFFIXES and not name.startswith(".")


def scan_directory(path: str) -> UnitDirectory:
    """Snapshot one units directory: its unit files and the ``*.conf`` files of its ``.d``s.

    Masked units (symlinks to /dev/null, as systemd masks them) are left out.

    Raises:
        OSError: when the directory cannot be listed.
    """
    files: set[str] = set()
    masked: set[str] = set()
    dropins: dict[str, frozenset[str]] = {}
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.endswith(".d") and entry.is_dir():
                confs = set()
                with os.scandir(entry.path) as inner:
                    for e in inner:
                        if not e.name.endswith(".conf"):
                            continue
                        if _masked(e.path):
                            masked.add(f"{entry.name}/{e.name}")
                            confs.add(e.name)
                        elif e.is_file():
                            confs.add(e.name)
                dropins[entry.name] = frozenset(confs)
            elif _is_unit_file(entry.name):
                if _masked(entry.path):
                    masked.add(entry.name)
                elif entry.is_file():
                    files.add(entry.name)
    return UnitDirectory(
        path=path, files=frozenset(files), dropins=dropins, masked=frozenset(masked)
    )


def _masked(path: str) -> bool:
    return os.path.islink(path) and os.path.realpath(path) == "/dev/null"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_UNIT_FILE_BYTES + 1)
    if len(data) > MAX_UNIT_FILE_BYTES:
        msg = f"file is larger than {MAX_UNIT_FILE_BYTES} bytes"
        raise OSError(msg)
    return data


def load_catalog(directories: Sequence[str]) -> Catalog:
    """Scan and read ``directories`` (earlier ones win) and build the catalog.

    Directories or files that cannot be read become error problems of the returned catalog.
    """
    snapshots: list[UnitDirectory] = []
    contents: dict[str, bytes] = {}
    problems: list[Problem] = []
    for path in dict.fromkeys(os.path.normpath(d) for d in directories):
        try:
            snapshot = scan_directory(path)
        except OSError as e:
            reason = f"cannot read units directory: {e.strerror or e}"
            problems.append(Problem(path, None, None, None, reason))
            continue
        snapshots.append(snapshot)
        paths = [f"{path}/{f}" for f in snapshot.files]
        paths += [f"{path}/{d}/{c}" for d, confs in snapshot.dropins.items() for c in confs]
        unreadable = set()
        for file_path in paths:
            try:
                contents[file_path] = _read(file_path)
            except OSError as e:
                reason = f"cannot read: {e.strerror or e}"
                problems.append(Problem(file_path, None, None, None, reason))
                unreadable.add(file_path.removeprefix(f"{path}/"))
        if unreadable:
            # An unreadable unit is left out; an unreadable drop-in fails its unit (fail closed).
            files = snapshot.files - unreadable
            snapshot = attrs.evolve(snapshot, files=files)
            snapshots[-1] = snapshot
            if any("/" in u for u in unreadable):
                broken = {u.split("/", 1)[0].removesuffix(".d") for u in unreadable if "/" in u}
                snapshots[-1] = attrs.evolve(snapshot, files=files - broken)
    catalog = build_catalog(snapshots, contents)
    if not problems:
        return catalog
    merged = sorted((*catalog.problems, *problems), key=lambda p: (p.path, p.line or 0))
    return attrs.evolve(catalog, problems=tuple(merged))
