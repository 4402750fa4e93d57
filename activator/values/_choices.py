"""Values that are one word out of a fixed set: the enumerations (``Type=``, ``Restart=``,
``ProtectSystem=``...) and the standard streams (:class:`IOSpec`).

Rule 1: the ``.value`` of each enum member is systemd's spelling, so rendering is ``.value``, and
matching is exact and case-sensitive, as in systemd's string tables.

Rule 2: a word that systemd knows but activator cannot honour is refused with "not supported by
activator", never mapped to something close. Where systemd takes a boolean for a member, the
words of :func:`parse_boolean` are tried first.
"""

from __future__ import annotations

import enum
from typing import Final, TypeVar

import attrs

from ._numbers import _boolean_or_none
from ._paths import validate_absolute_path

# --- Enumerations -------------------------------------------------------------------------------
# Each .value is systemd's spelling, so render is ``.value``.


class ServiceType(enum.Enum):
    """``Type=``; forking, dbus and idle are not supported by activator."""

    SIMPLE = "simple"
    EXEC = "exec"
    ONESHOT = "oneshot"
    NOTIFY = "notify"


class RestartPolicy(enum.Enum):
    """``Restart=``."""

    NO = "no"
    ON_SUCCESS = "on-success"
    ON_FAILURE = "on-failure"
    ON_ABNORMAL = "on-abnormal"
    ON_WATCHDOG = "on-watchdog"
    ON_ABORT = "on-abort"
    ALWAYS = "always"


class ProtectSystem(enum.Enum):
    """``ProtectSystem=``; a boolean means yes or no."""

    NO = "no"
    YES = "yes"
    FULL = "full"
    STRICT = "strict"


class ProtectHome(enum.Enum):
    """``ProtectHome=``; a boolean means yes or no."""

    NO = "no"
    YES = "yes"
    READ_ONLY = "read-only"
    TMPFS = "tmpfs"


class BindIPv6Only(enum.Enum):
    """``BindIPv6Only=``; a boolean means ipv6-only (true) or both (false), as systemd."""

    DEFAULT = "default"
    BOTH = "both"
    IPV6_ONLY = "ipv6-only"


class RuntimeDirectoryPreserve(enum.Enum):
    """``RuntimeDirectoryPreserve=``; a boolean means yes or no."""

    NO = "no"
    YES = "yes"
    RESTART = "restart"


_E = TypeVar("_E", bound=enum.Enum)


def _parse_choice(
    cls: type[_E], text: str, *, boolean: tuple[_E, _E] | None = None, unsupported: str = ""
) -> _E:
    # DEFINE_STRING_TABLE_LOOKUP_WITH_BOOLEAN tries parse_boolean() first; the results agree.
    flag = _boolean_or_none(text) if boolean is not None else None
    if boolean is not None and flag is not None:
        return boolean[1] if flag else boolean[0]
    for member in cls:
        if member.value == text:
            return member
    choices = ", ".join(repr(m.value) for m in cls)
    if text in unsupported.split():
        msg = f"not supported by activator (supported: {choices})"
    else:
        msg = f"must be one of {choices} (got {text!r})"
    raise ValueError(msg)


def parse_service_type(text: str) -> ServiceType:
    """Parse ``Type=``."""
    return _parse_choice(ServiceType, text, unsupported="forking dbus idle notify-reload")


def parse_restart_policy(text: str) -> RestartPolicy:
    """Parse ``Restart=``."""
    return _parse_choice(RestartPolicy, text)


def parse_protect_system(text: str) -> ProtectSystem:
    """Parse ``ProtectSystem=``."""
    return _parse_choice(ProtectSystem, text, boolean=(ProtectSystem.NO, ProtectSystem.YES))


def parse_protect_home(text: str) -> ProtectHome:
    """Parse ``ProtectHome=``."""
    return _parse_choice(ProtectHome, text, boolean=(ProtectHome.NO, ProtectHome.YES))


def parse_bind_ipv6_only(text: str) -> BindIPv6Only:
    """Parse ``BindIPv6Only=`` (socket_address_bind_ipv6_only_or_bool_from_string())."""
    return _parse_choice(BindIPv6Only, text, boolean=(BindIPv6Only.BOTH, BindIPv6Only.IPV6_ONLY))


def parse_runtime_directory_preserve(text: str) -> RuntimeDirectoryPreserve:
    """Parse ``RuntimeDirectoryPreserve=``."""
    no, yes = RuntimeDirectoryPreserve.NO, RuntimeDirectoryPreserve.YES
    return _parse_choice(RuntimeDirectoryPreserve, text, boolean=(no, yes))


@attrs.frozen
class IOSpec:
    """A standard stream: ``kind`` is systemd's word (``null``, ``journal+console``, ``file``...);
    ``path`` is the absolute path of ``file:``, ``append:`` and ``truncate:``, else None."""

    kind: str
    path: str | None = None


# exec_input_from_string() and exec_output_from_string() in src/core/execute.c, less what
# activator cannot do: "data" (StandardInputData=) and "fd:NAME" (FileDescriptorName=).
_INPUT_KINDS: Final = ("null", "tty", "tty-force", "tty-fail", "socket")
_OUTPUT_KINDS: Final = (
    "inherit", "null", "tty", "journal", "kmsg", "journal+console", "kmsg+console", "socket",
)  # fmt: skip


def _parse_io(text: str, kinds: tuple[str, ...], path_kinds: tuple[str, ...]) -> IOSpec:
    kind, colon, path = text.partition(":")
    if kind in (path_kinds if colon else kinds):
        return IOSpec(kind, validate_absolute_path(path) if colon else None)
    choices = ", ".join([*map(repr, kinds), *(f"'{k}:PATH'" for k in path_kinds)])
    if kind in ("fd", "data"):
        msg = f"not supported by activator (supported: {choices})"
    else:
        msg = f"must be one of {choices} (got {text!r})"
    raise ValueError(msg)


def parse_standard_input(text: str) -> IOSpec:
    """Parse ``StandardInput=``: null, tty, tty-force, tty-fail, socket or file:PATH."""
    return _parse_io(text, _INPUT_KINDS, ("file",))


def parse_standard_output(text: str) -> IOSpec:
    """Parse ``StandardOutput=`` or ``StandardError=``, including file:, append:, truncate:."""
    return _parse_io(text, _OUTPUT_KINDS, ("file", "append", "truncate"))


def render_io_spec(value: IOSpec) -> str:
    """Render ``kind`` or ``kind:PATH``."""
    return value.kind if value.path is None else f"{value.kind}:{value.path}"
