"""The loop watch: off without its variable, and on, the blocked step it reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import trio

from activator import loopwatch


def test_off_without_the_variable() -> None:
    assert loopwatch.instruments({}) == []
    assert loopwatch.instruments({loopwatch.ENVIRONMENT: ""}) == []


def test_reports_a_step_that_blocks_the_loop(tmp_path: Path) -> None:
    report = tmp_path / "loop.json"
    watches = loopwatch.instruments({loopwatch.ENVIRONMENT: str(report)})

    async def blocker() -> None:
        await trio.lowlevel.checkpoint()
        time.sleep(0.03)  # noqa: ASYNC251 (blocks the loop on purpose)
        await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocker, name="blocker")

    trio.run(main, instruments=watches)
    written = json.loads(report.read_text())
    assert written["max_ms"] >= 30
    assert written["over_10ms"] >= 1
    assert any(task == "blocker" and ms >= 30 for _, ms, _, task in written["slow"])
