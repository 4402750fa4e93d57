"""When ``serve`` runs a full garbage collection: when the loop is quiet, or when overdue."""

from __future__ import annotations

import gc

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from activator.collector import FORCED_AFTER, QUIET, collect_when_quiet, should_collect


@given(st.integers(0, 10_000), st.floats(0, 10 * FORCED_AFTER), st.integers(0, 100))
def test_a_full_collection_waits_for_a_quiet_loop_unless_overdue(
    live: int, since: float, promoted: int
) -> None:
    decided = should_collect(live, since, promoted)
    if promoted == 0:
        assert not decided  # nothing new in the old generation: nothing to free
    elif live <= QUIET:
        assert decided
    else:
        assert decided == (since >= FORCED_AFTER)


async def test_full_collections_are_taken_over_and_handed_back() -> None:
    before = gc.get_threshold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_when_quiet, lambda: 0)
        await trio.testing.wait_all_tasks_blocked()
        young, middle, old = gc.get_threshold()
        assert (young, middle) == before[:2]
        assert old > 10**9  # CPython never starts one by itself
        assert gc.get_freeze_count() > 0  # start-up's objects are out of every collection
        nursery.cancel_scope.cancel()
    assert gc.get_threshold() == before
    gc.unfreeze()
