"""Building a model from a unit's assignments: apply the table, then the cross-field rules.

Rule 1: every problem is collected, none stops the reading: the caller gets them all at once.
Rule 2: the rules that tie fields together (DynamicUser= implications, systemd's stdio fix-up,
the Accept= dependent defaults) run after all assignments, in ``_finish_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from activator import values as v
from activator.errors import ConfigError, Problem, Severity
from activator.model._directives import (
    SERVICE_DIRECTIVES,
    SOCKET_DIRECTIVES,
    UNSUPPORTED_SECURITY,
    Directive,
)
from activator.model._render import render_scalar
from activator.model._units import ExecCommand, Listen, ServiceUnit, SocketUnit
from activator.units import Assignment, UnitName, UnitText

# ---------------------------------------------------------------------------------------------
# Building


@attrs.define
class _Builder:
    name: UnitName
    texts: Sequence[UnitText]
    directives: Mapping[tuple[str, str], Directive]
    problems: list[Problem] = attrs.field(factory=list)
    values: dict[str, Any] = attrs.field(factory=dict)
    #: Where each field was last set, for cross-field messages.
    origin: dict[str, Assignment] = attrs.field(factory=dict)
    lists: dict[str, list[Any]] = attrs.field(factory=dict)
    #: For list fields, the assignment of each item, for messages about the n-th item.
    list_origin: dict[str, list[Assignment]] = attrs.field(factory=dict)
    #: Fields with a refused line: "missing" errors about them would only repeat that error.
    refused: set[str] = attrs.field(factory=set)

    def error(self, a: Assignment | None, reason: str, *, warning: bool = False) -> None:
        severity = Severity.WARNING if warning else Severity.ERROR
        if a is None:
            path = self.texts[0].path if self.texts else self.name.name
            self.problems.append(Problem(path, None, None, None, reason, severity))
        else:
            self.problems.append(Problem(a.path, a.line, a.key, a.value, reason, severity))

    def apply(self) -> None:
        for text in self.texts:
            self.problems.extend(text.problems)
            for a in text.assignments:
                self.assign(a)

    def assign(self, a: Assignment) -> None:
        d = self.directives.get((a.section, a.key))
        if d is None:
            self.unknown(a)
            return
        if d.is_list and a.value == "":
            self.lists[d.field] = []
            self.list_origin[d.field] = []
            self.origin[d.field] = a
            return
        if d.deprecated_for is not None:
            reason = f"{d.key}= is deprecated, please use {d.deprecated_for}= instead"
            self.error(a, reason, warning=True)
        if not d.is_list and a.value == "" and d.empty != "value":
            if d.empty == "reset":
                # These keys go back to their default on an empty value, as in systemd.
                self.values.pop(d.field, None)
                self.origin.pop(d.field, None)
            else:
                self.error(
                    a,
                    "must not be empty (systemd would ignore the line and keep an earlier "
                    "value; remove the line, or give the value)",
                )
            return
        try:
            value = d.parse(a.value, self.name)
        except ValueError as e:
            self.error(a, str(e))
            self.refused.add(d.field)
            return
        self.origin[d.field] = a
        if d.is_list:
            self.lists.setdefault(d.field, []).extend(value)
            self.list_origin.setdefault(d.field, []).extend([a] * len(value))
        else:
            self.values[d.field] = value

    def unknown(self, a: Assignment) -> None:
        if a.key.startswith("X-"):
            return
        if a.key in UNSUPPORTED_SECURITY:
            self.error(
                a,
                f"{a.key}= restricts the process (sandboxing, identity or a resource limit) and "
                "activator does not implement it; refusing to run the unit with less isolation "
                "than it asks for",
            )
            return
        # systemd: "Unknown key name '%s' in section '%s', ignoring."
        self.problems.append(
            Problem(
                a.path,
                a.line,
                None,
                None,
                f"Unknown key name '{a.key}' in section '{a.section}', ignoring.",
                Severity.WARNING,
            )
        )

    def fields(self) -> dict[str, Any]:
        out = dict(self.values)
        out.update({k: tuple(items) for k, items in self.lists.items()})
        return out


def _check_errors(b: _Builder) -> list[Problem]:
    errors = [p for p in b.problems if p.is_error]
    if errors:
        raise ConfigError(sorted(b.problems, key=Problem.sort_key))
    return sorted(b.problems, key=Problem.sort_key)


_U = TypeVar("_U", ServiceUnit, SocketUnit)


def _build(
    cls: type[_U],
    directives: Mapping[tuple[str, str], Directive],
    finish: Callable[[_Builder, dict[str, Any]], None],
    name: UnitName,
    texts: Sequence[UnitText],
) -> tuple[_U, list[Problem]]:
    b = _Builder(name, texts, directives)
    b.apply()
    fields = b.fields()
    finish(b, fields)
    warnings = _check_errors(b)
    return attrs.evolve(cls(name=name), **fields), warnings


def build_service(name: UnitName, texts: Sequence[UnitText]) -> tuple[ServiceUnit, list[Problem]]:
    """Build and validate a service from its files (fragment first, then drop-ins).

    Args:
        name: the unit; for an instance its own name (``foo@bar.service``), which ``%i`` is from.
        texts: the parsed files, in the order they apply.

    Returns:
        The unit and the warnings about it.

    Raises:
        ConfigError: with every error (and warning) found, in file and line order.
    """
    return _build(ServiceUnit, SERVICE_DIRECTIVES, _finish_service, name, texts)


def _finish_service(b: _Builder, f: dict[str, Any]) -> None:
    exec_start: tuple[ExecCommand, ...] = f.get("exec_start", ())
    service_type = f.get("type", v.ServiceType.SIMPLE)
    if not exec_start and "exec_start" not in b.refused:
        b.error(None, "Service has no ExecStart= setting. Refusing.")
    elif len(exec_start) > 1 and service_type is not v.ServiceType.ONESHOT:
        second = b.list_origin["exec_start"][1]
        b.error(
            second,
            "Service has more than one ExecStart= setting, which is only allowed for "
            "Type=oneshot services. Refusing.",
        )
    # Later Environment= assignments of a variable override earlier ones (strv_env_merge).
    if "environment" in f:
        f["environment"] = tuple(dict(f["environment"]).items())
    _fix_stdio(f)
    if f.get("dynamic_user"):
        user = f.get("user")
        if user is not None and user.isdigit():
            b.error(b.origin["user"], "DynamicUser=yes needs a user name, not a numeric UID")
        _apply_dynamic_user(b, f)


def _fix_stdio(f: dict[str, Any]) -> None:
    """systemd's ``service_fix_stdio``: resolve ``inherit`` against the standard input.

    A bidirectional input (a socket, a TTY) is shared by stdout and stderr; otherwise an inherited
    stdout goes to the journal (activator's log) and stderr follows stdout.
    """
    stdin = f.get("standard_input", v.IOSpec("null"))
    stdout = f.setdefault("standard_output", v.IOSpec("inherit"))
    stderr = f.setdefault("standard_error", v.IOSpec("inherit"))
    if stdin.kind in ("tty", "tty-force", "tty-fail", "socket"):
        return
    if stdout.kind == "inherit":
        f["standard_output"] = v.IOSpec("journal")
    del stderr  # stderr=inherit means "as stdout", which is now never "inherit" itself


#: What DynamicUser=yes forces (systemd's ``unit_patch_contexts``): a UID that is released when
#: the service stops must not leave files or IPC objects behind, nor gain privileges.
DYNAMIC_USER_IMPLIES: Mapping[str, Any] = {
    "private_tmp": True,
    "remove_ipc": True,
    "protect_system": v.ProtectSystem.STRICT,
    "no_new_privileges": True,
    "restrict_suid_sgid": True,
}


def _apply_dynamic_user(b: _Builder, f: dict[str, Any]) -> None:
    for field, forced in DYNAMIC_USER_IMPLIES.items():
        if field in f and f[field] != forced:
            a = b.origin[field]
            b.error(
                a,
                f"overridden: DynamicUser=yes implies {a.key}={render_scalar(forced)}",
                warning=True,
            )
        f[field] = forced
    if f.get("protect_home", v.ProtectHome.NO) is v.ProtectHome.NO:
        f["protect_home"] = v.ProtectHome.READ_ONLY


def build_socket(name: UnitName, texts: Sequence[UnitText]) -> tuple[SocketUnit, list[Problem]]:
    """Build and validate a socket unit; see :func:`build_service` for the contract."""
    return _build(SocketUnit, SOCKET_DIRECTIVES, _finish_socket, name, texts)


def _finish_socket(b: _Builder, f: dict[str, Any]) -> None:
    listen: tuple[Listen, ...] = f.get("listen", ())
    accept = f.get("accept", False)
    if not listen and "listen" not in b.refused:
        b.error(None, "Unit has no Listen setting (ListenStream=, ListenDatagram=, ...). Refusing.")
    if accept:
        for item, a in zip(listen, b.list_origin.get("listen", []), strict=True):
            if item.kind is v.SocketKind.DATAGRAM:
                b.error(
                    a,
                    "Unit configured for accepting sockets, but sockets are non-accepting "
                    "(datagram). Refusing.",
                )
                break
        if "service" in f:
            b.error(b.origin["service"], "Service= is only allowed with Accept=no")
    # systemd's defaults for the rate limits depend on Accept=.
    f.setdefault("poll_limit_burst", 150 if accept else 15)
    f.setdefault("trigger_limit_burst", 200 if accept else 20)
    for field in ("ip_address_allow", "ip_address_deny"):
        if field in f:
            f[field] = tuple(dict.fromkeys(f[field]))
        if f.get(field) and not accept:
            # systemd filters the unit's packets in the kernel; activator checks the peer when it
            # accepts, and with Accept=no the service accepts (or receives) by itself.
            b.error(
                b.origin.get(field),
                "IPAddressAllow=/IPAddressDeny= need Accept=yes in activator (it checks the peer "
                "when it accepts; with Accept=no the service accepts by itself). Refusing.",
            )
