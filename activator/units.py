"""systemd unit syntax: names, lines, drop-ins and specifiers, with line numbers.

Rule 1: this module is pure. It takes file *contents* and directory *listings* as arguments and
never opens, lists or stats anything itself; ``loader`` does the reading. That keeps every rule here
testable with hypothesis and makes "what files make up this unit, in which order" a plain function.

Rule 2: nothing a user wrote is lost without a word. Every line that is not understood becomes a
:class:`~activator.errors.Problem` that names the file and line; syntax errors are errors (we run
other people's code as root's delegate, so a half-read unit must not run), unknown sections are
warnings as in systemd.

Rule 3: this module knows the *syntax* only. Which keys exist, which accumulate into lists and what
their values mean is ``model``'s business; here an assignment is a (section, key, value, place).

Theory of operation: ``parse_unit_text`` turns one file into assignments (systemd's
``config_parse``: ``#``/``;`` comments, ``[Section]`` headers, ``Key=Value``, a trailing backslash
continues the line, comment lines inside a continuation are skipped). ``resolve_unit_files`` decides
which fragment and which drop-ins make up a unit, in systemd's order. ``expand_specifiers`` resolves
``%i`` and friends against a unit name; ``model`` calls it per value, after splitting words, so an
instance name can never add or remove a word of a command line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence

import attrs

from activator.errors import Problem, Severity

#: The unit types activator reads. systemd has more (timers, mounts, ...); they are not ours to run.
UNIT_SUFFIXES = ("service", "socket")

#: The sections each unit type may have. ``X-`` sections are extensions and ignored silently.
KNOWN_SECTIONS: Mapping[str, frozenset[str]] = {
    "service": frozenset({"Unit", "Service", "Install"}),
    "socket": frozenset({"Unit", "Socket", "Install"}),
}

#: systemd's WHITESPACE: only these are trimmed around keys and values (not Unicode spaces).
WHITESPACE = " \t\n\r"

# systemd's read_line(): each of these ends a line.
_LINE_END = re.compile(r"\r\n|\n\r|\r|\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: systemd's UNIT_NAME_MAX is 256 including the NUL.
UNIT_NAME_MAX = 255

#: systemd's LONG_LINE_MAX: a longer (continued) line is refused rather than cut.
LONG_LINE_MAX = 1024 * 1024

# unit-name.c: VALID_CHARS, plus "@" which only separates prefix from instance.
_VALID_NAME_CHARS = re.compile(r"[0-9A-Za-z:\-_.\\]+")
_VALID_INSTANCE_CHARS = re.compile(r"[0-9A-Za-z:\-_.\\@]+")


@attrs.frozen
class UnitName:
    """A unit name split into its parts.

    ``foo.service`` has instance None; the template ``foo@.service`` has instance ``""``; the
    instance ``foo@bar.service`` has instance ``"bar"``.
    """

    prefix: str
    instance: str | None
    suffix: str

    @property
    def name(self) -> str:
        if self.instance is None:
            return f"{self.prefix}.{self.suffix}"
        return f"{self.prefix}@{self.instance}.{self.suffix}"

    @property
    def stem(self) -> str:
        """The name without its type suffix (``%N``)."""
        return self.name.rsplit(".", 1)[0]

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    @property
    def template(self) -> UnitName:
        """The template this is an instance of (itself for templates; plain names have none)."""
        if self.instance is None:
            msg = f"{self.name!r} is not a template or an instance"
            raise ValueError(msg)
        return attrs.evolve(self, instance="")

    def with_suffix(self, suffix: str) -> UnitName:
        return attrs.evolve(self, suffix=suffix)

    def with_instance(self, instance: str | None) -> UnitName:
        return attrs.evolve(self, instance=instance)

    def __str__(self) -> str:
        return self.name


def parse_unit_name(text: str) -> UnitName:
    """Split and validate a unit name, as systemd's ``unit_name_is_valid`` does.

    Raises:
        ValueError: with the reason, when ``text`` is not a valid ``.service`` or ``.socket`` name.
    """
    if len(text) > UNIT_NAME_MAX:
        msg = f"unit name must be at most {UNIT_NAME_MAX} characters (got {len(text)})"
        raise ValueError(msg)
    stem, dot, suffix = text.rpartition(".")
    if not dot or suffix not in UNIT_SUFFIXES:
        msg = f"unit name must end in .service or .socket (got {text!r})"
        raise ValueError(msg)
    prefix, at, instance = stem.partition("@")
    if not prefix:
        msg = f"unit name must have a prefix before '@' or '.' (got {text!r})"
        raise ValueError(msg)
    # unit_name_is_valid(): "@" may appear again inside the instance ("foo@a@b.service").
    for part, what, valid in (
        (prefix, "prefix", _VALID_NAME_CHARS),
        (instance, "instance", _VALID_INSTANCE_CHARS),
    ):
        if part and not valid.fullmatch(part):
            bad = next(c for c in part if not valid.fullmatch(c))
            msg = f"unit name {what} must not contain {bad!r} (got {text!r})"
            raise ValueError(msg)
    return UnitName(prefix=prefix, instance=instance if at else None, suffix=suffix)


def escape_unit_name_part(text: str) -> str:
    """``systemd-escape``: make any string a valid instance name (``/`` becomes ``-``).

    Rendered names round-trip through :func:`unescape_unit_name_part`.
    """
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and (ch.isalnum() or ch in ":_")) or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def unescape_unit_name_part(text: str) -> str:
    """systemd's ``unit_name_unescape`` (``%I``, ``%P``): ``-`` is ``/``, ``\\xNN`` a byte.

    Raises:
        ValueError: on a backslash that does not start ``\\xNN``, or bytes that are not UTF-8;
            systemd refuses both ("Failed to resolve unit specifiers").
    """
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "-":
            out += b"/"
            i += 1
        elif ch == "\\":
            if text[i + 1 : i + 2] != "x" or not re.fullmatch(
                r"[0-9a-fA-F]{2}", text[i + 2 : i + 4]
            ):
                msg = f"invalid escape in unit name {text!r} (only \\xNN is allowed)"
                raise ValueError(msg)
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += ch.encode()
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"unit name {text!r} unescapes to bytes that are not UTF-8"
        raise ValueError(msg) from None


# ---------------------------------------------------------------------------------------------
# Lines


@attrs.frozen
class Assignment:
    """One ``Key=Value`` line, with where it came from."""

    section: str
    key: str
    value: str
    path: str
    line: int


@attrs.frozen
class UnitText:
    """What one file says: its assignments in order, and every problem found on the way."""

    path: str
    assignments: tuple[Assignment, ...]
    problems: tuple[Problem, ...]


def _problem(path: str, line: int | None, reason: str, *, warning: bool = False) -> Problem:
    severity = Severity.WARNING if warning else Severity.ERROR
    return Problem(path=path, line=line, key=None, value=None, reason=reason, severity=severity)


def decode_unit_bytes(data: bytes, path: str) -> tuple[str | None, Problem | None]:
    """Decode a unit file as UTF-8; a file that is not is refused whole, naming the bad line."""
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        return None, _problem(path, line, "file contains a NUL byte")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, _problem(path, line, f"file is not valid UTF-8 (byte 0x{data[e.start]:02x})")


def parse_unit_text(text: str, path: str, *, unit_type: str) -> UnitText:
    """Parse one unit file or drop-in into assignments (systemd's ``config_parse``).

    Args:
        text: the file's contents.
        path: the file's path, as it is to appear in messages.
        unit_type: ``"service"`` or ``"socket"``: decides which sections are known.

    Returns:
        The assignments in file order, and the problems (errors and warnings) in line order.
    """
    known = KNOWN_SECTIONS[unit_type]
    assignments: list[Assignment] = []
    problems: list[Problem] = []
    section: str | None = None
    ignoring_section = False
    pending: list[str] = []  # pieces of a line continued with a trailing backslash
    pending_length = 0

    lines = _LINE_END.split(text.removeprefix("\ufeff"))  # systemd skips a byte order mark
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if raw.strip(WHITESPACE)[:1] in ("#", ";"):
            # Comment lines are dropped before continuations are looked at, as in systemd: a
            # comment ending in a backslash continues nothing, and one inside a continuation is
            # skipped.
            continue
        trailing = len(raw) - len(raw.rstrip("\\"))
        if trailing % 2 == 1:  # an odd run of backslashes: the last one escapes the newline
            pending.append(raw[:-1])
            pending_length += len(raw)
            if pending_length > LONG_LINE_MAX:
                problems.append(_problem(path, number, "line is too long"))
                pending.clear()
                pending_length = 0
            continue
        pending.append(raw)
        # systemd joins a continued line with a space in place of the backslash, and names the
        # last of its lines in messages.
        logical = " ".join(pending).strip(WHITESPACE)
        pending.clear()
        pending_length = 0
        start = number
        if len(logical) > LONG_LINE_MAX:
            problems.append(_problem(path, start, "line is too long"))
            continue
        if not logical or logical[0] in "#;":
            continue
        if logical.startswith("["):
            if not logical.endswith("]") or len(logical) < 3 or "]" in logical[1:-1]:
                problems.append(_problem(path, start, f"invalid section header {logical!r}"))
                section, ignoring_section = None, True
                continue
            section = logical[1:-1]
            ignoring_section = False
            if _CONTROL.search(section):
                problems.append(_problem(path, start, f"invalid section header {logical!r}"))
                section, ignoring_section = None, True
                continue
            if section not in known:
                ignoring_section = True
                if not section.startswith("X-"):
                    # systemd: "Unknown section '%s'. Ignoring."
                    problems.append(
                        _problem(
                            path, start, f"Unknown section '{section}'. Ignoring.", warning=True
                        )
                    )
            continue
        if ignoring_section:
            continue
        if section is None:
            problems.append(_problem(path, start, "assignment outside of any section"))
            continue
        key, eq, value = logical.partition("=")
        key = key.strip(WHITESPACE)
        if not eq:
            problems.append(_problem(path, start, f"missing '=' in {logical!r}"))
            continue
        if not key:
            problems.append(_problem(path, start, f"missing key name in {logical!r}"))
            continue
        if _CONTROL.search(key):
            problems.append(_problem(path, start, f"invalid key name {key!r}"))
            continue
        assignments.append(Assignment(section, key, value.strip(WHITESPACE), path, start))
    if pending:
        # A backslash on the last line: systemd takes what it has; activator refuses it.
        problems.append(_problem(path, len(lines), "file ends inside a continued line"))
    return UnitText(path=path, assignments=tuple(assignments), problems=tuple(problems))


# ---------------------------------------------------------------------------------------------
# Which files make up a unit


@attrs.frozen
class UnitDirectory:
    """A snapshot of one units directory: its unit files and its drop-in directories.

    Attributes:
        path: the directory.
        files: names of the unit files in it (``foo.service``, ``bar@.socket``).
        dropins: for each ``NAME.d`` directory in it, the ``*.conf`` names inside.
        masked: unit files and drop-ins (``NAME.d/x.conf``) that are symlinks to /dev/null:
            systemd's masking, which hides that name in every later directory too.
    """

    path: str
    files: frozenset[str]
    dropins: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    masked: frozenset[str] = frozenset()


@attrs.frozen
class UnitFiles:
    """The files that make up one unit, in the order they apply: fragment first, then drop-ins."""

    fragment: str
    dropins: tuple[str, ...]


def _dropin_names(name: UnitName) -> list[str]:
    """The unit-specific ``.d`` directory names of a unit, most specific first.

    systemd 252's ``unit_file_find_dirs``, step by step: the unit's own ``.d``, then (for an
    instance) everything of its template, then everything of the unit named by the prefix cut
    after its last inner dash (``foo-bar-baz`` -> ``foo-bar-``; ``foo-bar@x`` -> ``foo-@x``),
    recursively. A leading dash cuts nothing. The type-wide ``service.d`` is not here: it comes
    after these in every directory (see :func:`resolve_unit_files`).
    """
    out: list[str] = []

    def visit(unit: UnitName) -> None:
        out.append(f"{unit.name}.d")
        if unit.is_instance:
            visit(unit.template)
        prefix, chopped = unit.prefix, False
        while True:
            dash = prefix.rfind("-")
            if dash <= 0:
                return
            if dash + 1 < len(prefix) or chopped:
                prefix = prefix[: dash + 1]
                break
            prefix, chopped = prefix[:dash], True  # a trailing dash is cut once, then looked past
        visit(UnitName(prefix, unit.instance or None, unit.suffix))

    visit(name)
    return list(dict.fromkeys(out))


def _find_fragment(name: UnitName, directories: Sequence[UnitDirectory]) -> tuple[str | None, bool]:
    """The fragment path of ``name`` and whether it is masked, as systemd looks them up.

    The first directory holding the name decides; an instance without a file (or mask) of its
    own falls back to its template. A mask seen first hides every later file of that name.
    """
    candidates = [name.name, *([name.template.name] if name.is_instance else [])]
    for candidate in candidates:
        for directory in directories:
            if candidate in directory.masked:
                return None, True
            if candidate in directory.files:
                return f"{directory.path}/{candidate}", False
    return None, False


def resolve_unit_files(name: UnitName, directories: Sequence[UnitDirectory]) -> UnitFiles | None:
    """Decide which fragment and drop-ins make up ``name``, as systemd does.

    The fragment comes from :func:`_find_fragment`. Drop-ins are all ``*.conf`` files of the
    unit-specific ``.d`` directories (see ``_dropin_names``) in every directory, then of the
    type-wide ``service.d``/``socket.d`` in every directory; of several files with the same name
    the first in that order wins (a mask there hides it); the survivors apply sorted by name.

    Returns:
        None when no directory holds a fragment for the unit, or the unit is masked.
    """
    fragment, _ = _find_fragment(name, directories)
    if fragment is None:
        return None
    chosen: dict[str, str | None] = {}  # None: masked by a /dev/null symlink of that name
    # systemd lists the unit-specific directories of every units directory first, then the
    # type-wide ones: of two files with one name, the first in that list wins.
    order = [(d, dname) for d in directories for dname in _dropin_names(name)]
    order += [(d, f"{name.suffix}.d") for d in directories]
    for directory, dname in order:
        for conf in directory.dropins.get(dname, frozenset()):
            masked = f"{dname}/{conf}" in directory.masked
            chosen.setdefault(conf, None if masked else f"{directory.path}/{dname}/{conf}")
    dropins = tuple(path for _, path in sorted(chosen.items()) if path is not None)
    return UnitFiles(fragment=fragment, dropins=dropins)


def is_masked(name: UnitName, directories: Sequence[UnitDirectory]) -> bool:
    """Whether ``name`` (or, for an instance without a file of its own, its template) is masked
    where it is first found."""
    return _find_fragment(name, directories)[1]


# ---------------------------------------------------------------------------------------------
# Specifiers

#: The fixed directories of the system manager, as systemd resolves them for system units.
SYSTEM_DIRECTORIES: Mapping[str, str] = {
    "t": "/run",
    "S": "/var/lib",
    "C": "/var/cache",
    "L": "/var/log",
}

#: Every specifier activator resolves, for messages and docs.
KNOWN_SPECIFIERS = "%i %I %n %N %p %P %t %S %C %L %%"


def specifier_table(name: UnitName) -> Mapping[str, Callable[[], str]]:
    """What each specifier of ``KNOWN_SPECIFIERS`` means for unit ``name``, computed on use (an
    instance that cannot be unescaped fails only the values that use ``%I``)."""
    instance = name.instance or ""
    return {
        "i": lambda: instance,
        "I": lambda: unescape_unit_name_part(instance),
        "n": lambda: name.name,
        "N": lambda: name.stem,
        "p": lambda: name.prefix,
        "P": lambda: unescape_unit_name_part(name.prefix),
        "%": lambda: "%",
        **{k: functools.partial(str, path) for k, path in SYSTEM_DIRECTORIES.items()},
    }


def expand_specifiers(text: str, name: UnitName) -> str:
    """Resolve ``%`` specifiers in one value for unit ``name`` (systemd's ``specifier_printf``).

    Raises:
        ValueError: on a specifier activator does not know, or a lone ``%`` at the end. systemd
            would leave some unknown specifiers in place; failing closed is safer for values that
            become paths and user names.
    """
    if "%" not in text:
        return text
    table = specifier_table(name)
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        spec = text[i + 1 : i + 2]
        if not spec:
            msg = "value ends in a lone '%' (write '%%' for a percent sign)"
            raise ValueError(msg)
        if spec not in table:
            msg = f"unknown specifier '%{spec}' (known: {KNOWN_SPECIFIERS})"
            raise ValueError(msg)
        out.append(table[spec]())
        i += 2
    return "".join(out)
