"""The ``activator`` command line.

Rule 1: only :func:`main` maps outcomes to exit codes: 0 ok, 1 runtime failure, 2 usage or
configuration error. Library code raises; it never calls ``sys.exit``.

Rule 2: problems go to stderr, one per line, prefixed ``activator:`` (warnings ``activator:
warning:``); what the user asked to see goes to stdout. ``--json`` gives the same as one JSON
document, for scripts.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attrs

from activator import __version__, ctl, values
from activator.catalog import Catalog, Loaded
from activator.errors import ConfigError, Problem
from activator.loader import load_catalog
from activator.model import Listen, ServiceUnit, SocketUnit, shared_directories
from activator.settings import Settings, load_settings
from activator.uidpool import user_name
from activator.units import UnitName, parse_unit_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activator",
        description="Socket-activation super-server: every connection runs as a fresh dynamic "
        "user in its own sandbox.",
    )
    parser.add_argument("--version", action="version", version=f"activator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="load units and settings, report every problem and what would run",
        description="Load the units and settings, print every problem (not just the first) and "
        "what would run. Exits 0 when clean (warnings allowed), 2 on errors.",
    )
    check.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="a units directory, a unit file, or an instance of a template in one "
        "(DIR/foo@bar.service); default: the directories of the settings",
    )
    _add_settings_arguments(check)
    check.add_argument("--json", action="store_true", help="print one JSON document")
    serve = sub.add_parser(
        "serve",
        help="listen on every socket unit and serve connections until stopped",
        description="Load every unit, bind every socket, and run each connection's handler as a "
        "fresh dynamic user in its own sandbox, in the foreground, until SIGTERM or SIGINT "
        "(SIGHUP reloads the units). A unit with errors is reported and skipped.",
    )
    _add_settings_arguments(serve)
    serve.add_argument(
        "--strict", action="store_true", help="refuse to start when any unit has an error"
    )
    serve.add_argument(
        "--daemon",
        action="store_true",
        help="detach from the terminal once serving (the command exits 0 when every socket "
        "listens, or with the error); logs go to [log] target (syslog if that is stderr)",
    )
    serve.add_argument(
        "--pidfile",
        metavar="PATH",
        help="with --daemon: the pidfile, locked while the daemon runs (default: "
        "/run/activator/activator.pid)",
    )
    serve.add_argument(
        "--ready-timeout",
        metavar="SECONDS",
        type=float,
        help="with --daemon: exit 1 when the daemon is not ready (every socket listening) "
        "after this many seconds; it goes on starting (default: 90)",
    )
    run = sub.add_parser(
        "run",
        help="run one command as a transient service, in the same sandbox as a connection",
        description="Run CMD once as a transient service with the sandbox and dynamic user a "
        "connection would get (like systemd-run). Exits with the command's status (128+N when "
        "killed by signal N, 127 when it could not start).",
    )
    streams = run.add_mutually_exclusive_group()
    streams.add_argument(
        "--pipe",
        action="store_true",
        help="connect the command to our stdin, stdout and stderr (for pipelines)",
    )
    streams.add_argument(
        "--pty", action="store_true", help="give the command a new terminal, relayed to ours"
    )
    run.add_argument(
        "-p",
        "--property",
        dest="properties",
        metavar="DIRECTIVE=VALUE",
        action="append",
        default=[],
        help="a [Service] directive, as in a unit file (repeatable): -p DynamicUser=yes",
    )
    run.add_argument(
        "--unit",
        metavar="NAME",
        help="the unit name (default: run-RANDOM.service); a dynamic user is named after it",
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="daemon settings, for the pool (default: /etc/activator/activator.toml if it exists)",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]")
    ctl.add_parsers(sub)
    return parser


def _add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="daemon settings (default: /etc/activator/activator.toml if it exists)",
    )
    parser.add_argument(
        "--units",
        metavar="DIR",
        action="append",
        default=[],
        help="units directory, overriding [units] directories (repeatable)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        # Unit text reaches the terminal; never fail on a character the locale cannot show.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args, sys.stdout, sys.stderr)
        if args.command == "run":
            return _run(args, sys.stderr)
        if args.command == "serve":
            return _serve(args, sys.stderr)
        if args.command in ctl.COMMANDS:
            return ctl.run(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `activator check | head`: the reader is gone, as for any filter
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
        return 1
    return 2  # pragma: no cover - argparse rejects unknown commands first


# ---------------------------------------------------------------------------------------------
# serve


def _serve(args: argparse.Namespace, err: TextIO) -> int:
    from activator import daemon, detach, logs  # trio and the sandbox: not needed by `check`

    settings = settings_or_report(args.config, err, units=args.units)
    if settings is None:
        return 2
    if os.geteuid() != 0:
        print("activator: serve needs root (namespaces, mounts and UIDs of the pool)", file=err)
        return 1
    pidfile: str | None = None
    if args.pidfile is not None and not args.daemon:
        print("activator: --pidfile needs --daemon", file=err)
        return 2
    if args.ready_timeout is not None and not args.daemon:
        print("activator: --ready-timeout needs --daemon", file=err)
        return 2
    if args.ready_timeout is not None and not args.ready_timeout > 0:
        print(f"activator: --ready-timeout must be above 0 (got {args.ready_timeout:g})", file=err)
        return 2
    ready_timeout = args.ready_timeout or detach.DEFAULT_READY_TIMEOUT
    if args.daemon:
        pidfile = os.path.abspath(args.pidfile or detach.DEFAULT_PIDFILE)
        if settings.log.target == "stderr":  # /dev/null once detached
            print("activator: warning: --daemon: [log] target is stderr: using syslog", file=err)
            settings = attrs.evolve(settings, log=attrs.evolve(settings.log, target="syslog"))
    try:
        return daemon.serve(
            settings,
            settings.units.directories,
            strict=args.strict,
            pidfile=pidfile,
            ready_timeout=ready_timeout,
        )
    except logs.LogTargetError as error:
        print(f"activator: {error}", file=err)
        return 2
    except detach.DaemonError as error:
        print(f"activator: {error}", file=err)
        return 1


# ---------------------------------------------------------------------------------------------
# run


def _run(args: argparse.Namespace, err: TextIO) -> int:
    # Imported here: `check` must work on machines where the sandbox cannot (no root, no trio use).
    from activator import runner, transient

    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    problems: list[Problem] = []
    try:
        settings = load_settings(args.config, on_warning=problems.append)
        name = args.unit or runner.transient_name()
        if not name.endswith(".service"):
            name += ".service"
        service, warnings = transient.transient_service(name, command, args.properties)
    except ConfigError as error:
        for problem in (*problems, *error.problems):
            print(f"activator: {_problem_line(problem)}", file=err)
        return 2
    for problem in (*problems, *warnings):
        print(f"activator: {_problem_line(problem)}", file=err)
    if args.pty and not os.isatty(0):
        print("activator: --pty needs a terminal on stdin", file=err)
        return 2
    if os.geteuid() != 0:
        print("activator: run needs root (namespaces, mounts and UIDs of the pool)", file=err)
        return 1
    # Warnings of the run go to stderr; its own failure is printed once, below.
    logging.basicConfig(level=logging.WARNING, format="activator: %(message)s")
    for name in ("activator.invocation", "activator.spawner"):
        logging.getLogger(name).setLevel(logging.ERROR)
    mode = runner.StreamMode.PIPE if args.pipe else runner.StreamMode.PTY if args.pty else \
        runner.StreamMode.LOG  # fmt: skip
    if mode is runner.StreamMode.LOG:
        print(f"Running as unit: {service.name.name}", file=err, flush=True)
    outcome = runner.run_transient(settings, service, mode)
    if outcome.failure is not None:
        print(f"activator: {service.name.name}: {outcome.failure}", file=err)
    return outcome.exit_code


def _problem_line(problem: Problem) -> str:
    return f"{'' if problem.is_error else 'warning: '}{problem}"


def settings_or_report(
    config: str | None, err: TextIO, *, units: Sequence[str] = ()
) -> Settings | None:
    """The settings of ``config`` (``--units`` applied), each warning printed to ``err``; None,
    with every problem printed, when they have errors (the caller exits 2)."""
    problems: list[Problem] = []
    try:
        settings = load_settings(config, units_override=units, on_warning=problems.append)
    except ConfigError as error:
        problems.extend(error.problems)
        settings = None
    for problem in problems:
        print(f"activator: {_problem_line(problem)}", file=err)
    return settings


# ---------------------------------------------------------------------------------------------
# check


@attrs.frozen
class _Selection:
    """What ``check PATH...`` asked for: directories to load, and units to show from them."""

    directories: tuple[str, ...]
    units: tuple[str, ...]  # named on the command line
    show_all: bool  # a directory (or nothing) was named: show every unit of the directories
    problems: tuple[Problem, ...]


def _select(paths: Sequence[str], settings: Settings) -> _Selection:
    if not paths:
        return _Selection(tuple(settings.units.directories), (), True, ())
    directories: list[str] = []
    units: list[str] = []
    problems: list[Problem] = []
    show_all = False
    for path in paths:
        if os.path.isdir(path):
            directories.append(path)
            show_all = True
            continue
        parent, base = os.path.split(path)
        try:
            name = parse_unit_name(base)
        except ValueError as e:
            reason = str(e) if os.path.exists(path) else "No such file or directory"
            problems.append(Problem(path, None, None, None, reason))
            continue
        template_exists = name.is_instance and os.path.exists(
            os.path.join(parent or ".", name.template.name)
        )
        if not os.path.exists(path) and not template_exists:
            problems.append(Problem(path, None, None, None, "No such file or directory"))
            continue
        directories.append(parent or ".")
        units.append(name.name)
    return _Selection(tuple(directories), tuple(units), show_all, tuple(problems))


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    problems: list[Problem] = []
    try:
        settings = load_settings(args.config, units_override=args.units, on_warning=problems.append)
    except ConfigError as e:
        problems.extend(e.problems)
        settings = Settings()
    selection = _select(args.paths, settings)
    problems.extend(selection.problems)
    catalog = load_catalog(selection.directories)
    problems.extend(catalog.problems)
    shown: list[Loaded] = []
    names = list(selection.units)
    if selection.show_all:
        names += sorted([*catalog.units, *catalog.templates], key=_unit_sort_key)
    for text in dict.fromkeys(names):
        name = parse_unit_name(text)
        if text in catalog.failed or (name.is_instance and name.template.name in catalog.failed):
            continue
        if text in catalog.units:
            shown.append(catalog.units[text])
        elif text in catalog.templates:
            shown.append(catalog.templates[text])
        else:
            try:
                loaded = catalog.instantiate(name)
            except ConfigError as e:
                problems.extend(e.problems)
            else:
                shown.append(loaded)
                problems.extend(loaded.warnings)
    errors = [p for p in problems if p.is_error]
    warnings = [p for p in problems if not p.is_error]
    if args.json:
        doc = {
            "ok": not errors,
            "directories": list(selection.directories),
            "units": [_describe_json(x, catalog) for x in shown],
            "masked": sorted(catalog.masked) if selection.show_all else [],
            "problems": [problem_json(p) for p in problems],
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        for p in problems:
            print(f"activator: {'' if p.is_error else 'warning: '}{p}", file=err)
        out.writelines(_describe(loaded, catalog) for loaded in shown)
        if selection.show_all:
            out.writelines(
                f"{name}: masked (an empty file or a symlink to /dev/null hides it)\n"
                for name in sorted(catalog.masked)
            )
        summary = (
            f"{len(shown)} unit{'s' * (len(shown) != 1)} checked, "
            f"{len(errors)} error{'s' * (len(errors) != 1)}, "
            f"{len(warnings)} warning{'s' * (len(warnings) != 1)}"
        )
        print(summary, file=out)
    return 2 if errors else 0


def _unit_sort_key(name: str) -> tuple[str, int, str]:
    n = parse_unit_name(name)
    return (n.prefix, 0 if n.suffix == "socket" else 1, name)


def problem_json(p: Problem) -> dict[str, Any]:
    """One problem as ``check --json`` prints it."""
    return {
        "severity": p.severity.value,
        "path": p.path,
        "line": p.line,
        "key": p.key,
        "value": p.value,
        "reason": p.reason,
        "message": str(p),
    }


def _listen_text(socket: SocketUnit) -> list[str]:
    return [f"{x.kind.value}={values.render_listen(x.address)}" for x in socket.listen]


def _listen_meaning(listen: Listen, socket: SocketUnit) -> str:
    address = listen.address
    if isinstance(address, values.InetListen):
        proto = "UDP" if listen.kind is values.SocketKind.DATAGRAM else "TCP"
        if address.host is None:
            both = socket.bind_ipv6_only is not values.BindIPv6Only.IPV6_ONLY
            return f"{proto} port {address.port} on all addresses ({'IPv4 and ' * both}IPv6)"
        host = address.host if address.family == 4 else f"[{address.host}]"
        return f"{proto} {host}:{address.port}"
    kind = {
        values.SocketKind.STREAM: "stream",
        values.SocketKind.DATAGRAM: "datagram",
        values.SocketKind.SEQPACKET: "seqpacket",
    }[listen.kind]
    if isinstance(address, values.UnixListen):
        return f"Unix {kind} socket {address.path}"
    return f"abstract Unix {kind} socket @{address.name}"


def _describe_json(loaded: Loaded, catalog: Catalog) -> dict[str, Any]:
    unit = loaded.unit
    sample = _sample(unit.name, catalog)
    doc: dict[str, Any] = {
        "name": unit.name.template.name if sample is not None else unit.name.name,
        "files": [loaded.files.fragment, *loaded.files.dropins],
        "description": unit.description,
    }
    if isinstance(unit, SocketUnit):
        doc |= {
            "type": "socket",
            "listen": _listen_text(unit),
            "accept": unit.accept,
            "activates": unit.activates.name,
            "max_connections": unit.max_connections,
        }
    else:
        doc |= {
            "type": "service",
            "template": sample is not None,
            "checked_as": unit.name.name if sample is not None else None,
            "exec_start": [
                {"path": c.path, "argv": list(c.argv), "ignore_failure": c.ignore_failure}
                for c in unit.exec_start
            ],
            "dynamic_user": unit.dynamic_user,
            "user": unit.user,
            "sandbox": _sandbox_words(unit),
            "environment": dict(unit.directory_environment),
        }
    return doc


def _sample(name: UnitName, catalog: Catalog) -> str | None:
    """The sample instance name, when ``name`` is a template checked through one."""
    if name.instance is None:
        return None
    loaded = catalog.templates.get(name.template.name)
    return name.instance if loaded is not None and loaded.unit.name == name else None


#: The instance names of an Accept=yes connection's service, as the manager makes them
#: (``N-LOCAL-REMOTE``, ``N-PID-UID`` for Unix), for check to build one.
_CONNECTION_INSTANCES = {"inet": "1-127.0.0.1:7007-127.0.0.1:41234", "unix": "1-4711-0"}


def _connection_user(socket: SocketUnit, catalog: Catalog) -> str | None:
    """Who a plain Accept=yes socket's connections run as: a fresh dynamic user each, or one
    dynamic user for all when a directory of the service is the same for every connection (or
    ``User=`` names it); that every connection fails, when a connection's instance does not
    build. None when its service has no dynamic user."""
    template = socket.activates
    kind = (
        "inet" if any(isinstance(x.address, values.InetListen) for x in socket.listen) else "unix"
    )
    try:
        loaded = catalog.instantiate(template.with_instance(_CONNECTION_INSTANCES[kind]))
    except ConfigError as error:
        return f"every connection fails: {error.problems[0]}"
    service = loaded.unit
    if not isinstance(service, ServiceUnit) or not service.dynamic_user:
        return None
    if service.user is not None:
        return f"every connection runs as the dynamic user {service.user!r} (User=), at once"
    sample = catalog.templates.get(template.name)
    if sample is None or not isinstance(sample.unit, ServiceUnit):
        return None
    shared = shared_directories(service, sample.unit)
    if not shared:
        return "each connection runs as a fresh dynamic user of its own"
    user = user_name(template.with_instance(None).name)
    return (
        f"every connection runs as the one dynamic user {user!r}, as systemd's instances do: "
        f"{', '.join(shared.paths)} {'is' if len(shared.paths) == 1 else 'are'} the same for "
        "every connection (each still has its own sandbox, /tmp and cgroup)"
    )


def _sandbox_words(unit: ServiceUnit) -> list[str]:
    words = [
        f"ProtectSystem={unit.protect_system.value}",
        f"ProtectHome={unit.protect_home.value}",
    ]
    for flag, key in (
        (unit.private_tmp, "PrivateTmp"),
        (unit.private_devices, "PrivateDevices"),
        (unit.private_network, "PrivateNetwork"),
        (unit.remove_ipc, "RemoveIPC"),
        (unit.no_new_privileges, "NoNewPrivileges"),
        (unit.restrict_suid_sgid, "RestrictSUIDSGID"),
    ):
        if flag:
            words.append(f"{key}=yes")
    return words


def _describe(loaded: Loaded, catalog: Catalog) -> str:
    unit = loaded.unit
    lines: list[str] = []
    if isinstance(unit, SocketUnit):
        lines.append(f"{unit.name.name}: socket")
        lines += [
            f"  listens on {text}: {_listen_meaning(x, unit)}"
            for text, x in zip(_listen_text(unit), unit.listen, strict=True)
        ]
        if unit.accept and unit.activates.instance:
            lines.append(
                f"  Accept=yes: each connection runs {unit.activates.name}, as that instance's "
                f"own user (at most {unit.max_connections} at once)"
            )
        elif unit.accept:
            lines.append(
                f"  Accept=yes: each connection starts an instance of {unit.activates.name} "
                f"(at most {unit.max_connections} at once)"
            )
            who = _connection_user(unit, catalog)
            if who is not None:
                lines.append(f"    {who}")
        else:
            lines.append(
                f"  the first connection starts {unit.activates.name}, which gets the sockets"
            )
    else:
        sample = _sample(unit.name, catalog)
        if sample is not None:
            lines.append(
                f"{unit.name.template.name}: service template (checked as {unit.name.name})"
            )
        else:
            lines.append(f"{unit.name.name}: service")
        if unit.description:
            lines.append(f"  {unit.description}")
        for cmd in unit.exec_start:
            argv = " ".join(values.quote_word(a) for a in cmd.argv)
            extra = " (exit status ignored)" if cmd.ignore_failure else ""
            shown_path = f" [{cmd.path}]" if cmd.argv[:1] != (cmd.path,) else ""
            lines.append(f"  runs {argv}{shown_path}{extra}")
        if unit.dynamic_user:
            named = f" {unit.user!r}" if unit.user else ""
            who = f"a dynamic user{named}, allocated when it starts and released when it ends"
        elif unit.user:
            who = f"user {unit.user!r}"
        else:
            who = "root (no User= and no DynamicUser=)"
        lines.append(f"  as {who}")
        lines.append(f"  sandbox: {' '.join(_sandbox_words(unit))}")
        lines += [f"  {k}={val}" for k, val in unit.directory_environment.items()]
    files = [loaded.files.fragment, *loaded.files.dropins]
    lines.append(f"  from {', '.join(files)}")
    return "\n".join(lines) + "\n"
