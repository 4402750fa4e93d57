"""Spawns per second through the spawner against a plain ``os.posix_spawn``, as root.

    python bench/spawner_rate.py [-n COUNT] [-r ROUNDS]

Runs ``/bin/true`` COUNT times in each configuration, one at a time and 8 at a time, spread
over ROUNDS interleaved rounds, and prints a markdown table with the median rate, the median
ratio to posix_spawn at the same concurrency in the same round, and the spawner's resident
memory. The sandboxed plan is what a DynamicUser=yes handler gets (PID,
mount and IPC namespaces, read-only /, private /dev, /dev/shm, /dev/mqueue, /tmp and /proc, all
capabilities dropped, a UID of 65090-65099); the bare plan runs as the same UIDs with no
namespace and no mount, to separate the sandbox's cost from the spawner's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from activator.sandbox import Mount, MountKind, SpawnPlan
from activator.spawner import Spawner

SANDBOX = (
    Mount(MountKind.READ_ONLY, "/"),
    Mount(MountKind.DEVICES, "/dev"),
    Mount(MountKind.TMPFS, "/dev/shm", options="mode=1777"),
    Mount(MountKind.MQUEUE, "/dev/mqueue"),
    Mount(MountKind.TMPFS, "/tmp", options="mode=1777"),
    Mount(MountKind.PROC, "/proc", noexec=True),
)
UIDS = range(65090, 65100)


def plan(number: int, *, sandboxed: bool) -> SpawnPlan:
    uid = UIDS[number % len(UIDS)]
    return SpawnPlan(
        invocation=f"{number:032x}",
        unit="bench.service",
        path="/bin/true",
        argv=("/bin/true",),
        env=(("PATH", "/usr/bin:/bin"),),
        uid=uid,
        gid=uid,
        new_pid=sandboxed,
        new_mount=sandboxed,
        new_ipc=sandboxed,
        mounts=SANDBOX if sandboxed else (),
    )


def posix_spawn_rate(count: int, concurrency: int) -> float:
    """/bin/true started with os.posix_spawn from this process, ``concurrency`` at a time."""
    null = os.open("/dev/null", os.O_RDWR)
    actions = [(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]
    started = time.perf_counter()
    running = 0
    for _ in range(count):
        if running == concurrency:
            os.wait()
            running -= 1
        os.posix_spawn("/bin/true", ["/bin/true"], {}, file_actions=actions)
        running += 1
    while running:
        os.wait()
        running -= 1
    elapsed = time.perf_counter() - started
    os.close(null)
    return count / elapsed


async def spawner_rate(spawner: Spawner, count: int, concurrency: int, sandboxed: bool) -> float:
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            handler = await spawner.spawn(plan(number, sandboxed=sandboxed))
            status = await handler.wait()
            assert status.code == 0, status

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - started)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


CONFIGURATIONS = (
    ("os.posix_spawn", None),
    ("spawner, bare plan", False),
    ("spawner, sandboxed plan", True),
)


async def measure(spawner: Spawner, count: int, rounds: int) -> None:
    """Interleaved rounds (this machine's speed drifts; ratios within a round do not)."""
    rss_start = rss_kib(spawner.pid)
    rates: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(spawner.serve)
        await spawner_rate(spawner, 50, 4, True)  # warm up
        for _ in range(rounds):
            for concurrency in (1, 8):
                base = 0.0
                for name, sandboxed in CONFIGURATIONS:
                    if sandboxed is None:
                        rate = base = posix_spawn_rate(count // rounds, concurrency)
                    else:
                        rate = await spawner_rate(spawner, count // rounds, concurrency, sandboxed)
                    rates.setdefault((name, concurrency), []).append(rate)
                    ratios.setdefault((name, concurrency), []).append(rate / base)
        rss_end = rss_kib(spawner.pid)
        await spawner.aclose()
    print(
        f"/bin/true, {count // rounds} spawns per configuration in each of {rounds} interleaved"
        f" rounds; medians; {os.cpu_count()} CPUs\n"
    )
    print("| how | concurrency | spawns/s | ratio to posix_spawn |")
    print("|---|---:|---:|---:|")
    for (name, concurrency), values in rates.items():
        ratio = statistics.median(ratios[name, concurrency])
        rate = statistics.median(values)
        print(f"| {name} | {concurrency} | {rate:.0f} | {ratio:.2f} |")
    print(f"\nspawner RSS: {rss_start} KiB at start, {rss_end} KiB after the runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=900, help="spawns per configuration")
    parser.add_argument("-r", "--rounds", type=int, default=3)
    arguments = parser.parse_args()
    spawner = Spawner.launch()  # before trio.run: no thread exists yet
    trio.run(measure, spawner, arguments.count, arguments.rounds)


if __name__ == "__main__":
    main()
