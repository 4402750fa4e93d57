"""The soak's clients: one random connection at a time per thread, and the tally of what they saw.

Each connection draws, from its own seeded generator (``random.Random(f"{seed}-{index}")``, so a
run is reproduced by its seed whatever the threads' order), a handler behaviour (the port it
connects to) and a client behaviour:

- ``normal``: send a line-structured payload, half-close, read everything until the end. An
  echoing handler must send back its UID line, its marker and the payload, and end with a clean
  end of file; any other handler exactly its UID line (then an end of file, or a reset: it left
  the payload unread).
- ``reset``: read the UID line, send a large payload (the echo is still under way), then close
  with ``SO_LINGER`` 0: a reset, mid-stream.
- ``silent``: connect and never send; read until the server side closes (the handler's end, or
  ``RuntimeMaxSec=``): the UID line and the marker, then a clean end of file.

Nothing is kept per connection: :class:`Tally` counts outcomes by (client, handler, verdict),
keeps the first few failures, and the set of UIDs seen (at most the pool's size). Every read and
connect has a deadline, so a connection ends in bounded time whatever the server does.
"""

from __future__ import annotations

import collections
import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Final

import attrs

from tests.integration.conftest import in_pool
from tests.soak.handlers import BEHAVIOURS, Behaviour

#: Client behaviours and their weights: mostly whole exchanges, the rest aborts and silences.
CLIENTS: Final = {"normal": 6, "reset": 2, "silent": 2}
#: A client's deadline to connect and to read the UID line.
CONNECT_TIMEOUT: Final = 15.0
#: The margin past a handler's ``RuntimeMaxSec=`` that a reading client waits for the end.
END_MARGIN: Final = 10.0
#: Payload sizes: a normal exchange's, and a reset client's (large: the echo is under way).
NORMAL_PAYLOAD: Final = (1, 8192)
RESET_PAYLOAD: Final = (64 * 1024, 256 * 1024)
#: How long a reset client may spend sending before it aborts anyway.
RESET_SEND_TIMEOUT: Final = 2.0
#: Failures kept with their details (the rest are only counted).
KEPT_FAILURES: Final = 20

_UID_LINE = re.compile(rb"\AUID=(\d+)\n")
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)


@attrs.frozen
class Connection:
    """One connection's draw: its index, client behaviour, handler behaviour and payload."""

    index: int
    client: str
    handler: Behaviour
    payload: bytes


def draw(seed: int, index: int) -> Connection:
    """Connection ``index`` of the run seeded ``seed``."""
    rng = random.Random(f"{seed}-{index}")
    client = rng.choices(list(CLIENTS), weights=list(CLIENTS.values()))[0]
    handler = rng.choice(BEHAVIOURS)
    low, high = RESET_PAYLOAD if client == "reset" else NORMAL_PAYLOAD
    size = rng.randint(low, high)
    # Printable lines: the crash handler reads one line; the rest is echoed byte for byte.
    text = rng.randbytes(size // 2 + 1).hex()[: size - 1]
    lines = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return Connection(index, client, handler, f"{lines}\n".encode())


@attrs.frozen
class Seen:
    """What one connection saw: a verdict (``ok`` or why not) and the UID it was served by."""

    verdict: str
    uid: int | None = None
    detail: str = ""


def _read_to_end(sock: socket.socket, deadline: float) -> tuple[bytes, str]:
    """Everything until the peer's end: (data, ``eof`` | ``reset`` | ``timeout``)."""
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return out, "timeout"
        except ConnectionResetError:
            return out, "reset"
        if not chunk:
            return out, "eof"
        out += chunk


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """The first line (with its newline), or what came before the end / the deadline."""
    out = b""
    while b"\n" not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        sock.settimeout(left)
        try:
            chunk = sock.recv(1)  # no further: the rest is the reset client's to leave unread
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk
    return out


def _uid(answer: bytes) -> int | None:
    found = _UID_LINE.match(answer)
    return int(found.group(1)) if found else None


def _judge(connection: Connection, answer: bytes, end: str, expected_end: set[str]) -> Seen:
    """``answer`` must be the handler's UID line (a pool UID), a marker and, for an echoing
    handler of a normal client, the payload; ``end`` one of ``expected_end``. The verdict is
    ``ok``, or ``ok, MARKER`` for an explained marker other than the first."""
    uid = _uid(answer)
    if uid is None or not in_pool(uid):
        return Seen("no pool UID", uid, repr(answer[:80]))
    if end not in expected_end:
        return Seen(f"ended by {end}", uid)
    handler = connection.handler
    if connection.client == "normal" and not handler.echoes:
        # It left before printing anything else.
        wanted = [f"UID={uid}\n".encode()]
    else:
        wanted = handler.expected(uid)
    for n, head in enumerate(wanted):
        echoed = connection.client == "normal" and handler.echoes
        whole = head + connection.payload if echoed else head
        if answer == whole:
            return Seen("ok" if n == 0 else f"ok, {handler.markers[n].strip()}", uid)
    return Seen("wrong answer", uid, f"{len(answer)} bytes, {answer[:120]!r}")


def normal(connection: Connection, address: tuple[str, int]) -> Seen:
    """Send, half-close, read all."""
    deadline = time.monotonic() + connection.handler.runtime_max_sec + END_MARGIN
    with socket.create_connection(address, timeout=CONNECT_TIMEOUT) as sock:
        try:
            sock.sendall(connection.payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            if connection.handler.echoes:  # only a handler that left may refuse the payload
                return Seen("send refused")
        answer, end = _read_to_end(sock, deadline)
    # A handler that leaves the payload unread ends with a reset; an echo reads it all.
    return _judge(
        connection, answer, end, {"eof"} if connection.handler.echoes else {"eof", "reset"}
    )


def reset(connection: Connection, address: tuple[str, int]) -> Seen:
    """Read the UID line, send a large payload, then abort with a reset."""
    sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    try:
        line = _read_line(sock, time.monotonic() + CONNECT_TIMEOUT)
        uid = _uid(line)
        if uid is None or not in_pool(uid):
            return Seen("no pool UID", uid, repr(line[:80]))
        sock.settimeout(RESET_SEND_TIMEOUT)
        # A handler that does not read (any more) refuses the payload: abort all the same.
        with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
            sock.sendall(connection.payload)
        return Seen("ok", uid)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        sock.close()


def silent(connection: Connection, address: tuple[str, int]) -> Seen:
    """Never send; wait until the server side closes."""
    deadline = time.monotonic() + connection.handler.runtime_max_sec + END_MARGIN
    with socket.create_connection(address, timeout=CONNECT_TIMEOUT) as sock:
        answer, end = _read_to_end(sock, deadline)
    return _judge(connection, answer, end, {"eof"})


CLIENT_RUNS: Final[dict[str, Callable[[Connection, tuple[str, int]], Seen]]] = {
    "normal": normal,
    "reset": reset,
    "silent": silent,
}


class Tally:
    """What the clients saw, counted (thread-safe, bounded in memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.failures: list[str] = []
        self.uids: set[int] = set()

    def add(self, connection: Connection, seen: Seen) -> None:
        with self._lock:
            self.done += 1
            self.counts[connection.client, connection.handler.name, seen.verdict] += 1
            if seen.uid is not None:
                self.uids.add(seen.uid)
            if not seen.verdict.startswith("ok") and len(self.failures) < KEPT_FAILURES:
                self.failures.append(
                    f"#{connection.index} {connection.client} client, {connection.handler.name} "
                    f"handler: {seen.verdict} {seen.detail}"
                )

    def failed(self) -> int:
        """Connections whose verdict was not ``ok``."""
        with self._lock:
            return sum(
                n for (_, _, verdict), n in self.counts.items() if not verdict.startswith("ok")
            )

    def by(self, position: int) -> dict[str, int]:
        """Connections by client behaviour (``position`` 0) or handler behaviour (1)."""
        out: collections.Counter[str] = collections.Counter()
        with self._lock:
            for key, n in self.counts.items():
                out[key[position]] += n
        return dict(sorted(out.items()))

    def verdicts(self) -> dict[str, int]:
        """Connections by verdict."""
        out: collections.Counter[str] = collections.Counter()
        with self._lock:
            for (_, _, verdict), n in self.counts.items():
                out[verdict] += n
        return dict(sorted(out.items()))


def run_one(connection: Connection, ports: dict[str, int], tally: Tally) -> None:
    """Make one connection and count what it saw (an exception is a verdict too)."""
    address = ("127.0.0.1", ports[connection.handler.name])
    try:
        seen = CLIENT_RUNS[connection.client](connection, address)
    except Exception as error:  # any error is this connection's verdict
        seen = Seen(type(error).__name__, detail=str(error))
    tally.add(connection, seen)


def run_clients(
    *,
    make: Callable[[int], Connection],
    count: int,
    threads: int,
    ports: dict[str, int],
    tally: Tally,
    deadline: float,
    on_tick: Callable[[], None],
    tick_seconds: float = 0.5,
) -> int:
    """Run connections ``make(0)`` .. ``make(count - 1)`` from ``threads`` client threads, until
    all are done or ``deadline`` (``time.monotonic()``) passes; call ``on_tick`` from this
    thread every ``tick_seconds`` meanwhile (when it raises, no connection starts any more, and
    the error is raised once the threads are done). The number of connections started."""
    lock = threading.Lock()
    started = 0
    stop = threading.Event()

    def take() -> int | None:
        nonlocal started
        with lock:
            if started >= count or time.monotonic() >= deadline or stop.is_set():
                return None
            started += 1
            return started - 1

    def work() -> None:
        while (index := take()) is not None:
            run_one(make(index), ports, tally)

    workers = [threading.Thread(target=work, name=f"soak-client-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        while alive := [worker for worker in workers if worker.is_alive()]:
            alive[0].join(tick_seconds)
            on_tick()
        on_tick()
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    return started
