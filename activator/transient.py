"""Transient services for ``activator run``: a command line and ``-p`` properties -> a unit.

Rule 1: pure. The command and the properties become unit text (``[Service]``, ``ExecStart=`` with
every word quoted, one line per ``-p``), which the ordinary unit builder reads: a transient
service means exactly what the same lines in a ``.service`` file mean, with the same defaults,
implications (``DynamicUser=yes`` implies the sandbox) and errors.

Rule 2: errors name the property as typed: ``-p 'PrivateTmp=maybe': ...``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from activator.errors import ConfigError, Problem, Severity
from activator.model import ServiceUnit, build_service
from activator.units import parse_unit_name, parse_unit_text
from activator.values import quote_word

#: What the unit is called in messages about ``-p`` properties.
COMMAND_LINE = "<command line>"
#: "[Service]" and "ExecStart=" come before the first -p line.
_HEADER_LINES = 2
_PROPERTY = re.compile(r"([A-Za-z][A-Za-z0-9]*)=(.*)", re.DOTALL)


def transient_service(
    name: str, command: Sequence[str], properties: Sequence[str]
) -> tuple[ServiceUnit, list[Problem]]:
    """Build the service ``name`` (``run-3f2a.service``) that runs ``command``.

    Args:
        name: the unit name, ending in ``.service``.
        command: the program and its arguments; a bare program name is searched in ``PATH``.
        properties: ``Directive=value`` strings as given to ``-p``, applied in order.

    Returns:
        The service and its warnings.

    Raises:
        ConfigError: an invalid name, command or property; each problem names the ``-p`` at
            fault (its line is its position among the ``-p`` options, from 1).
    """
    problems: list[Problem] = []
    try:
        unit_name = parse_unit_name(name)
    except ValueError as error:
        raise ConfigError([Problem(COMMAND_LINE, None, "--unit", name, str(error))]) from error
    if unit_name.suffix != "service" or unit_name.instance == "":
        reason = "must name a service (NAME.service), not a template"
        raise ConfigError([Problem(COMMAND_LINE, None, "--unit", name, reason)])
    if not command:
        raise ConfigError([Problem(COMMAND_LINE, None, None, None, "no command given")])
    lines = ["[Service]"]
    try:
        # The unit text names only the program, which the model checks as in a unit file; the
        # arguments go in afterwards, verbatim: a word such as ";" or "$HOME" means itself, as
        # the shell that called us already expanded what it meant to.
        lines.append("ExecStart=:" + _quote_exec(command[0]))
    except ValueError as error:
        words = " ".join(command)
        raise ConfigError([Problem(COMMAND_LINE, None, "ExecStart", words, str(error))]) from error
    for number, text in enumerate(properties, start=1):
        match = _PROPERTY.fullmatch(text)
        if match is None or "\n" in text:
            reason = "must be Directive=value on one line"
            problems.append(Problem(COMMAND_LINE, number, "-p", text, reason))
            continue
        lines.append(text)
    if problems:
        raise ConfigError(problems)
    unit_text = "\n".join(lines) + "\n"
    parsed = parse_unit_text(unit_text, COMMAND_LINE, unit_type="service")
    # The unit text has ExecStart= on line 2, then one line per property: renumber problems so
    # that line N is the N-th -p.
    try:
        service, warnings = build_service(unit_name, [parsed])
    except ConfigError as error:
        raise ConfigError([_renumber(p) for p in error.problems]) from error
    if "\0" in "".join(command):
        raise ConfigError([Problem(COMMAND_LINE, None, None, None, "a word holds a NUL")])
    program = service.exec_start[0]
    argv = (program.argv[0], *command[1:])
    service = attrs.evolve(service, exec_start=(attrs.evolve(program, argv=argv),))
    return service, [_renumber(p) for p in (*parsed.problems, *warnings)]


def _quote_exec(word: str) -> str:
    """Quote one command word for ``ExecStart=``, with ``%`` doubled so it is not a specifier."""
    return quote_word(word.replace("%", "%%"))


def _renumber(problem: Problem) -> Problem:
    if problem.line is None or problem.path != COMMAND_LINE:
        return problem
    line = None if problem.line <= _HEADER_LINES else problem.line - _HEADER_LINES
    return attrs.evolve(problem, line=line)


def is_error(problem: Problem) -> bool:
    """True for an error, False for a warning."""
    return problem.severity is Severity.ERROR
