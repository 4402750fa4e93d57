"""Paths: checks of absolute and relative paths, and the path lists of the sandbox
(``ReadWritePaths=``, ``BindPaths=``, ``TemporaryFileSystem=`` and their siblings).

Rule 1: a path is accepted only in canonical form: absolute or relative as asked, no ``.`` or
``..`` component, no ``//``, no control character, within PATH_MAX and NAME_MAX bytes. It is never
simplified, so the path that was checked is the path that gets mounted.

Rule 2: nothing here looks at the file system. The ``-`` prefix (ignore a missing path) is recorded
in the entry for the caller to act on.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from ._common import _CONTROL, _WS, _encode

# --- Paths --------------------------------------------------------------------------------------

_PATH_MAX: Final = 4095  # PATH_MAX - 1, as path_is_valid()
_NAME_MAX: Final = 255


def _check_path_text(path: str) -> None:
    if _CONTROL.search(path):
        msg = "must not contain control characters"
        raise ValueError(msg)
    size = len(_encode(path))
    if size > _PATH_MAX or any(len(_encode(part)) > _NAME_MAX for part in path.split("/")):
        msg = f"must be at most {_PATH_MAX} bytes, each component at most {_NAME_MAX}"
        raise ValueError(msg)


def validate_absolute_path(word: str) -> str:
    """Check an absolute, normalised path, as path_is_absolute() and path_is_normalized().

    No ``.`` or ``..`` components and no ``//``; a trailing ``/`` is allowed, as systemd.
    """
    if not word.startswith("/"):
        msg = f"must be an absolute path (got relative path {word!r})"
        raise ValueError(msg)
    _check_path_text(word)
    parts = word.strip("/").split("/")
    if "//" in word or "." in parts or ".." in parts:
        bad = "//" if "//" in word else "." if "." in parts else ".."
        msg = f"must be normalised (no '.' or '..' components, no '//'; got {bad!r})"
        raise ValueError(msg)
    return word


def validate_relative_directory(word: str) -> str:
    """Check a ``StateDirectory=``-style name: relative, normalised, not under ``private``.

    Stricter than config_parse_exec_directories(), which simplifies ``a//b/`` silently: we refuse
    anything that is not already in canonical form. The ``a:b`` symlink form of systemd 250+ is
    refused too.
    """
    if ":" in word:
        msg = f"symlink form {word!r} is not supported"
        raise ValueError(msg)
    return validate_resolved_directory(word)


def validate_resolved_directory(word: str) -> str:
    """Check a ``StateDirectory=``-style name whose specifiers are resolved: as
    :func:`validate_relative_directory`, but a colon is part of the name.

    systemd splits a word at ``:`` (``SOURCE[:DESTINATION]``) *before* it resolves the
    specifiers of each part, so a colon an instance name brings (``%i`` of an Accept=yes
    connection's ``1-127.0.0.1:80-127.0.0.1:4711``) names no symlink; the caller refuses a
    colon of the word as written.
    """
    if not word:
        msg = "must not be empty"
        raise ValueError(msg)
    if word.startswith("/"):
        msg = f"must be relative (got absolute path {word!r})"
        raise ValueError(msg)
    _check_path_text(word)
    parts = word.split("/")
    for bad in ("..", "."):
        if bad in parts:
            msg = f"must not contain {bad!r}"
            raise ValueError(msg)
    if "" in parts:
        msg = "must not contain '//' or end with '/'"
        raise ValueError(msg)
    if parts[0] == "private":  # systemd keeps DynamicUser= state in .../private/
        msg = "must not be 'private' or below it"
        raise ValueError(msg)
    return word


@attrs.frozen
class PathEntry:
    """A word of ``ReadWritePaths=``, ``ReadOnlyPaths=`` or ``InaccessiblePaths=``."""

    path: str
    ignore_missing: bool  # the "-" prefix


def parse_path_entry(word: str) -> PathEntry:
    """Parse ``[-]PATH`` as config_parse_namespace_path_strv(); the ``+`` prefix is refused."""
    ignore_missing = word.startswith("-")
    path = word.removeprefix("-")
    if path.startswith("+"):
        msg = "'+' prefix needs RootDirectory=, which activator does not support"
        raise ValueError(msg)
    return PathEntry(validate_absolute_path(path), ignore_missing)


def render_path_entry(value: PathEntry) -> str:
    """Render ``[-]PATH``, unquoted (see :func:`quote_word`)."""
    return ("-" if value.ignore_missing else "") + value.path


@attrs.frozen
class BindEntry:
    """An entry of ``BindPaths=`` or ``BindReadOnlyPaths=``."""

    source: str
    destination: str
    ignore_missing: bool  # the "-" prefix
    recursive: bool  # rbind (the default) or norbind


def parse_bind_paths(text: str) -> tuple[BindEntry, ...]:
    """Parse a whole ``BindPaths=`` value as config_parse_bind_paths() in load-fragment.c.

    Entries are ``[-]SRC[:DST[:OPTIONS]]`` separated by whitespace, OPTIONS ``rbind`` (the default)
    or ``norbind``. Quotes group; the only escapes are ``\\:``, ``\\\\`` and a backslash before
    whitespace (EXTRACT_UNESCAPE_SEPARATORS). Prefer this to :func:`split_words`, whose C escapes
    refuse ``\\:``.
    """
    return tuple(map(_bind_entry, _scan_bind(text, split=True)))


def parse_bind_entry(word: str) -> BindEntry:
    """Parse one entry of :func:`parse_bind_paths`; whitespace in ``word`` is part of a path."""
    entries = _scan_bind(word, split=False)
    if not entries:
        msg = "must not be empty"
        raise ValueError(msg)
    return _bind_entry(entries[0])


def _scan_bind(text: str, *, split: bool) -> list[list[str]]:
    """The entries of ``text``, each a list of its ':'-separated fields, unquoted and unescaped."""
    entries: list[list[str]] = []
    fields: list[str] = []
    field: list[str] = []
    quote, started, pos = "", False, 0  # started: this entry has begun, if only with ""
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            escaped = text[pos + 1 : pos + 2]
            if not escaped or escaped not in ":\\" + _WS:
                msg = f"unknown escape '\\{escaped}' (only '\\:', '\\\\' and '\\ ' are allowed)"
                raise ValueError(msg)
            field.append(escaped)
            pos, started = pos + 2, True
            continue
        if char in _WS and not quote and split:
            if started:
                entries.append([*fields, "".join(field)])
            fields, field, started = [], [], False
        elif char == quote:
            quote = ""
        elif not quote and char in "'\"":
            quote = char
        elif not quote and char == ":":
            fields.append("".join(field))
            field = []
        else:
            field.append(char)
        started = started or char not in _WS or bool(quote) or not split
        pos += 1
    if quote:
        msg = f"unterminated {quote} quote"
        raise ValueError(msg)
    if started:
        entries.append([*fields, "".join(field)])
    return entries


def _bind_entry(fields: list[str]) -> BindEntry:
    if len(fields) > 3:
        msg = "must be [-]SOURCE[:DESTINATION[:OPTIONS]] (too many ':')"
        raise ValueError(msg)
    source = fields[0].removeprefix("-")
    destination = fields[1] if len(fields) > 1 else source
    options = fields[2] if len(fields) > 2 else ""
    if options not in ("", "rbind", "norbind"):
        msg = f"bind option must be 'rbind' or 'norbind' (got {options!r})"
        raise ValueError(msg)
    return BindEntry(
        validate_absolute_path(source),
        validate_absolute_path(destination),
        fields[0].startswith("-"),
        options != "norbind",
    )


def _escape_bind_path(path: str) -> str:
    # Colons and backslashes take a backslash; white space (which a line end would trim) and
    # quote characters are quoted.
    return "".join(
        "\\" + c if c in ":\\" else f"'{c}'" if c in _WS + '"' else '"\'"' if c == "'" else c
        for c in path
    )


def render_bind_entry(value: BindEntry) -> str:
    """Render ``[-]SRC[:DST[:norbind]]`` with the escapes :func:`parse_bind_entry` reads."""
    text = ("-" if value.ignore_missing else "") + _escape_bind_path(value.source)
    if value.destination != value.source or not value.recursive:
        text += ":" + _escape_bind_path(value.destination)
    return text if value.recursive else text + ":norbind"


@attrs.frozen
class TmpfsEntry:
    """A word of ``TemporaryFileSystem=``: where, and extra tmpfs mount options ("" for none)."""

    path: str
    options: str


# A fail-closed subset of tmpfs(5) options; "suid" and "dev" are refused because activator always
# mounts nosuid,nodev. Anything else (huge=, mpol=, atime flags...) is refused until needed.
_TMPFS_FLAGS: Final = frozenset({"ro", "rw", "nosuid", "nodev", "noexec", "exec"})
_TMPFS_VALUES: Final = {
    "size": r"[0-9]+[kKmMgGtTpPeE%]?",
    "nr_inodes": r"[0-9]+[kKmMgGtTpPeE]?",
    "mode": r"[0-7]{1,4}",
    "uid": r"[0-9]{1,10}",
    "gid": r"[0-9]{1,10}",
}


def parse_tmpfs_entry(word: str) -> TmpfsEntry:
    """Parse ``PATH[:OPTIONS]`` as config_parse_temporary_filesystems(), with our option subset.

    Options: ``ro rw nosuid nodev noexec exec size= nr_inodes= mode= uid= gid=``.
    """
    path, _, options = word.partition(":")
    for option in options.split(",") if options else ():
        key, equals, value = option.partition("=")
        if option in ("suid", "dev"):
            msg = f"mount option {option!r} is refused (activator mounts tmpfs nosuid,nodev)"
            raise ValueError(msg)
        if equals and key in _TMPFS_VALUES:
            if re.fullmatch(_TMPFS_VALUES[key], value) is None or (
                key in ("uid", "gid") and int(value) > 2**32 - 2
            ):
                msg = f"mount option {key}= has a bad value (got {value!r})"
                raise ValueError(msg)
        elif equals or option not in _TMPFS_FLAGS:
            known = ", ".join([*sorted(_TMPFS_FLAGS), *(f"{k}=" for k in _TMPFS_VALUES)])
            msg = f"mount option must be one of {known} (got {option!r})"
            raise ValueError(msg)
    return TmpfsEntry(validate_absolute_path(path), options)


def render_tmpfs_entry(value: TmpfsEntry) -> str:
    """Render ``PATH[:OPTIONS]``, unquoted (see :func:`quote_word`)."""
    return f"{value.path}:{value.options}" if value.options else value.path
