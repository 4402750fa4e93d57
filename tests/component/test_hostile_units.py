"""Hostile unit files and settings through the whole loading path of ``activator check``.

Issue 9 asks that no unit file or ``activator.toml`` can make activator fail in any other way
than with a clear error naming the file and the line: never a traceback, never a hang. And that
no ``%`` specifier, escape, newline or instance name can make a directory of a unit leave its
base (``/var/lib``, ``/run``, ...).

Two parts:

1. A fuzzer. Each example is a whole configuration written to disk: a units directory (the
   bundled units of ``examples/``, ``bench/serve`` and ``deploy/kubernetes`` plus generated
   ones, mutated: bytes flipped, truncated, lines duplicated or dropped, control characters,
   NULs, invalid UTF-8, 1 MB lines, deep line continuations, unknown sections, ``%``
   sequences; renamed to templates, instances and invalid names; placed as drop-ins; symlinks
   pointing outside, to /dev/null or /dev/zero, or in loops) and an ``activator.toml`` (the
   bundled ones, mutated the same way). It runs ``activator check --json`` in-process (the
   real ``cli.main``, so settings, loader, catalog, model and template instances all run) and
   asserts the only outcomes allowed: exit 0 with no error, or exit 2 with problems that each
   name a file (and, when they are about a line, a line of that file) and say what is wrong.
   Each example is bounded in time by a wall clock (SIGALRM), so a hang fails the test. The
   component test ``tests/component/test_hostile_check.py`` runs the real command line on a
   few such trees.

2. Specifier injection: tables of values and instance names that would leave a directory's
   base, each refused with the file, the line, the key and the value; and a property: whatever
   instance name ``enable`` accepts (:func:`activator.instances.resolve`, then
   :meth:`Catalog.instantiate`, the control socket's path), every directory the unit gets is
   below its base, in canonical form, with no NUL or newline.

How to run (figures are printed as ``figures:`` lines with ``-s``, and appended to the file
``ACTIVATOR_FIGURES`` names)::

    .venv/bin/pytest tests/component/test_hostile_units.py
    CI=true ...                  # the ci profile: 300 examples per property, fixed order
    HYPOTHESIS_PROFILE=soak .venv/bin/pytest \\
        -s tests/component/test_hostile_units.py         # a long hunt: 3000 examples per property
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import posixpath
import re
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator.catalog import Catalog
from activator.cli import main, problem_json
from activator.errors import ConfigError, Problem
from activator.instances import InstanceError, build_instance, resolve
from activator.loader import load_catalog, read_bounded
from activator.model import SERVICE_DIRECTIVES, SOCKET_DIRECTIVES, ServiceUnit, SocketUnit
from activator.settings import load_settings
from activator.uidpool import is_valid_user_name, user_name
from activator.units import LONG_LINE_MAX, SYSTEM_DIRECTORIES, UnitName
from activator.values import InetListen, UnixListen

REPO = Path(__file__).resolve().parents[2]

#: A generous wall-clock bound on one example: a hang fails the test, a slow machine does not.
EXAMPLE_SECONDS = 10.0


# ---------------------------------------------------------------------------------------------
# Seeds: the real inputs the mutations start from


def _kubernetes_files() -> dict[str, str]:
    """The ConfigMap's files (``echo-at.service`` is projected to ``echo@.service``)."""
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:  # PyYAML comes with kubernetes-validate; the other seeds suffice
        return {}
    text = (REPO / "deploy" / "kubernetes" / "configmap.yaml").read_text(encoding="utf-8")
    data: dict[str, str] = yaml.safe_load(text)["data"]
    return {key.replace("-at.", "@."): value for key, value in data.items()}


def _unit_seeds() -> dict[str, bytes]:
    """Every bundled unit file and drop-in, by its path in a units directory (first one wins)."""
    seeds: dict[str, bytes] = {}
    for directory in ("examples/units", "examples/blog", "examples/per-customer/units"):
        for path in sorted((REPO / directory).rglob("*")):
            if path.is_file() and path.suffix in (".service", ".socket", ".conf"):
                relative = path.relative_to(REPO / directory).as_posix()
                seeds.setdefault(relative, path.read_bytes())
    for path in sorted((REPO / "bench" / "serve" / "units").iterdir()):
        seeds.setdefault(f"bench/{path.name}", path.read_bytes())  # renamed when placed
    for name, text in _kubernetes_files().items():
        if name.endswith((".service", ".socket")):
            seeds.setdefault(f"kubernetes/{name}", text.encode())
    return seeds


def _settings_seeds() -> dict[str, bytes]:
    seeds = {
        name: (REPO / name).read_bytes()
        for name in (
            "examples/activator.toml",
            "examples/per-customer/activator.toml",
            "bench/serve/activator.toml",
        )
    }
    if "activator.toml" in (kube := _kubernetes_files()):
        seeds["deploy/kubernetes/configmap.yaml:activator.toml"] = kube["activator.toml"].encode()
    return seeds


UNIT_SEEDS = _unit_seeds()
SETTINGS_SEEDS = _settings_seeds()


def test_the_seeds_are_the_bundled_files() -> None:
    """The fuzzer starts from every kind of bundled input (a moved file would silently shrink
    what it mutates)."""
    names = set(UNIT_SEEDS)
    assert {"echo.socket", "echo@.service", "gitd@.socket", "gitd@.service"} <= names
    assert "gitd@alice.socket.d/port.conf" in names
    assert {"bench/bench.socket", "bench/bench@.service"} <= names
    assert len(SETTINGS_SEEDS) >= 3


# ---------------------------------------------------------------------------------------------
# Mutations

#: Bytes inserted at a random place: control characters, NUL, invalid UTF-8, line ends,
#: continuations, section headers and specifiers.
SNIPPETS = (
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    b"\xef\xbb\xbf",  # a byte order mark in the middle
    b"\r",
    b"\r\n",
    b"\n\r",
    b"\x1b[2J",
    b"\x7f",
    b"\t",
    b"\x0b\x0c",
    b"\\",
    b"\\\n",
    b"\\\\\n",
    b"\n[Foo]\n",
    b"\n[X-Fuzz]\nKey=value\n",
    b"\n[Service\n",
    b"\n[]\n",
    b"\n[Ser]vice]\n",
    b"\n[Serv\x01ice]\n",
    b"%",
    b"%%",
    b"%z",
    b"%i",
    b"%I",
    b"%\n",
    b"=",
    b'"',
    b"'",
    b";",
    b"#",
    b"\\x2e\\x2e/",
    b"/../",
    b"\\n",
    b"\\x00",
)

#: Whole lines: values that try to leave a directory's base, smuggle a newline or a specifier,
#: or use keys activator refuses.
HOSTILE_LINES = (
    b"StateDirectory=../x",
    b"StateDirectory=a/../../b",
    b"RuntimeDirectory=..",
    b"LogsDirectory=a/..",
    b"CacheDirectory=./a",
    b"StateDirectory=/etc",
    b"StateDirectory=\\x2fetc",
    b"StateDirectory=\\x2e\\x2e",
    b"StateDirectory='..'",
    b"StateDirectory=a\\nb",
    b"StateDirectory=a\\x00b",
    b"StateDirectory=private/x",
    b"StateDirectory=%i",
    b"StateDirectory=%I",
    b"StateDirectory=x/%I/y",
    b"RuntimeDirectory=%i/%I",
    b"StateDirectory=a%",
    b"StateDirectory=%z",
    b"WorkingDirectory=/srv/%I",
    b"WorkingDirectory=/srv/..",
    b"ReadWritePaths=/srv/%i",
    b"BindPaths=/srv/%I:/x",
    b"ListenStream=/run/%I.sock",
    b"ListenStream=/run/../%i.sock",
    b"ExecStart=/bin/sh -c 'echo %'",
    b"ExecStart=/bin/echo %u",
    b"ExecStart=/bin/a\\nb",
    b"ExecStart=%I",
    b"ExecStart=",
    b"ExecStart=+/bin/true",
    b"User=%i",
    b"User=root\\n",
    b"DynamicUser=%i",
    b"Environment=A=%I",
    b'Environment="A=b\\nc"',
    b"Description=100%",
    b"Service=%i.service",
    b"Service=../x.service",
    b"SystemCallFilter=@system-service",
    b"PrivateUsers=yes",
    b"X-Anything=goes",
    b"Unknown=1",
    b"StateDirectory=a \\",
    b"ExecStart=/bin/true \\",
    b"# a comment \\",
    b"[Service]",
    b"[Socket]",
    b"[Unit]",
    b"[Install]",
)

#: Names a file may be given: templates, instances, drop-in directories, invalid names.
NAMES = (
    "echo.socket",
    "echo@.service",
    "echo@x.service",
    "gitd@.socket",
    "gitd@.service",
    "gitd@alice.socket",
    "gitd@..service",
    "gitd@..socket",
    "gitd@\\x2e\\x2e.service",
    "gitd@a@b.service",
    "a-b-c.service",
    "a-.service",
    "x.service",
    "x.socket",
    "@.service",
    "@x.socket",
    "x@.timer",
    "a b.service",
    ".hidden.service",
    "bad\udcff.service",  # a file name that is not UTF-8
    "tab\t.service",
    "new\nline.service",
    "x%i.service",
    "y" * 240 + ".service",
    "t@" + "z" * 240 + ".service",
)

#: The ``.d`` directories a drop-in may go to.
DROPIN_DIRS = (
    "echo.socket.d",
    "echo@.service.d",
    "echo@x.service.d",
    "gitd@.service.d",
    "gitd@alice.socket.d",
    "gitd@.socket.d",
    "gitd-.service.d",
    "a-.service.d",
    "a-b-.service.d",
    "service.d",
    "socket.d",
    "x.service.d",
    "nothing.service.d",
)

#: Where a symlink may point (relative targets are in the units directory).
LINK_TARGETS = (
    "/dev/null",
    "/dev/zero",
    "../fifo",  # a FIFO with no writer: opening it to read would block
    "/etc/hostname",
    "/etc/passwd",
    "/nonexistent/x.service",
    "../activator.toml",
    "echo.socket",
    "echo@.service",
    "gitd@.service",
    "service.d",
    "loop-a.service",
    "loop-b.service",
)

#: Instance names given to ``check DIR/foo@NAME.service`` and to ``enable``.
HOSTILE_INSTANCES = (
    "..",
    ".",
    "...",
    "a-b",
    "-",
    "-..",
    "..-..-etc",
    "a-..-..-b",
    "\\x2e\\x2e",
    "\\x2e",
    "\\x2f",
    "\\x2fetc",
    "\\x00",
    "\\x0a",
    "\\xff",
    "\\x2d",
    "\\",
    "\\x",
    "\\x2",
    "a/b",
    "x%2e%2e",
    "%i",
    "private",
    "private-x",
    "a\nb",
    "a\0b",
    "@",
    "a@b",
    ":",
    "é",
    "x" * 300,
    "x" * 240,
)


@attrs.frozen
class Op:
    """One mutation of a file's bytes. ``at`` is taken modulo the size (or number of lines)."""

    kind: str
    at: int
    arg: bytes | int = 0


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _long_line(size: int) -> bytes:
    return b"Description=" + b"x" * size


def _continued(count: int) -> bytes:
    # A command continued over many lines, a comment inside (skipped, as systemd does).
    return b"ExecStart=/bin/echo \\\n" + b"a \\\n# note \\\n" * count + b"end"


def apply_op(data: bytes, op: Op) -> bytes:
    """``data`` with ``op`` applied (the mutations are plain bytes, so any result may come)."""
    lines = _lines(data)
    line = op.at % (len(lines) + 1)
    pos = op.at % (len(data) + 1)
    if op.kind == "flip" and data:
        at = op.at % len(data)
        bit = 1 << (int(op.arg) % 8)
        return data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :]
    if op.kind == "truncate":
        return data[:pos]
    if op.kind == "dup" and lines:
        at = op.at % len(lines)
        return b"\n".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])
    if op.kind == "drop" and lines:
        at = op.at % len(lines)
        return b"\n".join(lines[:at] + lines[at + 1 :])
    if op.kind == "insert":
        assert isinstance(op.arg, bytes)
        return data[:pos] + op.arg + data[pos:]
    if op.kind == "line":
        assert isinstance(op.arg, bytes)
        return b"\n".join([*lines[:line], op.arg, *lines[line:]])
    if op.kind == "long":
        return b"\n".join([*lines[:line], _long_line(int(op.arg)), *lines[line:]])
    if op.kind == "continued":
        return b"\n".join([*lines[:line], _continued(int(op.arg)), *lines[line:]])
    return data


positions = st.integers(0, 2**20)
ops = st.one_of(
    st.builds(Op, st.just("flip"), positions, st.integers(0, 7)),
    st.builds(Op, st.just("truncate"), positions),
    st.builds(Op, st.just("dup"), positions),
    st.builds(Op, st.just("drop"), positions),
    st.builds(Op, st.just("insert"), positions, st.sampled_from(SNIPPETS)),
    st.builds(Op, st.just("line"), positions, st.sampled_from(HOSTILE_LINES)),
    st.builds(
        Op,
        st.just("long"),
        positions,
        # Just under, at and over systemd's LONG_LINE_MAX (1 MiB).
        st.sampled_from([LONG_LINE_MAX - 20, LONG_LINE_MAX - 12, LONG_LINE_MAX + 1]),
    ),
    st.builds(Op, st.just("continued"), positions, st.sampled_from([1, 300, 40_000])),
)

#: A generated unit: section headers and assignments of known, refused and unknown keys.
_KEYS = sorted(
    {key for _, key in (*SERVICE_DIRECTIVES, *SOCKET_DIRECTIVES)}
    | {"IPAddressDeny", "SystemCallFilter", "Foo", "X-Foo", "", " ", "Exec Start"}
)
_VALUES = st.one_of(
    st.sampled_from([line.partition(b"=")[2].decode() for line in HOSTILE_LINES]),
    st.sampled_from(["yes", "no", "0", "-1", "infinity", "127.0.0.1:7", "/bin/true", "x y"]),
    st.text(max_size=20),
)
_GENERATED_LINES = st.one_of(
    st.sampled_from(["[Unit]", "[Service]", "[Socket]", "[Install]", "[X-A]", "[Bad]", "["]),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS), _VALUES),
    st.sampled_from(["", "# comment", "; comment", "  ", "Key", "=value"]),
)
generated_units = st.lists(_GENERATED_LINES, max_size=12).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
)


@attrs.frozen
class FileSpec:
    """A file of the tree: where, what it started from, and the mutations applied in order."""

    path: str
    seed: bytes
    ops: tuple[Op, ...]

    def data(self) -> bytes:
        data = self.seed
        for op in self.ops:
            data = apply_op(data, op)
        return data


@attrs.frozen
class LinkSpec:
    """A symlink of the tree."""

    path: str
    target: str


@attrs.frozen
class Tree:
    """One example: a units directory, a settings file, and the units ``check`` is asked for."""

    units: tuple[FileSpec | LinkSpec, ...]
    settings: FileSpec | LinkSpec | None
    asked: tuple[str, ...]


@st.composite
def unit_files(draw: st.DrawFn) -> FileSpec:
    seed_name = draw(st.sampled_from(sorted(UNIT_SEEDS)))
    seed = draw(st.one_of(st.just(UNIT_SEEDS[seed_name]), generated_units))
    base = posixpath.basename(seed_name)
    where = draw(st.sampled_from(["own", "own", "name", "dropin"]))
    if where == "name":
        path = draw(st.sampled_from(NAMES))
    elif where == "dropin":
        conf = draw(st.sampled_from(["10-a.conf", "port.conf", "z.conf", "x.txt", ".h.conf"]))
        path = f"{draw(st.sampled_from(DROPIN_DIRS))}/{conf}"
    else:
        path = seed_name if not seed_name.startswith(("bench/", "kubernetes/")) else base
    # Half the files are left whole, so that whole units load and their templates instantiate.
    mutations = draw(st.one_of(st.just(()), st.lists(ops, min_size=1, max_size=4).map(tuple)))
    return FileSpec(path, seed, mutations)


_LINK_NAMES = st.sampled_from([*NAMES[:12], "loop-a.service", "loop-b.service", *DROPIN_DIRS[:4]])
links = st.one_of(
    st.builds(LinkSpec, _LINK_NAMES, st.sampled_from(LINK_TARGETS)),
    _LINK_NAMES.map(lambda name: LinkSpec(name, posixpath.basename(name))),  # a loop of one
)
settings_files = st.builds(
    FileSpec,
    st.just("activator.toml"),
    st.one_of(
        st.sampled_from(sorted(SETTINGS_SEEDS.values())),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ),
    st.lists(ops, max_size=4).map(tuple),
)
settings_links = st.builds(
    LinkSpec,
    st.just("activator.toml"),
    st.sampled_from(["/dev/null", "/dev/zero", "fifo", "units", "activator.toml", "/nonexistent"]),
)
trees = st.builds(
    Tree,
    st.lists(st.one_of(unit_files(), unit_files(), links), min_size=1, max_size=8).map(tuple),
    st.one_of(settings_files, settings_files, settings_links, st.none()),
    st.lists(
        st.builds(
            lambda prefix, instance, suffix: f"{prefix}@{instance}.{suffix}",
            st.sampled_from(["echo", "gitd", "bench", "waldo", "foobar", "nothing"]),
            st.sampled_from(HOSTILE_INSTANCES) | st.text(max_size=12),
            st.sampled_from(["service", "socket"]),
        ),
        max_size=3,
    ).map(tuple),
)


# ---------------------------------------------------------------------------------------------
# Writing a tree and judging what check says


@attrs.define
class Written:
    """What was put on disk: the upper bound of line numbers of every readable file."""

    root: Path
    units: Path
    settings: Path
    line_bounds: dict[str, int] = attrs.field(factory=dict)
    files: int = 0
    links: int = 0
    bytes: int = 0
    skipped: int = 0  # entries that cannot coexist with an earlier one (a name taken, too long)


def line_bound(data: bytes) -> int:
    """The most lines any reader may count in ``data``: each line end holds a CR or an LF."""
    return data.count(b"\n") + data.count(b"\r") + 1


def write_tree(tree: Tree, root: Path) -> Written:
    units = root / "units"
    units.mkdir()
    os.mkfifo(root / "fifo")  # what the links to "fifo" and "../fifo" name
    written = Written(root, units, root / "activator.toml")
    entries: list[tuple[Path, FileSpec | LinkSpec]] = [(units / e.path, e) for e in tree.units]
    if tree.settings is not None:
        entries.append((written.settings, tree.settings))
    for path, entry in entries:
        try:
            if os.path.lexists(path):
                raise FileExistsError(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(entry, LinkSpec):
                os.symlink(entry.target, path)
                written.links += 1
            else:
                data = entry.data()
                path.write_bytes(data)
                written.files += 1
                written.bytes += len(data)
        except OSError:
            written.skipped += 1
    for path, _ in entries:
        # Line numbers must lie inside the file they name, even when it is reached by a link
        # (a char device such as /dev/zero is never read as a unit, and has no lines).
        if os.path.isfile(path):
            with open(path, "rb") as file:
                written.line_bounds[str(path)] = line_bound(file.read(8 * 2**20))
    return written


def check_json(*args: str) -> tuple[int, dict[str, Any], str]:
    """``activator check --json ARGS`` in-process: the exit code, the document, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", "--json", *args])
    return code, json.loads(out.getvalue()), err.getvalue()


#: What a problem line must never hold: C0, DEL, C1 and the Unicode line separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def assert_placed(problem: dict[str, Any], written: Written) -> None:
    """A problem names a file (or a unit, or the units directory), and, when it is about a
    line, a line inside that file; its message starts with that place and says something."""
    path, line, key = problem["path"], problem["line"], problem["key"]
    assert isinstance(path, str), problem
    assert path, problem
    assert problem["severity"] in ("error", "warning"), problem
    assert isinstance(problem["reason"], str), problem
    assert problem["reason"].strip(), problem
    where = path if line is None else f"{path}:{line}"
    # One line, whatever the file's name holds: control characters are shown as \xNN.
    assert not CONTROL.search(problem["message"]), problem
    assert problem["message"].startswith(CONTROL.sub(escape, where) + ": "), problem
    if key is not None and path != "command line":  # --units DIR has no line
        assert line is not None, f"a problem about a key has no line: {problem}"
    if line is not None:
        assert isinstance(line, int), problem
        assert line >= 1, problem
        # The file may be one the tree holds through a symlinked directory (x.service.d ->
        # service.d): it is read now, while the tree still exists.
        assert path.startswith(f"{written.root}/"), f"a line of a file not written: {problem}"
        assert os.path.isfile(path), problem
        if path not in written.line_bounds:
            with open(path, "rb") as file:
                written.line_bounds[path] = line_bound(file.read(8 * 2**20))
        assert line <= written.line_bounds[path], f"past the end of the file: {problem}"


#: The bases of the four kinds of directories (``%t %S %C %L``).
DIRECTORY_BASES = {
    "RUNTIME_DIRECTORY": SYSTEM_DIRECTORIES["t"],
    "STATE_DIRECTORY": SYSTEM_DIRECTORIES["S"],
    "CACHE_DIRECTORY": SYSTEM_DIRECTORIES["C"],
    "LOGS_DIRECTORY": SYSTEM_DIRECTORIES["L"],
}


def assert_below_base(base: str, path: str, *, boundary: bool = True) -> None:
    """``path`` is a canonical path strictly below ``base`` with no ``.`` or ``..`` component
    and no NUL or line end; with ``boundary``, not in the base's ``private`` (the boundary
    directory of dynamic users, which a unit must not name)."""
    assert not any(c in path for c in "\0\n\r"), path
    assert path.startswith(f"{base}/"), (base, path)
    parts = path[len(base) + 1 :].split("/")
    assert "" not in parts, path
    assert "." not in parts, path
    assert ".." not in parts, path
    assert not boundary or parts[0] != "private", path
    assert posixpath.normpath(path) == path, path


def assert_canonical_absolute(path: str) -> None:
    assert not any(c in path for c in "\0\n\r"), path
    assert path.startswith("/"), path
    assert posixpath.normpath(path) == path.rstrip("/") or path == "/", path


#: What one example may add to the address space: a read that never ends fails with
#: MemoryError instead of taking the machine's memory.
EXAMPLE_BYTES = 1024 * 1024 * 1024


@contextlib.contextmanager
def memory_bound(extra: int) -> Iterator[None]:
    """Lower the soft RLIMIT_AS to the current size plus ``extra`` for the block, then put it
    back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status", encoding="ascii") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Hang(BaseException):
    """A block ran past its :func:`time_bound`. A BaseException, so that no ``except OSError``
    or ``except Exception`` of the code under test (TimeoutError is an OSError) can turn a hang
    into an ordinary problem."""


@contextlib.contextmanager
def time_bound(seconds: float, what: str) -> Iterator[None]:
    """Fail (raise) when the block runs longer than ``seconds`` of wall-clock time: SIGALRM
    interrupts Python code, so a loop that never ends is reported, with the input, instead of
    stalling the test run."""

    def expire(signum: int, frame: FrameType | None) -> None:
        msg = f"{what}: still running after {seconds} s (a hang)"
        raise Hang(msg)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# 1. The fuzzer


@pytest.mark.slow
def test_hostile_trees_give_a_clean_result_or_placed_problems_never_a_crash_or_hang(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    """Random and mutated units directories and settings files, through ``activator check``:
    exit 0 without errors, or exit 2 with every problem naming its file and line; any
    exception escaping, or an example running past its time bound, fails."""
    counts = dict.fromkeys(
        ["inputs", "files", "symlinks", "bytes", "skipped", "clean", "errors", "warnings"], 0
    )
    counts |= {"units_shown": 0, "instances_asked": 0}
    slowest = 0.0
    reasons: set[str] = set()
    started = time.monotonic()

    @given(trees)
    def run(tree: Tree) -> None:
        nonlocal slowest
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            began = time.monotonic()
            with time_bound(EXAMPLE_SECONDS, "activator check"), memory_bound(EXAMPLE_BYTES):
                written = write_tree(tree, root)
                asked = [str(written.units / name) for name in tree.asked]
                code, doc, err = check_json(
                    "--config", str(written.settings), str(written.units), *asked
                )
            slowest = max(slowest, time.monotonic() - began)
            counts["inputs"] += 1
            counts["files"] += written.files
            counts["symlinks"] += written.links
            counts["bytes"] += written.bytes
            counts["skipped"] += written.skipped
            counts["instances_asked"] += len(asked)
            assert err == "", err  # with --json, everything is in the document
            problems = doc["problems"]
            errors = [p for p in problems if p["severity"] == "error"]
            assert code == (2 if errors else 0), (code, problems)
            assert doc["ok"] is (not errors)
            for problem in problems:
                assert_placed(problem, written)
                reasons.add(problem["reason"][:40])
                # A bad entry fails its own unit, never the whole directory (DESIGN.md,
                # invariant 5: a bad unit never stops the other units).
                assert problem["path"] != str(written.units), problem
            counts["clean"] += not errors
            counts["errors"] += len(errors)
            counts["warnings"] += len(problems) - len(errors)
            counts["units_shown"] += len(doc["units"])
            for unit in doc["units"]:
                for variable, value in unit.get("environment", {}).items():
                    for path in value.split(":"):
                        assert_below_base(DIRECTORY_BASES[variable], path)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    figures.update(counts)
    figures["distinct_reasons"] = len(reasons)
    figures["slowest_example_seconds"] = round(slowest, 3)
    figures["seconds"] = round(time.monotonic() - started, 1)
    # The fuzzer reached both outcomes and every kind of input it was written for.
    assert counts["clean"] > 0
    assert counts["errors"] > 0
    assert counts["symlinks"] > 0


@pytest.mark.slow
def test_hostile_settings_files_give_settings_or_placed_problems(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    """Mutated ``activator.toml`` files through :func:`load_settings` (what ``check`` and
    ``serve`` call): settings, or a ConfigError whose problems all name the file, and a line
    of it when they have one."""
    tried = refused = loaded = 0
    started = time.monotonic()

    @given(st.one_of(settings_files, settings_links))
    def run(spec: FileSpec | LinkSpec) -> None:
        nonlocal tried, refused, loaded
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            written = write_tree(Tree((), spec, ()), root)
            with time_bound(EXAMPLE_SECONDS, "load_settings"), memory_bound(EXAMPLE_BYTES):
                try:
                    settings = load_settings(str(written.settings))
                except ConfigError as error:
                    problems = error.problems
                else:
                    problems = ()
                    assert all(os.path.isabs(d) for d in settings.units.directories)
            tried += 1
            refused += bool(problems)
            loaded += not problems
            for p in problems:
                assert p.path == str(written.settings), p
                assert p.is_error, p
                assert_placed(problem_json(p), written)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    figures.update(inputs=tried, refused=refused, loaded=loaded)
    figures["seconds"] = round(time.monotonic() - started, 1)
    assert refused > 0
    assert loaded > 0


# ---------------------------------------------------------------------------------------------
# Regressions the fuzzer found


def write_units(tmp_path: Path, files: dict[str, str]) -> Path:
    units = tmp_path / "units"
    for name, text in files.items():
        (units / name).parent.mkdir(parents=True, exist_ok=True)
        (units / name).write_text(text, encoding="utf-8")
    return units


GOOD = "[Service]\nExecStart=/bin/true\n"


def test_a_symlink_loop_fails_its_own_unit_and_not_the_directory(tmp_path: Path) -> None:
    """``a.service -> a.service``: only a.service fails, naming the loop; before, the listing
    raised ELOOP and the whole directory (every other unit with it) was not loaded."""
    units = write_units(tmp_path, {"good.service": GOOD, "x.service": GOOD, "dropin.service": GOOD})
    (units / "x.service.d").mkdir()
    os.symlink("a.service", units / "a.service")
    os.symlink("loop.conf", units / "x.service.d" / "loop.conf")
    os.symlink("dropin.service.d", units / "dropin.service.d")
    catalog = load_catalog([str(units)])
    assert sorted(catalog.units) == ["good.service"]
    assert sorted(catalog.failed) == ["a.service", "dropin.service", "x.service"]
    loop = "cannot read: Too many levels of symbolic links"
    messages = {str(p) for p in catalog.problems}
    assert f"{units}/a.service: {loop}" in messages
    assert f"{units}/x.service.d/loop.conf: {loop}" in messages  # its drop-in: fails closed
    assert f"{units}/dropin.service.d/.: {loop}" in messages  # its drop-in directory too


def test_a_settings_file_or_unit_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """``--config`` naming a FIFO with no writer hung ``check`` for ever in its open."""
    os.mkfifo(tmp_path / "fifo")
    os.symlink("fifo", tmp_path / "activator.toml")
    with time_bound(EXAMPLE_SECONDS, "load_settings(FIFO)"), pytest.raises(ConfigError) as e:
        load_settings(str(tmp_path / "activator.toml"))
    assert str(e.value) == f"{tmp_path}/activator.toml: is a FIFO or socket, not a file"
    with pytest.raises(OSError, match="is a FIFO or socket, not a file"):
        read_bounded(str(tmp_path / "fifo"), 1024)


def test_a_settings_file_that_never_ends_is_refused(tmp_path: Path) -> None:
    """``--config`` naming /dev/zero (or a link to it) read until memory ran out."""
    link = tmp_path / "activator.toml"
    os.symlink("/dev/zero", link)
    with (
        time_bound(EXAMPLE_SECONDS, "load_settings(/dev/zero)"),
        memory_bound(EXAMPLE_BYTES),
        pytest.raises(ConfigError) as e,
    ):
        load_settings(str(link))
    assert str(e.value) == f"{link}: file is larger than {4 * 1024 * 1024} bytes"


def test_a_file_name_cannot_print_a_problem_line_of_its_own(tmp_path: Path) -> None:
    """Each problem is one line of stderr: a unit file named ``x\\nactivator: fake:1: ...``
    printed, before, a second line that read as a problem of a file "fake"."""
    units = write_units(tmp_path, {"x.service\nactivator: fake:1: injected.service": GOOD})
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["check", str(units)]) == 0  # an invalid name is a warning
    assert err.getvalue() == (
        f"activator: warning: {units}/x.service\\x0aactivator: fake:1: injected.service: "
        "unit name prefix must not contain '\\n' (got 'x.service\\nactivator: fake:1: "
        "injected.service')\n"
    )


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\rb", "a\\x0db"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),  # ESC: a terminal's control sequence
        ("a\x9b2Jb", "a\\x9b2Jb"),  # CSI, the one-character C1 form of ESC [
        ("a\u2028b", "a\\u2028b"),  # a Unicode line separator
        ("a\u00e9b", "a\u00e9b"),  # a printable non-ASCII letter stays itself
    ],
)
def test_a_problem_shows_control_characters_of_a_path_escaped(name: str, shown: str) -> None:
    assert str(Problem(f"/u/{name}", 3, None, None, "bad")) == f"/u/{shown}:3: bad"


# ---------------------------------------------------------------------------------------------
# 2. Specifier injection: values


def service_text(line: str) -> tuple[str, int]:
    """A dynamic-user service with ``line`` in [Service], and the number of the line's last
    physical line (where a continued line's problem is placed)."""
    head = "[Service]\nDynamicUser=yes\n"
    if not line.startswith("ExecStart="):
        head += "ExecStart=/bin/true\n"
    return head + line + "\n", head.count("\n") + line.count("\n") + 1


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        # '..' and '.' in directory names, however written
        ("StateDirectory=../x", "StateDirectory", "must not contain '..'"),
        ("StateDirectory=a/../../b", "StateDirectory", "must not contain '..'"),
        ("RuntimeDirectory=..", "RuntimeDirectory", "must not contain '..'"),
        ("LogsDirectory=a/..", "LogsDirectory", "must not contain '..'"),
        ("CacheDirectory=./a", "CacheDirectory", "must not contain '.'"),
        ("StateDirectory=a/./b", "StateDirectory", "must not contain '.'"),
        ("StateDirectory=ok \\x2e\\x2e", "StateDirectory", "must not contain '..'"),
        ("StateDirectory='..'", "StateDirectory", "must not contain '..'"),
        ('StateDirectory="a/.."', "StateDirectory", "must not contain '..'"),
        ("StateDirectory=a//b", "StateDirectory", "must not contain '//'"),
        ("StateDirectory=private/x", "StateDirectory", "must not be 'private'"),
        ("StateDirectory=a:b", "StateDirectory", "symlink form"),
        # absolute paths
        ("StateDirectory=/etc", "StateDirectory", "must be relative"),
        ("StateDirectory=/var/lib/x", "StateDirectory", "must be relative"),
        ("RuntimeDirectory=/run/x", "RuntimeDirectory", "must be relative"),
        ("LogsDirectory=\\x2fetc", "LogsDirectory", "must be relative"),
        # newlines and other control characters smuggled in by escapes
        ("StateDirectory=a\\nb", "StateDirectory", "must not contain control characters"),
        ("CacheDirectory=a\\tb", "CacheDirectory", "must not contain control characters"),
        ("StateDirectory=a\\x00b", "StateDirectory", "invalid escape"),
        ("ExecStart=/bin/a\\nb", "ExecStart", "must not contain control characters"),
        ("WorkingDirectory=/srv/a\nb", None, "missing '='"),  # a raw newline ends the line
        # a line continuation joins with a space: two words, and the second is checked too
        ("StateDirectory=a\\\n/../b", "StateDirectory", "must be relative"),
        ("StateDirectory=a/.\\\n./b", "StateDirectory", "must not contain '.'"),
        # '%' sequences
        ("StateDirectory=%z", "StateDirectory", "unknown specifier '%z'"),
        ("StateDirectory=a%", "StateDirectory", "lone '%'"),
        ("RuntimeDirectory=%", "RuntimeDirectory", "lone '%'"),
        ("ExecStart=/bin/echo 100%", "ExecStart", "lone '%'"),
        ("ExecStart=/bin/echo %u", "ExecStart", "unknown specifier '%u'"),
        ("WorkingDirectory=/srv/%q", "WorkingDirectory", "unknown specifier '%q'"),
        ("Environment=A=%", "Environment", "lone '%'"),
        ("User=a%", "User", "lone '%'"),
        # absolute path directives: '..' refused, never simplified
        ("WorkingDirectory=/srv/../etc", "WorkingDirectory", "must be normalised"),
        ("ReadWritePaths=/srv/..", "ReadWritePaths", "must be normalised"),
        ("BindPaths=/srv:/../x", "BindPaths", "must be normalised"),
        ("EnvironmentFile=/etc/./x", "EnvironmentFile", "must be normalised"),
        ("WorkingDirectory=/srv/%S/..", "WorkingDirectory", "must be normalised"),
    ],
)
def test_a_hostile_value_is_refused_naming_file_line_key_and_value(
    tmp_path: Path, line: str, key: str | None, reason: str
) -> None:
    text, number = service_text(line)
    units = write_units(tmp_path, {"x.service": text})
    catalog = load_catalog([str(units)])
    assert "x.service" in catalog.failed
    errors = [p for p in catalog.problems if p.is_error]
    first = errors[0]
    assert first.path == f"{units}/x.service"
    if key is None:  # a syntax error on the line after the newline: named, with no key
        assert first.line == number
        assert reason in first.reason
        return
    value = line.partition("=")[2].replace("\\\n", " ")
    assert (first.line, first.key, first.value) == (number, key, value)
    assert reason in first.reason
    assert str(first) == f"{units}/x.service:{number}: {key}={value!r}: {first.reason}"


# ---------------------------------------------------------------------------------------------
# 2. Specifier injection: instance names, through the control socket's path

#: Templates that put the instance (``%i``, as written; ``%I``, unescaped) into every kind of
#: directory and into absolute paths; ``s@.socket`` into a socket path and its service.
TEMPLATES = {
    "i@.service": "[Service]\nDynamicUser=yes\nExecStart=/bin/echo %i\nStateDirectory=i/%i\n"
    "RuntimeDirectory=%i\nCacheDirectory=%i/c\nLogsDirectory=l/%i/x\n"
    "WorkingDirectory=/srv/%i\nReadWritePaths=/srv/%i/rw\nBindPaths=/srv/%i:/mnt/%i\n",
    "u@.service": "[Service]\nDynamicUser=yes\nExecStart=/bin/echo %I\nStateDirectory=u/%I\n"
    "RuntimeDirectory=%I\nCacheDirectory=%I/c\nLogsDirectory=l/%I/x\n"
    "WorkingDirectory=/srv/%I\nReadWritePaths=/srv/%I/rw\nBindPaths=/srv/%I:/mnt/%I\n",
    "s@.socket": "[Socket]\nListenStream=/run/s/%I.sock\nAccept=yes\n",
    "s@.service": "[Service]\nDynamicUser=yes\nExecStart=/bin/true\nStateDirectory=s/%I\n",
}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    units = write_units(tmp_path_factory.mktemp("templates"), TEMPLATES)
    catalog = load_catalog([str(units)])
    assert catalog.problems == ()
    assert sorted(catalog.templates) == ["i@.service", "s@.service", "s@.socket", "u@.service"]
    return catalog


def enable(text: str, catalog: Catalog) -> tuple[ServiceUnit | SocketUnit, ...] | str:
    """What ``enable TEXT`` decides before it records anything (``Commands.enable``:
    :func:`resolve`, then :func:`build_instance`): the units it would run, or the refusal
    (the control socket prefixes a build error with the unit's name, as here)."""
    try:
        name = resolve(text, catalog)
    except InstanceError as error:
        return str(error)
    try:
        return tuple(loaded.unit for loaded in build_instance(name, catalog))
    except ConfigError as error:
        return f"{name.name}: {error}"


def assert_contained(unit: ServiceUnit | SocketUnit, enabled_directory: str) -> None:
    """Every path the unit ends up with stays where it belongs."""
    if isinstance(unit, SocketUnit):
        for listen in unit.listen:
            if isinstance(listen.address, UnixListen):
                assert_below_base("/run/s", listen.address.path, boundary=False)
            else:
                assert isinstance(listen.address, InetListen)
    else:
        for base, path in directory_paths(unit):
            assert_below_base(base, path)
        assert all("\0" not in arg for arg in unit.exec_start[0].argv)
        paths = [
            *([unit.working_directory.path] if unit.working_directory else []),
            *(entry.path for entry in unit.read_write_paths),
            *(entry.source for entry in unit.bind_paths),
        ]
        for path in paths:
            assert_below_base("/srv", path.rstrip("/"), boundary=False)
        for entry in unit.bind_paths:
            assert_below_base("/mnt", entry.destination.rstrip("/"), boundary=False)
    # The dynamic user the instance runs as, and the file that records it as enabled.
    assert is_valid_user_name(user_name(unit.name.name))
    record = os.path.join(enabled_directory, unit.name.name)
    assert os.path.dirname(record) == enabled_directory
    assert os.path.basename(record) not in ("", ".", "..")


#: Instance name -> outcome for ``%i`` (i@), ``%I`` (u@) and the socket with ``%I`` (s@):
#: "ok" (runs, every path inside), "name" (not a unit name: refused by ``resolve``) or the
#: reason the unit refuses it. systemd unescapes ``%I`` the same way (unit_name_unescape:
#: ``-`` is ``/``, ``\\xNN`` a byte) and then refuses a directory that is not normalised
#: (path_simplify_and_warn, path_is_normalized), so ``foo@\\x2e\\x2e`` is refused there too.
INSTANCE_OUTCOMES = [
    ("..", "'..'", "'..'", "'..'"),
    (".", "'.'", "'.'", "'.'"),
    ("...", "ok", "ok", "ok"),  # a plain name with three dots
    ("a-b", "ok", "%I gives 'a/b'", "%I gives 'a/b'"),  # u/a/b would lie inside u@a's u/a
    ("-", "ok", "must be relative", "'//'"),  # %I is "/"; the socket path /run/s//.sock
    ("-..", "ok", "must be relative", "'//'"),  # %I is "/.."
    ("a-..", "ok", "'..'", "'..'"),
    ("..-..-etc", "ok", "'..'", "'..'"),
    ("a-..-..-b", "ok", "'..'", "'..'"),
    ("\\x2e\\x2e", "ok", "'..'", "'..'"),  # %i keeps the backslashes: one odd name
    ("\\x2e", "ok", "'.'", "'.'"),
    ("\\x2fetc", "ok", "must be relative", "'//'"),
    ("a\\x2f..", "ok", "'..'", "'..'"),
    ("\\x00", "ok", "control characters", "control characters"),
    ("\\x0a", "ok", "control characters", "control characters"),
    ("\\xff", "ok", "not UTF-8", "not UTF-8"),
    ("\\x2d", "ok", "ok", "ok"),  # %I is "-"
    ("\\", "ok", "invalid escape", "invalid escape"),
    ("\\x2", "ok", "invalid escape", "invalid escape"),
    ("private", "must not be 'private'", "must not be 'private'", "ok"),
    ("private-x", "ok", "must not be 'private'", "%I gives 'private/x'"),
    (":", "ok", "ok", "ok"),  # split at ':' before specifiers (systemd): a name, no symlink
    ("@", "ok", "ok", "ok"),
    ("a@b", "ok", "ok", "ok"),
    ("a/b", "name", "name", "name"),
    ("x%2e%2e", "name", "name", "name"),
    ("a\nb", "name", "name", "name"),
    ("a\0b", "name", "name", "name"),
    ("a b", "name", "name", "name"),
    ("é", "name", "name", "name"),
    ("x" * 300, "name", "name", "name"),
    ("", "name", "name", "name"),  # "foo@" names the template: nothing to enable
]


@pytest.mark.parametrize(
    ("instance", "by_i", "by_unescaped", "by_socket"),
    INSTANCE_OUTCOMES,
    ids=[repr(row[0])[:24] for row in INSTANCE_OUTCOMES],
)
def test_instance_names_that_would_leave_a_directory_are_refused_naming_unit_and_value(
    templates: Catalog, instance: str, by_i: str, by_unescaped: str, by_socket: str
) -> None:
    for prefix, expected in (("i", by_i), ("u", by_unescaped), ("s", by_socket)):
        text = f"{prefix}@{instance}"
        outcome = enable(text, templates)
        if expected == "ok":
            assert not isinstance(outcome, str), outcome
            for unit in outcome:
                assert_contained(unit, "/etc/activator/enabled")
        elif expected == "name":
            assert isinstance(outcome, str)
            assert outcome.startswith(f"{text}: "), outcome
        else:
            assert isinstance(outcome, str)
            name = f"{prefix}@{instance}.{'socket' if prefix == 's' else 'service'}"
            # "UNIT: FILE:LINE: Key='value': reason (got 'expanded' once specifiers ...)"
            assert outcome.startswith(f"{name}: {templates.directories[0].path}/"), outcome
            assert expected in outcome, outcome
            assert "%I" in outcome or "%i" in outcome, outcome  # the value as written


def test_a_refused_instance_shows_the_value_written_and_what_the_instance_made_of_it(
    templates: Catalog,
) -> None:
    units = templates.directories[0].path
    outcome = enable("u@..-..-etc", templates)
    assert isinstance(outcome, str)
    first, *others = outcome.splitlines()  # one line per directive
    assert first == (
        f"u@..-..-etc.service: {units}/u@.service:4: StateDirectory='u/%I': must not contain "
        "'..' (got 'u/../../etc' once specifiers are resolved)"
    )
    assert len(others) == 6  # the three other directories and the three absolute paths
    # Through the socket: the service instance its connections run is built when it is
    # enabled (before, enable accepted s@.. and each connection failed with this error).
    assert enable("s@..", templates) == (
        f"s@...socket: {units}/s@.service:4: StateDirectory='s/%I': must not contain '..' "
        "(got 's/..' once specifiers are resolved)"
    )


def directories_of(outcome: tuple[ServiceUnit | SocketUnit, ...] | str) -> set[str]:
    assert not isinstance(outcome, str), outcome
    return {
        path
        for unit in outcome
        if isinstance(unit, ServiceUnit)
        for _, path in directory_paths(unit)
    }


def directory_paths(unit: ServiceUnit) -> list[tuple[str, str]]:
    """(base, public path) of each directory of ``unit``; from its fields, not from
    ``RUNTIME_DIRECTORY=`` and its siblings, whose ``:`` joins paths that may hold one (an
    instance name brings it: ``StateDirectory=x/%i`` of ``x@1-127.0.0.1:80-...``)."""
    return [
        (base, f"{base}/{name}")
        for base, names in (
            (DIRECTORY_BASES["RUNTIME_DIRECTORY"], unit.runtime_directory),
            (DIRECTORY_BASES["STATE_DIRECTORY"], unit.state_directory),
            (DIRECTORY_BASES["CACHE_DIRECTORY"], unit.cache_directory),
            (DIRECTORY_BASES["LOGS_DIRECTORY"], unit.logs_directory),
        )
        for name in names
    ]


def test_one_customers_directory_is_never_inside_another_customers(templates: Catalog) -> None:
    """Each instance is a customer with a user of its own: no directory of one may lie inside
    a directory of another, or the other's user owns (and can read, move or delete) it. ``%I``
    of ``u@a-b`` is ``a/b`` (``/var/lib/u/a/b``, inside ``u@a``'s): that instance is refused,
    naming the unit, the directive and the value; ``u@a\\x2db`` (``%I`` is ``a-b``) runs."""
    built = {}
    for instance in ("a", "a-b", "a\\x2db", "ab", "b"):
        outcome = enable(f"u@{instance}", templates)
        if isinstance(outcome, str):
            first = outcome.splitlines()[0]
            assert first == (
                f"u@{instance}.service: {templates.directories[0].path}/u@.service:4: "
                "StateDirectory='u/%I': %I gives 'a/b': an instance's directory may not nest in "
                "another's; use %i"
            )
        else:
            built[instance] = directories_of(outcome)
    assert sorted(built) == ["a", "a\\x2db", "ab", "b"]
    for one, other in ((x, y) for x in built for y in built if x != y):
        assert not any(b.startswith(f"{a}/") for a in built[one] for b in built[other])


#: Pieces hostile instance names are made of, and any text.
_PIECES = ["..", ".", "-", "a", "private", "@", ":", "\\", "x", "%", "/", "\n", "\0", " "]
_ESCAPES = ["\\x2e", "\\x2f", "\\x2d", "\\x00", "\\x0a", "\\x0d", "\\x5c", "\\xff", "\\xc3"]
instance_names = st.one_of(
    st.lists(st.sampled_from(_PIECES + _ESCAPES), max_size=10).map("".join),
    st.text(max_size=20),
    st.text(st.sampled_from("abc.-_:@\\x2e0f"), min_size=200, max_size=300),
)


@pytest.mark.slow
def test_an_instance_whose_unit_name_is_too_long_is_refused(templates: Catalog) -> None:
    """The long fuzz found it: ``enable i@NAME`` (a name without a type, 248 characters)
    was accepted as ``i@NAME.service``, 256 characters: a unit name no reader accepts, which
    broke the user name made from it at each start."""
    instance = "0" * (256 - len("i@.service"))
    assert enable(f"i@{instance}", templates) == (
        f"i@{instance}: unit name must be at most 255 characters (got 256)"
    )
    # Built by other paths (a socket instance's service), the catalog refuses it the same way.
    with pytest.raises(ConfigError, match=r"unit name must be at most 255 characters \(got 256\)"):
        templates.instantiate(UnitName("i", instance, "service"))


def test_any_instance_name_enable_accepts_keeps_every_path_inside(
    templates: Catalog, figures: dict[str, Any]
) -> None:
    """For ANY instance name accepted through ``enable``'s path, every directory of the unit is
    below its base, canonical, with no NUL or newline (and so are its absolute paths, its
    socket path, its user name and the file that records it)."""
    tried = accepted = refused = 0

    @given(instance_names, st.sampled_from(["i", "u", "s"]))
    def run(instance: str, prefix: str) -> None:
        nonlocal tried, accepted, refused
        tried += 1
        text = f"{prefix}@{instance}"
        with time_bound(EXAMPLE_SECONDS, f"enable {text!r}"):
            outcome = enable(text, templates)
        if isinstance(outcome, str):
            refused += 1
            # Not a unit name: the name is given back; a unit that refuses it: the unit's name,
            # then the template's file and line.
            built = outcome.startswith((f"{text}.service: ", f"{text}.socket: "))
            assert built or outcome.startswith(f"{text}: "), outcome
            assert not built or f": {templates.directories[0].path}/" in outcome, outcome
            return
        accepted += 1
        for unit in outcome:
            assert_contained(unit, "/etc/activator/enabled")

    run()
    figures.update(inputs=tried, accepted=accepted, refused=refused)
    assert accepted > 0
    assert refused > 0
