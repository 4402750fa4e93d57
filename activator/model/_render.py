"""Writing a model back as unit text that builds to an equal model.

Rule 1: what is rendered parses back to the same value: ``%`` is doubled in every directive whose
specifiers are resolved, words are quoted with ``values.quote_word``, and every field is written
(also those at their default), so defaults that depend on other fields cannot drift.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from activator import values as v
from activator.model._directives import SERVICE_DIRECTIVES, SOCKET_DIRECTIVES, Directive
from activator.model._units import ExecCommand, ServiceUnit, SocketUnit, Unit


def _render_exec(cmd: ExecCommand) -> str:
    prefix = ("-" if cmd.ignore_failure else "") + ("" if cmd.expand_environment else ":")
    if cmd.argv[:1] == (cmd.path,):
        words = cmd.argv
    else:
        prefix += "@"
        words = (cmd.path, *cmd.argv)
    return prefix + " ".join(v.quote_word(w) for w in words)


# ---------------------------------------------------------------------------------------------
# Rendering


def render_scalar(value: Any) -> str:
    match value:
        case bool():
            return v.render_boolean(value)
        case enum.Enum():
            return str(value.value)
        case _:
            return str(value)


def _quote_literal(word: str) -> str:
    """Quote a word for directives that unquote but read backslashes as they are: runs without
    a single quote go in single quotes, each single quote in double quotes (systemd 252 lets a
    quote open inside a word, so the pieces make one word)."""
    if word and not any(c in word for c in " \t\n\r'\"\\"):
        return word
    return '"\'"'.join(f"'{run}'" if run else "" for run in word.split("'")) or "''"


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _render_field(d: Directive, value: Any) -> list[tuple[str, str]]:
    """The ``Key=value`` lines for one field's value (specifier-safe: ``%`` is doubled)."""
    field = d.field
    if field == "listen":
        return [(x.kind.value, _escape(v.render_listen(x.address))) for x in value]
    if field == "exec_start":
        return [(d.key, _escape(_render_exec(x))) for x in value]
    if field == "environment":
        return [(d.key, _escape(v.quote_word(f"{k}={val}"))) for k, val in value]
    if field in ("ip_address_allow", "ip_address_deny"):
        return [(d.key, v.render_ip_prefixes(value))]
    if field == "environment_files":
        return [(d.key, _escape(v.render_path_entry(x))) for x in value]
    if field == "working_directory":
        return [(d.key, _escape(v.render_path_entry(value)))]
    if field.startswith("limit_"):
        return [(d.key, v.render_rlimit(d.key, value))]
    if field in ("bind_paths", "bind_read_only_paths"):
        # parse_bind_paths reads its own escapes, not split_words' quoting.
        return [(d.key, _escape(v.render_bind_entry(x))) for x in value]
    literal: Mapping[str, Callable[[Any], str]] = {
        "read_write_paths": v.render_path_entry,
        "read_only_paths": v.render_path_entry,
        "inaccessible_paths": v.render_path_entry,
        "temporary_file_system": v.render_tmpfs_entry,
    }
    if field in literal:
        return [(d.key, _escape(_quote_literal(literal[field](x)))) for x in value]
    if field == "supplementary_groups":
        return [(d.key, " ".join(value))]  # names: nothing to quote, and no quoting is read
    if d.is_list:
        return [(d.key, _escape(v.quote_word(str(x)))) for x in value]
    if field in ("standard_input", "standard_output", "standard_error"):
        return [(d.key, _escape(v.render_io_spec(value)))]
    if field.endswith("_mode") or field == "umask":
        return [(d.key, v.render_mode(value))]
    if field in ("memory_max", "tasks_max", "cpu_quota"):
        return [(d.key, v.render_limit(value))]
    if field == "kill_signal":
        return [(d.key, v.render_signal(value))]
    if field.endswith("_sec"):
        return [(d.key, v.render_timespan(value))]
    return [(d.key, _escape(render_scalar(value)))]


#: Fields where None means "infinity" and must be written out, because the default is finite.
_INFINITY_FIELDS = frozenset(
    {"tasks_max", "memory_max", "runtime_max_sec", "timeout_stop_sec", "restart_sec"}
    | {"poll_limit_interval_sec", "trigger_limit_interval_sec"}
)


def _render(unit: Unit, directives: Mapping[tuple[str, str], Directive]) -> str:
    sections: dict[str, list[str]] = {}
    seen: set[str] = set()
    for d in directives.values():
        if d.field in seen:
            continue
        seen.add(d.field)
        value = getattr(unit, d.field)
        if value is None and d.field in _INFINITY_FIELDS:
            sections.setdefault(d.section, []).append(f"{d.key}=infinity")
            continue
        if value is None or (d.is_list and not value):
            continue
        for key, text in _render_field(d, value):
            sections.setdefault(d.section, []).append(f"{key}={text}")
    order = ("Unit", "Socket", "Service", "Install")
    return "\n".join(f"[{s}]\n" + "\n".join(sections[s]) + "\n" for s in order if s in sections)


def render_service(unit: ServiceUnit) -> str:
    """Write ``unit`` as unit-file text that :func:`build_service` reads back to an equal unit."""
    return _render(unit, SERVICE_DIRECTIVES)


def render_socket(unit: SocketUnit) -> str:
    """Write ``unit`` as unit-file text that :func:`build_socket` reads back to an equal unit."""
    return _render(unit, SOCKET_DIRECTIVES)
