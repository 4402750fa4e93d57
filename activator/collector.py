"""Python's full garbage collections, kept away from a busy event loop.

Rule 1: a full (generation 2) collection walks every object of the process, and its time grows
with the live invocations: measured here, about 200 ms with the whole pool (4336 connections)
held, while a young collection stays at a few milliseconds. CPython starts a full collection
whenever enough objects survived, busy or not. ``serve`` therefore turns automatic full
collections off and runs them itself, from a task: when few invocations are live (the pause is
short then), and at the latest every :data:`FORCED_AFTER` seconds (so that cycles made during a
long busy spell are still freed; that one pause is the price).

Rule 2: what survives start-up (the unit catalog, the modules) is frozen out of every
collection (``gc.freeze``): it lives as long as the process.

:func:`should_collect` is the pure decision.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Final

import trio

#: Live invocations at most for a full collection to run at once.
QUIET: Final = 64
#: Seconds after which a full collection runs however busy the loop is.
FORCED_AFTER: Final = 600.0
#: How often the task looks.
INTERVAL: Final = 5.0
#: CPython's third threshold that never triggers: full collections are ours alone.
_NEVER: Final = 2**31 - 1


def should_collect(live: int, since_last: float, promoted: int) -> bool:
    """Whether to run a full collection now: something reached the old generation since the
    last one (``promoted``: middle collections since), and the loop is quiet or it is overdue."""
    return promoted > 0 and (live <= QUIET or since_last >= FORCED_AFTER)


async def collect_when_quiet(live: Callable[[], int]) -> None:
    """Freeze what start-up made, take full collections over, and run them when
    :func:`should_collect` says (``live``: how many invocations run now). Runs until
    cancelled; then CPython's thresholds are as before."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    last = time.monotonic()
    try:
        while True:
            await trio.sleep(INTERVAL)
            now = time.monotonic()
            if should_collect(live(), now - last, gc.get_count()[2]):
                gc.collect(2)
                last = time.monotonic()
    finally:
        gc.set_threshold(young, middle, old)
