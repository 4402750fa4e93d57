"""The control commands of the ``activator`` command line: ``status``, ``list-connections``,
``list-users``, ``kill``, ``reload``, ``enable``, ``disable``, ``start``, ``stop``, ``restart``.

Each sends one request to the control socket of a running ``activator serve``
(:mod:`activator.control`) and shows the result: aligned tables like systemctl's for people,
one JSON document with ``--json`` for scripts.

The requests (command, then its ``args``) and the results the daemon answers with, as rendered
here (a result may carry more keys; they are ignored):

- ``status`` ``{"unit": str | null}``: ``{"pool": {"first", "last", "size", "leased", "free",
  "waiting"}, "units": [UnitRow], "invocations": [ConnRow]}``; a UnitRow is ``{"unit", "kind"
  ("socket" | "service"), "state", "enabled" (bool | null), "listen" ([str]), "activates"
  (str | null), "accepted", "active"}``.
- ``list-connections`` ``{}``: ``[ConnRow]``, each ``{"invocation", "unit", "socket", "peer",
  "uid", "user", "started" (epoch seconds), "seconds" (age)}`` (socket, peer, uid, user nullable).
- ``list-users`` ``{}``: ``[{"uid", "user", "unit", "invocation", "peer", "started", "seconds",
  "holders"}]``.
- ``kill`` ``{"target": str}`` (an invocation id, a prefix of 8 or more hex digits, or a unit):
  ``{"killed": [invocation ids]}``.
- ``reload`` ``{}``: ``{"added", "removed", "changed", "kept", "failed"}``, each a list of unit
  names (a failed entry may be ``{"unit", "error"}``).
- ``enable``/``disable`` ``{"unit": str, "now": bool}``: ``{"enabled", "started"}`` /
  ``{"disabled", "stopped"}``; ``start``/``stop``/``restart`` ``{"unit": str}``: ``{"started"}``
  / ``{"stopped"}`` / ``{"restarted"}``; each a list of the unit names changed.

Rule 1: exit codes as everywhere in the CLI: 0 ok; 1 with one line ``activator: REASON`` on stderr
when the server refuses the request or cannot be reached (or a reload left units failed); 2 for
usage errors and a bad settings file.

Rule 2: the renderers are pure: a result in, text out. They take what the server sends as it
comes: a key they do not know is ignored, a missing one shows as ``-``, and every cell is shown
as printable ASCII (anything else backslash-escaped), so that columns align and a name cannot
write to the terminal.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TextIO

import attrs

#: Seconds to wait for a query's reply, and for a command that changes things (a stop waits for
#: ``TimeoutStopSec=``, systemd's default 90 s, of each invocation it stops).
QUERY_TIMEOUT: Final = 60.0
CHANGE_TIMEOUT: Final = 600.0

_QUERIES: Final = frozenset({"status", "list-connections", "list-users"})
_SEPARATOR: Final = "  "
#: How many hex digits of an invocation id the tables show.
_SHORT_ID: Final = 12


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the control subcommands on the ``activator`` parser's subparsers."""

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=description
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument(
            "--control",
            metavar="PATH",
            help="the control socket (default: [control] socket of the settings, "
            "/run/activator/control)",
        )
        parser.add_argument(
            "--config",
            metavar="FILE",
            help="daemon settings, for the control socket's path "
            "(default: /etc/activator/activator.toml if it exists)",
        )
        return parser

    status = add(
        "status",
        "show units, instances, live invocations and the UID pool",
        "Show the UID pool's usage, every unit and instance with its sockets, state and "
        "counts, and the live invocations; with UNIT, that unit only.",
    )
    status.add_argument("unit", nargs="?", metavar="UNIT", help="show this unit only")
    add(
        "list-connections",
        "list live invocations: unit, peer, dynamic user, age",
        "List every live invocation with its unit, socket, peer, dynamic user and age.",
    )
    add(
        "list-users",
        "list live dynamic users: UID, name, unit, peer, age",
        "List every leased UID with its user name, unit, invocation, peer and age.",
    )
    kill = add(
        "kill",
        "stop an invocation, or every invocation of a unit",
        "Stop an invocation (its id, or a prefix of at least 8 hex digits), or every invocation "
        "of a unit: KillSignal=, then SIGKILL after TimeoutStopSec=.",
    )
    kill.add_argument("target", metavar="INVOCATION|UNIT")
    add(
        "reload",
        "reload the units (as SIGHUP does)",
        "Read the units directories again; unchanged sockets stay open and live connections "
        "are not touched. Exits 1 when some unit failed to load.",
    )
    for verb, what in (("enable", "enable"), ("disable", "disable")):
        parser = add(
            verb,
            f"{what} a unit or template instance (persistent)",
            f"{what.capitalize()} UNIT (foo@customer.socket, ...): remembered across restarts "
            f"of activator. With --now, also {'start' if verb == 'enable' else 'stop'} it.",
        )
        parser.add_argument("unit", metavar="UNIT")
        parser.add_argument(
            "--now",
            action="store_true",
            help=f"also {'start' if verb == 'enable' else 'stop'} it now",
        )
    for verb, what in (
        ("start", "start a unit or instance now (its sockets listen)"),
        ("stop", "stop a unit or instance now (its sockets close, its invocations stop)"),
        ("restart", "stop and start a unit or instance"),
    ):
        parser = add(verb, what, f"{what[0].upper()}{what[1:]}; not remembered across restarts.")
        parser.add_argument("unit", metavar="UNIT")


def request_args(args: argparse.Namespace) -> dict[str, object]:
    """The ``args`` of the request for a parsed control subcommand."""
    command: str = args.command
    if command == "status":
        return {"unit": args.unit}
    if command == "kill":
        return {"target": args.target}
    if command in {"enable", "disable"}:
        return {"unit": args.unit, "now": args.now}
    if command in {"start", "stop", "restart"}:
        return {"unit": args.unit}
    return {}


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run a parsed control subcommand; returns the exit code (Rule 1)."""
    path = args.control
    if path is None:
        from activator.cli import settings_or_report  # cli imports this module

        settings = settings_or_report(args.config, err)
        if settings is None:
            return 2
        path = settings.control.socket
    from activator.control import ControlError, request  # trio: not needed by `check`

    command: str = args.command
    timeout = QUERY_TIMEOUT if command in _QUERIES else CHANGE_TIMEOUT
    try:
        result = request(path, command, request_args(args), timeout=timeout)
    except ControlError as error:
        print(f"activator: {error}", file=err)
        return 1
    rendered = render(command, request_args(args), result)
    if args.json:
        json.dump(result, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(rendered.text)
    if rendered.failure is not None:
        print(f"activator: {rendered.failure}", file=err)
        return 1
    return 0


# --- rendering (pure) -------------------------------------------------------------------------


@attrs.frozen
class Rendered:
    """What a result shows: the text for stdout, and a failure to report (exit 1), if any."""

    text: str
    failure: str | None = None


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def cell(value: object) -> str:
    """One table cell: ``-`` for nothing, ``yes``/``no``, lists joined by commas; printable
    ASCII only, without leading or trailing spaces (Rule 2)."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    if isinstance(value, float):
        value = f"{value:g}"
    text = str(value).encode("ascii", "backslashreplace").decode("ascii")
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}", text).strip(" ")
    return text or "-"


_AGE_UNITS: Final = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def format_age(seconds: object) -> str:
    """An age as systemd shows time spans, to two units: ``5s``, ``3min 2s``, ``2h 5min``,
    ``3d 4h``; ``-`` when unknown."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds != seconds:
        return "-"
    whole = int(max(0.0, min(float(seconds), 1e15)))
    for i, (size, unit) in enumerate(_AGE_UNITS):
        if whole >= size or size == 1:
            text = f"{whole // size}{unit}"
            if i + 1 < len(_AGE_UNITS):
                smaller, smaller_unit = _AGE_UNITS[i + 1]
                rest = whole % size // smaller
                if rest:
                    text += f" {rest}{smaller_unit}"
            return text
    raise AssertionError  # pragma: no cover - the last unit always matches


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing spaces.

    Args:
        header: the column names (shown upper case).
        rows: the cells, already made text by :func:`cell`.
    """
    lines = [[h.upper() for h in header], *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        _SEPARATOR.join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def _get(row: object, key: str) -> object:
    return row.get(key) if isinstance(row, Mapping) else None


def _rows(result: object) -> list[object]:
    return list(result) if isinstance(result, list) else []


def _short(invocation: object) -> str:
    return cell(invocation)[:_SHORT_ID]


def render_connections(result: object) -> str:
    """The ``list-connections`` table (also the second table of ``status``)."""
    rows = _rows(result)
    if not rows:
        return "no connections\n"
    return render_table(
        ("invocation", "unit", "peer", "uid", "user", "age"),
        [
            [
                _short(_get(r, "invocation")),
                cell(_get(r, "unit")),
                cell(_get(r, "peer")),
                cell(_get(r, "uid")),
                cell(_get(r, "user")),
                format_age(_get(r, "seconds")),
            ]
            for r in rows
        ],
    )


def render_users(result: object) -> str:
    """The ``list-users`` table."""
    rows = _rows(result)
    if not rows:
        return "no dynamic users\n"
    return render_table(
        ("uid", "user", "unit", "peer", "age", "holders"),
        [
            [
                cell(_get(r, "uid")),
                cell(_get(r, "user")),
                cell(_get(r, "unit")),
                cell(_get(r, "peer")),
                format_age(_get(r, "seconds")),
                cell(_get(r, "holders")),
            ]
            for r in rows
        ],
    )


def _pool_line(pool: object) -> str:
    size, leased = _get(pool, "size"), _get(pool, "leased")
    if isinstance(size, int) and isinstance(leased, int) and size > 0:
        share = f" ({100 * leased / size:.1f}%)"
    else:
        share = ""
    return (
        f"pool: {cell(leased)} of {cell(size)} UIDs leased{share}, {cell(_get(pool, 'free'))} "
        f"free, {cell(_get(pool, 'waiting'))} waiting\n"
    )


def render_status(result: object) -> str:
    """The pool summary line, the units table, and the connections table when any."""
    text = _pool_line(_get(result, "pool"))
    units = _rows(_get(result, "units"))
    if units:
        text += "\n" + render_table(
            ("unit", "kind", "state", "enabled", "listen", "active", "accepted"),
            [
                [
                    cell(_get(u, "unit")),
                    cell(_get(u, "kind")),
                    cell(_get(u, "state")),
                    cell(_get(u, "enabled")),
                    cell(_get(u, "listen")),
                    cell(_get(u, "active")),
                    cell(_get(u, "accepted")),
                ]
                for u in units
            ],
        )
    else:
        text += "no units\n"
    invocations = _rows(_get(result, "invocations"))
    if invocations:
        text += "\n" + render_connections(invocations)
    return text


def _item(value: object) -> str:
    """An entry of a reload's lists: a unit name, or a failure ``{"unit": ..., "error": ...}``."""
    if isinstance(value, Mapping):
        unit = value.get("unit")
        reason = value.get("error", value.get("reason"))
        if unit is not None and reason is not None:
            return f"{cell(unit)}: {cell(reason)}"
        return cell(json.dumps(value, sort_keys=True))
    return cell(value)


def render_reload(result: object) -> Rendered:
    """One line per unit added, removed, changed or failed, then the counts."""
    lines: list[str] = []
    counts: list[str] = []
    for key in ("added", "removed", "changed", "kept", "failed"):
        entries = _rows(_get(result, key))
        counts.append(f"{len(entries)} {key}")
        if key != "kept":
            lines += [f"{key} {_item(e)}\n" for e in entries]
    failed = len(_rows(_get(result, "failed")))
    failure = None
    if failed:
        failure = f"reload: {failed} unit{'s' * (failed != 1)} failed to load"
    return Rendered("".join(lines) + f"reloaded: {', '.join(counts)}\n", failure)


#: For each verb: the result's keys, in order (each entry is printed as "KEY UNIT"), and what to
#: say when every list is empty.
_CHANGES: Final[Mapping[str, tuple[tuple[str, ...], str]]] = {
    "enable": (("enabled", "started"), "already enabled"),
    "disable": (("disabled", "stopped"), "already disabled"),
    "start": (("started",), "already started"),
    "stop": (("stopped",), "already stopped"),
    "restart": (("restarted",), "nothing to restart"),
    "kill": (("killed",), "nothing to kill"),
}


def render_changes(command: str, target: str, result: object) -> str:
    """One line per unit changed ("enabled foo@alice.socket"), or "TARGET: already enabled"."""
    keys, nothing = _CHANGES[command]
    lines = [f"{key} {cell(name)}\n" for key in keys for name in _rows(_get(result, key))]
    return "".join(lines) or f"{cell(target)}: {nothing}\n"


_RENDERERS: Final[Mapping[str, Callable[[object], str]]] = {
    "status": render_status,
    "list-connections": render_connections,
    "list-users": render_users,
}


#: The subcommands this module registers and runs: the commands of the control socket.
COMMANDS: Final = frozenset({*_RENDERERS, "reload", *_CHANGES})


def render(command: str, args: Mapping[str, object], result: object) -> Rendered:
    """What a control command's result shows (Rule 2)."""
    if command in _RENDERERS:
        return Rendered(_RENDERERS[command](result))
    if command == "reload":
        return render_reload(result)
    if command in _CHANGES:
        target = args.get("target", args.get("unit"))
        return Rendered(render_changes(command, str(target), result))
    return Rendered(json.dumps(result, indent=2) + "\n")  # pragma: no cover - a new command
