"""Invocations per second of ``activator run``-style invocations against plain fork+exec, as root.

    python bench/invocation_rate.py [-n COUNT] [-r ROUNDS]

Each invocation is the whole path a connection or ``activator run`` takes
(:func:`activator.invocation.run_invocation`): a fresh dynamic UID from the pool (lock file and
all), a cgroup, the plan, a spawn through the spawner into new PID, mount and IPC namespaces with
``DynamicUser=yes``'s sandbox (read-only system, private /tmp, /dev/shm, /proc), the wait,
teardown (cgroup killed and drained) and the release. The baseline forks and execs the same
program from a small Python process with no sandbox and no bookkeeping (``os.fork`` +
``execv`` + ``waitpid``), and ``os.posix_spawn`` shows the floor of this machine. The program is
``/bin/true``; COUNT invocations per configuration and concurrency (1 and 8), spread over ROUNDS
interleaved rounds; the table shows medians and the ratio to fork+exec in the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from activator import teardown
from activator.invocation import Runtime, run_invocation
from activator.leases import LeaseService
from activator.plan import Descriptors
from activator.spawner import Spawner
from activator.transient import transient_service

CONCURRENCIES = (1, 8)


def fork_exec_rate(count: int, concurrency: int) -> float:
    """``/bin/true`` by os.fork + execv, ``concurrency`` at a time."""
    started = time.perf_counter()
    running = 0
    for _ in range(count):
        if running == concurrency:
            os.wait()
            running -= 1
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.execv("/bin/true", ["/bin/true"])
            finally:
                os._exit(127)
        running += 1
    while running:
        os.wait()
        running -= 1
    return count / (time.perf_counter() - started)


def posix_spawn_rate(count: int, concurrency: int) -> float:
    """``/bin/true`` by os.posix_spawn, ``concurrency`` at a time."""
    started = time.perf_counter()
    running = 0
    for _ in range(count):
        if running == concurrency:
            os.wait()
            running -= 1
        os.posix_spawn("/bin/true", ["/bin/true"], {})
        running += 1
    while running:
        os.wait()
        running -= 1
    return count / (time.perf_counter() - started)


async def invocation_rate(runtime: Runtime, count: int, concurrency: int) -> float:
    """``count`` whole invocations, ``concurrency`` at a time; every one must exit 0."""
    service, _ = transient_service("bench.service", ["/bin/true"], ["DynamicUser=yes"])
    limiter = trio.CapacityLimiter(concurrency)
    failures: list[str] = []

    async def one() -> None:
        async with limiter:
            outcome = await run_invocation(runtime, service, descriptors=Descriptors(), fds=())
        if outcome.exit_code != 0:
            failures.append(f"{outcome.stage}: {outcome.failure} ({outcome.status})")

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    if failures:
        msg = f"{len(failures)} invocations failed, first: {failures[0]}"
        raise RuntimeError(msg)
    return count / (time.perf_counter() - started)


async def measure(spawner: Spawner, count: int, rounds: int) -> dict[tuple[str, int], list[float]]:
    """Rates per (system, concurrency), one per round."""
    rates: dict[tuple[str, int], list[float]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(spawner.serve)
        cgroups = await trio.to_thread.run_sync(teardown.Cgroups.detect)
        leases = LeaseService(61184, 65519)
        await nursery.start(leases.run)
        runtime = Runtime(spawner, leases, cgroups)
        per_round = max(1, count // rounds)
        for _ in range(rounds):
            for concurrency in CONCURRENCIES:
                rates.setdefault(("fork+exec", concurrency), []).append(
                    fork_exec_rate(per_round, concurrency)
                )
                rates.setdefault(("posix_spawn", concurrency), []).append(
                    posix_spawn_rate(per_round, concurrency)
                )
                rate = await invocation_rate(runtime, per_round, concurrency)
                rates.setdefault(("activator invocation", concurrency), []).append(rate)
        nursery.cancel_scope.cancel()
    leases.close()
    with trio.CancelScope(shield=True):
        await spawner.aclose()
    return rates


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=600, help="invocations per row")
    parser.add_argument("-r", "--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    spawner = Spawner.launch()  # before trio starts any thread
    rates = trio.run(measure, spawner, args.count, args.rounds)
    print(f"/bin/true, {args.count // args.rounds} per row in each of {args.rounds} rounds; ")
    print(f"medians; {os.cpu_count()} CPUs")
    print()
    print("| how | concurrency | per second | ratio to fork+exec |")
    print("|---|---:|---:|---:|")
    for concurrency in CONCURRENCIES:
        base = rates[("fork+exec", concurrency)]
        for system in ("posix_spawn", "fork+exec", "activator invocation"):
            values = rates[(system, concurrency)]
            ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
            print(f"| {system} | {concurrency} | {statistics.median(values):.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
