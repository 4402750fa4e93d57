"""How long the event loop is blocked: a trio instrument, off unless asked for.

Rule 1: it costs nothing when off. :func:`instruments` returns an empty list unless
``$ACTIVATOR_LOOP_WATCH`` names a file, and trio calls no hook of an instrument it was never
given.

Rule 2: on, it measures each task step (``before_task_step`` to ``after_task_step``): a step is
the time the loop runs one task's code without going back to I/O, so the longest step is the
longest the loop was blocked by our code (a blocking syscall, a long computation). Steps of at
least :data:`RECORD_MS` are kept with their wall-clock time and task name (the slowest
:data:`KEEP` of them), so a reader can look at one time window only (a load phase, not the
start-up). At the end of the run (``after_run``) it writes one JSON object to the file.

Garbage collections are timed too (``gc.callbacks``): a collection pauses the loop wherever it
happens to run, so it shows up in some task's step.

The file: ``{"steps": N, "max_ms": X, "max_cpu_ms": Y, "over_10ms": K, "gc_count": [g0, g1, g2],
"gc_max_ms": [g0, g1, g2], "slow": [[unix_time, ms, cpu_ms, task], ...]}``.
"""

from __future__ import annotations

import gc
import heapq
import json
import os
import time
from typing import Final

import trio

#: The environment variable naming the report file.
ENVIRONMENT: Final = "ACTIVATOR_LOOP_WATCH"
#: Steps at least this long (ms) are kept with their time and task.
RECORD_MS: Final = 1.0
#: How many slow steps are kept (the slowest).
KEEP: Final = 2000
#: The issue's bound on a blocked loop.
LIMIT_MS: Final = 10.0


class LoopWatch(trio.abc.Instrument):
    """Measures every task step; writes the report to ``path`` when the run ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.steps = 0
        self.max_ms = 0.0
        self.over_limit = 0
        self.max_cpu_ms = 0.0
        #: A min-heap by wall-clock ms: (ms, unix time, CPU ms, task name).
        self.slow: list[tuple[float, float, float, str]] = []
        self._started = 0.0
        self._cpu_started = 0.0
        #: Garbage collections and the longest pause, per generation.
        self.gc_count = [0, 0, 0]
        self.gc_max_ms = [0.0, 0.0, 0.0]
        self._gc_started = 0.0

    def before_run(self) -> None:
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Time each garbage collection: a pause of the whole interpreter, so of the loop."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_started) * 1000
        generation = info.get("generation", 0)
        self.gc_count[generation] += 1
        self.gc_max_ms[generation] = max(self.gc_max_ms[generation], ms)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()
        self._cpu_started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        ms = (time.perf_counter() - self._started) * 1000
        self.steps += 1
        if ms < RECORD_MS:
            return
        cpu_ms = (time.thread_time() - self._cpu_started) * 1000
        self.max_ms = max(self.max_ms, ms)
        self.max_cpu_ms = max(self.max_cpu_ms, cpu_ms)
        if ms >= LIMIT_MS:
            self.over_limit += 1
        entry = (ms, time.time(), round(cpu_ms, 3), task.name)
        if len(self.slow) < KEEP:
            heapq.heappush(self.slow, entry)
        else:
            heapq.heappushpop(self.slow, entry)

    def report(self) -> dict[str, object]:
        """What the file gets: counts, the maximum, the slow steps in time order."""
        slow = sorted((when, round(ms, 3), cpu, task) for ms, when, cpu, task in self.slow)
        return {
            "steps": self.steps,
            "max_ms": round(self.max_ms, 3),
            "max_cpu_ms": round(self.max_cpu_ms, 3),
            "over_10ms": self.over_limit,
            "gc_count": self.gc_count,
            "gc_max_ms": [round(ms, 3) for ms in self.gc_max_ms],
            "slow": slow,
        }

    def after_run(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(self.report(), file)
        os.replace(temporary, self.path)


def instruments(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[LoopWatch]:
    """The instruments to give ``trio.run``: a :class:`LoopWatch` when ``environ`` names a
    report file in :data:`ENVIRONMENT`, else none."""
    path = environ.get(ENVIRONMENT)
    return [LoopWatch(path)] if path else []
