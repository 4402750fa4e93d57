"""Allocation latency of the full lease path at 0, 50, 90, 99 and 100 % pool occupancy, as root.

    python bench/allocation_latency.py [--samples N]

What is timed is :meth:`activator.leases.LeaseService.acquire` as an invocation calls it: the
pool's pre-checked free set gives a UID (after the UID hashed from the user name, for a plain
service), and its lock file is created, ``flock``-ed and written with the lease record. The
background scan (processes, IPC, NSS over the whole pool) runs before the samples, as it does at
start-up; it is not on this path, by design. The pool is the default range 61184-65519 (4336
UIDs); each occupancy is reached by leasing and holding that share of it (a lock file each, as a
busy server would), then every sample acquires one more lease and releases it again, so the
occupancy stays put. At 100 % the sample is the acquire that learns that nothing is free (the
``reject`` policy). The lock files live in a fresh directory under /run, as in production.

``bench/uidpool_latency.py`` times the pure bookkeeping alone, for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time

import trio

from activator.leases import LeaseService, PoolExhausted, Vacated
from activator.uidpool import Lease

FIRST, LAST = 61184, 65519
OCCUPANCIES = (0.0, 0.5, 0.9, 0.99, 1.0)


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples`` (seconds), in microseconds."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank] * 1e6


async def measure(samples: int, directory: str) -> list[tuple[float, int, float, float]]:
    """(occupancy, leased, p50 µs, p99 µs) for each occupancy."""
    service = LeaseService(
        FIRST, LAST, lease_directory=directory, systemd_directory=os.path.join(directory, "none")
    )
    size = LAST - FIRST + 1
    rows = []
    held: list[Lease] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for occupancy in OCCUPANCIES:
            # UIDs in use on the host (a process, a user, IPC) are never leasable: the share is
            # of the pool, and the fill stops where nothing is left.
            target = round(size * occupancy)
            while len(held) < target:
                try:
                    lease = await service.acquire("fill.service", "0" * 32, per_connection=True)
                except PoolExhausted:
                    break
                held.append(lease)
            times: list[float] = []
            for number in range(samples):
                unit = f"bench{number}.service"
                started = time.perf_counter()
                try:
                    lease = await service.acquire(unit, f"{number:032x}")
                except PoolExhausted:
                    times.append(time.perf_counter() - started)
                    continue
                times.append(time.perf_counter() - started)
                await service.release(lease, Vacated(lease.uid, "never ran"))
            rows.append((occupancy, len(held), percentile(times, 0.5), percentile(times, 0.99)))
        for lease in held:
            await service.release(lease, Vacated(lease.uid, "never ran"))
        nursery.cancel_scope.cancel()
    service.close()
    return rows


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="samples per occupancy")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one lock file per held lease
    directory = tempfile.mkdtemp(prefix="activator-bench-", dir="/run")
    try:
        rows = trio.run(measure, args.samples, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"LeaseService.acquire, pool {FIRST}-{LAST}, {args.samples} samples per row, ")
    print(f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    print()
    print("| occupancy | leases held | p50 µs | p99 µs |")
    print("|---:|---:|---:|---:|")
    for occupancy, held, p50, p99 in rows:
        print(f"| {occupancy:.0%} | {held} | {p50:.0f} | {p99:.0f} |")


if __name__ == "__main__":
    main()
