"""What the manager tells the log: problems of units, finished invocations, rejected
connections, and the output handlers write to their journal streams (``activator.logs`` events).
"""

from __future__ import annotations

import logging
import signal
from typing import Final

import trio

from activator import logs
from activator.catalog import Catalog
from activator.invocation import Outcome
from activator.plan import Peer

from ._rules import describe_peer

logger = logging.getLogger("activator.manager")

#: A longer line of handler output is logged in pieces (the journal's LineMax= is 48K).
OUTPUT_LINE_MAX: Final = 4096


def log_problems(catalog: Catalog, previous: Catalog | None = None) -> None:
    """Log each problem of ``catalog`` (an error or warning of a unit) not in ``previous``, as
    a ``problem`` event."""
    seen = set() if previous is None else set(previous.problems)
    for problem in catalog.problems:
        if problem in seen:
            continue
        logs.event(
            logger, logging.ERROR if problem.is_error else logging.WARNING, "problem",
            str(problem), path=problem.path, line=problem.line, text=str(problem),
        )  # fmt: skip


def log_outcome(outcome: Outcome, socket_unit: str | None, peer: Peer | None) -> None:
    status = outcome.status
    signal_name = None
    if status is not None and status.signal is not None:
        try:
            signal_name = signal.Signals(status.signal).name
        except ValueError:
            signal_name = str(status.signal)
    who = "" if outcome.uid is None else f" as {outcome.user} ({outcome.uid})"
    where = "" if peer is None else f" for {describe_peer(peer)}"
    if outcome.failure is not None:
        text = f"failed at {outcome.stage}: {outcome.failure}"
    else:
        text = str(status)
    logs.event(
        logger, logging.WARNING if outcome.failure is not None else logging.INFO, "invocation",
        f"{outcome.unit} {outcome.invocation}{where}{who}: {text} after {outcome.seconds:.3f} s",
        unit=outcome.unit, socket=socket_unit, invocation=outcome.invocation,
        peer=describe_peer(peer), uid=outcome.uid, user=outcome.user,
        seconds=round(outcome.seconds, 6),
        exit_code=None if status is None else status.code, signal=signal_name,
        failure=outcome.failure, stage=outcome.stage,
        timings={step: round(seconds, 6) for step, seconds in outcome.timings},
    )  # fmt: skip


def log_reject(unit: str, peer: Peer | None, reason: str) -> None:
    """A refused connection: the socket unit, the peer, and a bounded reason."""
    logs.event(
        logger, logging.INFO, "reject",
        f"{unit}: rejected {describe_peer(peer)}: {reason}",
        unit=unit, peer=describe_peer(peer), reason=reason,
    )  # fmt: skip


async def relay_output(fd: int, unit: str, invocation: str) -> None:
    """Log each line a handler writes to its journal stream, as systemd's journal would keep it:
    an ``output`` event naming the unit and invocation. Ends at EOF (every process of the
    handler closed the pipe)."""
    stream = trio.lowlevel.FdStream(fd)
    pending = b""
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            while len(pending) >= OUTPUT_LINE_MAX:  # a long line is logged in pieces
                lines.append(pending[:OUTPUT_LINE_MAX])
                pending = pending[OUTPUT_LINE_MAX:]
            for line in lines:
                for start in range(0, max(len(line), 1), OUTPUT_LINE_MAX):
                    _log_output(unit, invocation, line[start : start + OUTPUT_LINE_MAX])
    if pending:
        _log_output(unit, invocation, pending)


def _log_output(unit: str, invocation: str, line: bytes) -> None:
    text = line.decode("utf-8", "backslashreplace").rstrip("\r")
    logs.event(
        logger, logging.INFO, "output", f"{unit}[{invocation[:8]}]: {text}",
        unit=unit, invocation=invocation, text=text,
    )  # fmt: skip
