"""Allocation latency of the UID pool's pure core at 0, 50, 90, 99 and 100 % occupancy.

Pure-core numbers only: this times ``activator.uidpool.Pool`` in one process, with no lock files,
no probes (NSS, IPC, /proc), no trio and no I/O. The full allocation path adds those on top; these
figures are the floor it stands on, and show that the bookkeeping costs the same at any occupancy.

The pool is the default range 61184-65519 (4336 UIDs), every UID probed free first. At each
occupancy, that share of the pool is leased and held; then each sample allocates one more UID as
the async layer would (``take`` with the UID hashed from a fresh user name preferred, then
``lease``) and releases it again, so the occupancy stays put. At 100 % no UID is free and the
sample is the ``take`` that learns it. Times are wall clock (``perf_counter_ns``), garbage
collector on, as in the server.

Run: ``python bench/uidpool_latency.py [--samples N]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

from activator.uidpool import Lease, Pool, Source, hash_uid

FIRST, LAST = 61184, 65519
OCCUPANCIES = (0.0, 0.5, 0.9, 0.99, 1.0)


def percentile(samples: list[int], fraction: float) -> float:
    """The ``fraction`` percentile of ``samples`` (nanoseconds), nearest rank, in microseconds."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank] / 1000


def fresh_pool() -> Pool:
    pool = Pool(FIRST, LAST)
    while batch := pool.to_check(0.0, 1024):
        pool.checked(dict.fromkeys(batch), 0.0)
    return pool


def lease_for(uid: int, user: str, source: Source) -> Lease:
    return Lease(
        uid=uid, user=user, unit=f"{user}.service", invocation=user, source=source, started=0.0
    )


def measure(occupancy: float, samples: int) -> dict[str, object]:
    pool = fresh_pool()
    held = round(occupancy * pool.size)
    for i in range(held):
        taken = pool.take()
        assert taken is not None
        pool.lease(lease_for(taken[0], f"held{i}", taken[1]))
    allocate: list[int] = []
    release: list[int] = []
    steps = pool.steps
    clock = time.perf_counter_ns
    for i in range(samples):
        user = f"bench{i}"
        preferred = [(hash_uid(user, FIRST, LAST), Source.NAME_HASH)]
        t0 = clock()
        taken = pool.take(preferred)
        if taken is not None:
            pool.lease(lease_for(taken[0], user, taken[1]))
        t1 = clock()
        allocate.append(t1 - t0)
        if taken is not None:
            t2 = clock()
            pool.release(taken[0], 0.0)
            release.append(clock() - t2)
    return {
        "occupancy": occupancy,
        "held": held,
        "allocate": allocate,
        "release": release,
        "steps": (pool.steps - steps) / samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000, help="samples per occupancy")
    args = parser.parse_args()
    print(
        f"UID pool pure core, {FIRST}-{LAST} ({LAST - FIRST + 1} UIDs), {args.samples} samples "
        f"per row; Python {platform.python_version()} on {platform.machine()}; "
        "no locks, no probes, no I/O."
    )
    print()
    print(
        "| occupancy | leased | take+lease p50 (µs) | take+lease p99 (µs) "
        "| release p50 (µs) | release p99 (µs) | queue steps per cycle |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for occupancy in OCCUPANCIES:
        row = measure(occupancy, args.samples)
        allocate, release = row["allocate"], row["release"]
        assert isinstance(allocate, list)
        assert isinstance(release, list)
        rel = (
            f"{percentile(release, 0.5):.2f} | {percentile(release, 0.99):.2f}"
            if release
            else "n/a (none free) | n/a"
        )
        print(
            f"| {occupancy:.0%} | {row['held']} | {percentile(allocate, 0.5):.2f} "
            f"| {percentile(allocate, 0.99):.2f} | {rel} | {row['steps']:.2f} |"
        )


if __name__ == "__main__":
    main()
