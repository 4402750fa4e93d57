"""The serve bench, one command: ``activator serve`` against the C sandboxed server, same run.

    .venv/bin/python bench/serve/run.py [-n 1000] [-r 1] [-c "1 8 64"] [--no-pool] [--keep]

As root, from the checkout. It starts ``activator serve`` on ``bench/serve/units`` (the shared
echo handler, each connection a fresh dynamic user in the full sandbox) with the loop watch on
(:mod:`activator.loopwatch`), then:

1. load: ``../shared/bench/compare.sh -p ref-sandbox -s activator=47400`` (closed-loop C client,
   connect, one line, echo, EOF) at each concurrency; one table: conn/s, p50, p99 and the
   ratios to ``ref-sandbox``. Meanwhile one connection is held open (its handler waits for its
   line), and ``getent passwd`` of its dynamic user runs every 50 ms: its p99 is printed.
2. pool (unless ``--no-pool``): as many held connections as the pool has UIDs, plus one; the
   held ones must all get a UID and answer their line, the extra one meets the exhaustion
   policy (activator's default: wait ``wait_timeout_sec``, then close). Prints activator's RSS
   and open descriptors at idle, with the pool full, and once all is released.
3. The loop: the longest task step of activator's event loop during the load, and in the whole
   run (the issue's bound is 10 ms).

Bounded in time (each phase has a deadline; the whole run is about 2-4 minutes with the
defaults), it stops activator by PID, checks that no lease of the bench unit is left, and
removes ``$BENCH_DIR`` (``/opt/activator-bench``) unless ``--keep``. Keep ``$BENCH_DIR`` at
its default: the bench unit's ``ExecStart=`` names ``/opt/activator-bench/bin/handler``. Raw
figures are kept in ``$BENCH_DIR`` meanwhile (``raw.txt``, ``activator.log``, ``loop.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
PORT = 47400
UNIT_PREFIX = "bench@"
LEASES = Path("/run/activator/uid")
POOL_SIZE = 65519 - 61184 + 1  # the default pool, 4336 UIDs
#: Descriptors for activator and for this client in the pool phase (about 3 per connection).
NOFILE = 65536


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    bench_dir = Path(os.environ.get("BENCH_DIR", "/opt/activator-bench"))
    shared = Path(os.environ.get("SHARED_BENCH", CHECKOUT.parent / "shared" / "bench"))
    os.environ["BENCH_DIR"] = str(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    _raise_nofile()
    # compare.sh builds the handler; it must exist before activator's first connection.
    subprocess.run(
        ["bash", str(shared / "compare.sh"), "-n", "1", "-r", "1", "-c", "1", "-p", "ref-bare"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    loop_file = bench_dir / "loop.json"
    with contextlib.suppress(FileNotFoundError):
        loop_file.unlink()
    server = _start_activator(bench_dir, loop_file)
    try:
        results = _phases(args, shared, bench_dir, server)
    finally:
        _stop(server)
    loop = json.loads(loop_file.read_text()) if loop_file.exists() else None
    _print_loop(loop, results.get("load_window"))
    left = _bench_leases()
    invocations = _count_events(bench_dir / "activator.log", '"event": "invocation"')
    print(f"\nactivator: {invocations} invocations, leases of the bench unit left: {len(left)}")
    if not args.keep:
        shutil.rmtree(bench_dir, ignore_errors=True)
    return 1 if left else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="connections per measurement")
    parser.add_argument("-r", type=int, default=1, help="rounds (medians are printed)")
    parser.add_argument("-c", default="1 8 64", help="concurrencies")
    parser.add_argument("--no-pool", action="store_true", help="skip the full-pool phase")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE, help="UIDs in the pool")
    parser.add_argument("--keep", action="store_true", help="keep $BENCH_DIR")
    return parser


def _raise_nofile() -> None:
    """Enough descriptors for the pool phase, here and in activator (inherited)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(NOFILE, hard if hard != resource.RLIM_INFINITY else NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start_activator(bench_dir: Path, loop_file: Path) -> subprocess.Popen[bytes]:
    log = bench_dir / "activator.log"
    env = dict(os.environ, ACTIVATOR_LOOP_WATCH=str(loop_file))
    command = [
        str(CHECKOUT / ".venv/bin/python"),
        str(HERE / "serve.py"),
        "serve",
        "--config",
        str(HERE / "activator.toml"),
    ]
    with open(log, "wb") as stderr:
        server = subprocess.Popen(command, stderr=stderr, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while '"event": "ready"' not in log.read_text(errors="replace"):
        if server.poll() is not None or time.monotonic() > deadline:
            _stop(server)
            sys.exit(f"activator did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return server


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _phases(
    args: argparse.Namespace, shared: Path, bench_dir: Path, server: subprocess.Popen[bytes]
) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
    idle = _process_figures(server.pid)
    # --- load, with one held connection whose user getent looks up -----------------------
    held = socket.create_connection(("127.0.0.1", PORT))
    try:
        user = _wait_for_user(held)
        prober = _Prober(user)
        prober.start()
        started = time.time()
        compare = [
            "bash", str(shared / "compare.sh"), "-n", str(args.n), "-r", str(args.r),
            "-c", args.c, "-p", "ref-sandbox", "-s", f"activator={PORT}",
        ]  # fmt: skip
        subprocess.run(compare, check=True, stdout=subprocess.DEVNULL, timeout=1800)
        results["load_window"] = (started, time.time())
        prober.stop()
    finally:
        held.close()
    print(_load_table(bench_dir / "raw.txt", args.c))
    print(f"\ngetent passwd {prober.user} during the load: {prober.summary()}")
    # --- the full pool ----------------------------------------------------------------------
    if not args.no_pool:
        _wait_idle(server.pid, idle, timeout=30)
        _pool_phase(server.pid, args.pool_size, idle, bench_dir)
    return results


def _wait_for_user(held: socket.socket, timeout: float = 10.0) -> str:
    """The dynamic user of the held connection (the bench unit's only lease before the load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leases = _bench_leases()
        if leases:
            return str(leases[0]["user"])
        time.sleep(0.02)
    msg = "the held connection got no lease"
    raise SystemExit(msg)


def _bench_leases() -> list[dict[str, object]]:
    """The lease records of the bench unit (other activators' leases are skipped)."""
    out = []
    with contextlib.suppress(FileNotFoundError), os.scandir(LEASES) as entries:
        for entry in entries:
            try:
                record = json.loads(Path(entry.path).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and str(record.get("unit", "")).startswith(UNIT_PREFIX):
                out.append(record)
    return out


class _Prober(threading.Thread):
    """``getent passwd USER`` every 50 ms (bounded: at most 20000 lookups)."""

    def __init__(self, user: str) -> None:
        super().__init__(daemon=True)
        self.user = user
        self.times: list[float] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set() and len(self.times) < 20000:
            started = time.perf_counter()
            done = subprocess.run(["getent", "passwd", self.user], capture_output=True)
            elapsed = (time.perf_counter() - started) * 1000
            if done.returncode == 0 and done.stdout.startswith(self.user.encode() + b":"):
                self.times.append(elapsed)
            else:
                self.failures += 1
            self._stop_event.wait(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def summary(self) -> str:
        if not self.times:
            return f"no answer ({self.failures} failures)"
        ordered = sorted(self.times)
        p50 = ordered[len(ordered) // 2]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{len(ordered)} lookups, p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms"
            f" (the getent process included), {self.failures} failed"
        )


def _load_table(raw: Path, concurrencies: str) -> str:
    """One markdown table from compare.sh's raw lines (medians over rounds)."""
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    for line in raw.read_text().splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "label" not in fields or fields["label"] == "warmup":
            continue
        numbers = {k: float(v) for k, v in fields.items() if k != "label"}
        rows.setdefault((fields["label"], int(numbers["conc"])), []).append(numbers)

    def median(label: str, conc: int, key: str) -> float:
        return statistics.median(r[key] for r in rows[(label, conc)])

    out = [
        "| system | conc | conn/s | ratio to ref-sandbox | p50 ms | p99 ms | p99 ratio | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in ("ref-sandbox", "activator"):
        for conc in (int(c) for c in concurrencies.split()):
            if (label, conc) not in rows:
                continue
            cps = median(label, conc, "cps")
            ref = median("ref-sandbox", conc, "cps") if ("ref-sandbox", conc) in rows else 0
            p99 = median(label, conc, "p99_ms")
            ref99 = median("ref-sandbox", conc, "p99_ms") if ref else 0
            errors = int(sum(r["err"] for r in rows[(label, conc)]))
            out.append(
                f"| {label} | {conc} | {cps:.0f} | {cps / ref if ref else 0:.2f} | "
                f"{median(label, conc, 'p50_ms'):.2f} | {p99:.1f} | "
                f"{p99 / ref99 if ref99 else 0:.1f} | {errors} |"
            )
    return "\n".join(out)


# --- the full pool ------------------------------------------------------------------------


def _process_figures(pid: int) -> tuple[int, int]:
    """(RSS in kB, open descriptors) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _wait_idle(pid: int, idle: tuple[int, int], timeout: float) -> tuple[int, int]:
    """Wait until no lease of the bench unit is left and the descriptors are back to ``idle``'s
    count (or ``timeout``); the figures then."""
    deadline = time.monotonic() + timeout
    figures = _process_figures(pid)
    while time.monotonic() < deadline:
        figures = _process_figures(pid)
        if not _bench_leases() and figures[1] <= idle[1]:
            break
        time.sleep(0.2)
    return figures


@contextlib.contextmanager
def _connections(count: int, deadline: float) -> Iterator[list[socket.socket]]:
    """``count`` connections to the bench port (non-blocking connects, in batches)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", PORT))
            if len(socks) % 64 == 0:
                # Pace the connects: wait (a bounded time) for this batch to be established.
                batch = select.poll()
                for connecting in socks[-64:]:
                    batch.register(connecting.fileno(), select.POLLOUT)
                waited = time.monotonic() + 5
                ready: set[int] = set()
                while len(ready) < 64 and time.monotonic() < waited:
                    ready.update(fd for fd, _ in batch.poll(100))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _pool_phase(pid: int, pool_size: int, idle: tuple[int, int], bench_dir: Path) -> None:
    others = _other_leases()
    target = pool_size - others
    started = time.monotonic()
    deadline = started + 300
    rejects_before = _count_events(bench_dir / "activator.log", '"event": "reject"')
    with _connections(target + 1, deadline) as socks:
        # Wait until every UID the pool can give us is leased (or nothing moves for 20 s).
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            leased = len(_bench_leases())
            if leased != last:
                last, last_change = leased, time.monotonic()
            if leased >= target or time.monotonic() - last_change > 20:
                break
            time.sleep(0.5)
        # Leases come first; wait until the spawner has a handler for each (or 20 s of nothing).
        running, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_running = _spawner_children(pid)
            if now_running != running:
                running, last_change = now_running, time.monotonic()
            if running >= last or time.monotonic() - last_change > 20:
                break
            time.sleep(0.5)
        fill_seconds = time.monotonic() - started
        full = _process_figures(pid)
        spawner = _spawner_figures(pid)
        # The extra one: the exhaustion policy (wait, then close) ends it; give it its time.
        closed = _wait_closed(socks, timeout=15)
        answered, failed = _echo_all([s for i, s in enumerate(socks) if i not in closed], deadline)
    after = _wait_idle(pid, idle, timeout=120)
    rejects = _count_events(bench_dir / "activator.log", '"event": "reject"') - rejects_before
    print(
        "\n| full pool | value |\n|---|---|\n"
        f"| connections opened | {len(socks)} (pool {pool_size}, held by other activators "
        f"{others}) |\n"
        f"| leased at once, handlers running | {last}, {running} (in {fill_seconds:.1f} s) |\n"
        f"| closed by activator unanswered (exhaustion policy) | {len(closed)}; "
        f"reject events {rejects} |\n"
        f"| held connections that echoed their line | {answered} (failed {failed}) |\n"
        f"| activator RSS idle / full / after | {idle[0] / 1024:.0f} / {full[0] / 1024:.0f} / "
        f"{after[0] / 1024:.0f} MB |\n"
        f"| activator open fds idle / full / after | {idle[1]} / {full[1]} / {after[1]} |\n"
        f"| spawner RSS / fds full | {spawner[0] / 1024:.0f} MB / {spawner[1]} |"
    )


def _other_leases() -> int:
    with contextlib.suppress(FileNotFoundError):
        return len(os.listdir(LEASES)) - len(_bench_leases())
    return 0


def _spawner_pid(pid: int) -> int | None:
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if "spawner" in Path(f"/proc/{child}/cmdline").read_text():
                return int(child)
    return None


def _spawner_figures(pid: int) -> tuple[int, int]:
    spawner = _spawner_pid(pid)
    return (0, 0) if spawner is None else _process_figures(spawner)


def _spawner_children(pid: int) -> int:
    """How many handlers the spawner has (its children)."""
    spawner = _spawner_pid(pid)
    if spawner is None:
        return 0
    return len(Path(f"/proc/{spawner}/task/{spawner}/children").read_text().split())


def _wait_closed(socks: list[socket.socket], timeout: float) -> set[int]:
    """Indexes of the connections the server closed (EOF or reset) within ``timeout``."""
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    poller = select.poll()
    by_fd = {sock.fileno(): i for i, sock in enumerate(socks)}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLRDHUP)
    while time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            closed.add(by_fd[fd])
            poller.unregister(fd)
        if closed:  # the extra one is out: give stragglers a moment, no more
            deadline = min(deadline, time.monotonic() + 1)
    return closed


def _echo_all(socks: list[socket.socket], deadline: float) -> tuple[int, int]:
    """Send one line on each held connection, read the echo to EOF; (answered, failed)."""
    answered = failed = 0
    pending: dict[int, tuple[socket.socket, bytearray]] = {}
    for i, sock in enumerate(socks):
        try:
            sock.send(b"held %d\n" % i)
            pending[sock.fileno()] = (sock, bytearray())
        except OSError:
            failed += 1
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(1000):
            sock, got = pending[fd]
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
                got.clear()
            if data:
                got += data
                continue
            poller.unregister(fd)
            del pending[fd]
            if got.startswith(b"held "):
                answered += 1
            else:
                failed += 1
    return answered, failed + len(pending)


def _count_events(log: Path, needle: str) -> int:
    with contextlib.suppress(FileNotFoundError), open(log, errors="replace") as file:
        return sum(needle in line for line in file)
    return 0


def _print_loop(loop: dict[str, object] | None, window: tuple[float, float] | None) -> None:
    if loop is None:
        print("\nloop watch: no report (activator did not write $ACTIVATOR_LOOP_WATCH)")
        return
    slow = loop.get("slow", [])
    assert isinstance(slow, list)
    in_load = [(ms, cpu) for when, ms, cpu, _ in slow if window and window[0] <= when <= window[1]]
    worst = max(slow, key=lambda entry: entry[1], default=None)
    print(
        "\n| event loop (longest task step) | wall ms | CPU ms |\n|---|---:|---:|\n"
        f"| during the load | {max((w for w, _ in in_load), default=0.0):.1f} | "
        f"{max((c for _, c in in_load), default=0.0):.1f} |\n"
        f"| whole run ({worst[3] if worst else '-'}) | {loop['max_ms']:.1f} | "
        f"{loop['max_cpu_ms']:.1f} |\n\n"
        f"{loop['steps']} task steps, {loop['over_10ms']} over 10 ms wall-clock (CPU time is what "
        "our code spent; wall-clock adds the time the process was preempted); garbage "
        f"collections per generation {loop.get('gc_count')}, longest pause (ms) "
        f"{loop.get('gc_max_ms')}"
    )


if __name__ == "__main__":
    sys.exit(main())
