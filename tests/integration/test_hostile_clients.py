"""Hostile clients against a real ``activator serve``: a SYN flood from spoofed sources, a connect
flood past MaxConnections=, every kind of bad input on the side doors (the control socket, the
userdb socket and ``/metrics``) all at once, and idle userdb clients of many UIDs.

What a user must see meanwhile: a real client still gets its echo, ``/metrics`` answers, a root
``activator status`` answers, ``getent passwd`` of a live dynamic user answers. What must be
true afterwards: activator's descriptors are back to their idle count, its memory grew by a
bounded amount, no lease is left, and nothing the attack did was counted as an invocation.

The SYN flood (:mod:`tests.integration.synflood`) runs twice:

* ``syn_acks_reset``: the server in the host's network namespace. Found on this machine: the
  server's SYN-ACK to a spoofed 127.x.y.z comes back into the host's own stack (all of
  127.0.0.0/8 is local), finds no socket and is answered with a RST, which removes the half-open
  request at once (``Tcp: AttemptFails`` and ``Tcp: OutRsts`` grow by one per SYN); the SYN
  queue never fills. The host's counters are shared with whatever else runs, so they are
  recorded, not asserted.
* ``syn_acks_lost``: the server in a network namespace of its own (``unshare --net``) where only
  127.0.0.0/16 is local and the rest of 127.0.0.0/8 is a unicast route on ``lo``: a SYN-ACK to a
  spoofed source is sent, loops back, and is dropped (the kernel answers a RST only to a segment
  routed as local), so every half-open request stays in the SYN queue and the SYN-ACKs are
  retransmitted for a minute. This is a real SYN flood: the queue fills (``SYN_RECV`` entries of
  the port in that namespace's ``/proc/net/tcp``) and the kernel answers with SYN cookies
  (``TcpExt: SyncookiesSent``, per namespace, so asserted). The test's own clients join that
  namespace (``setns`` of the test's thread, and its subprocesses, for the time of the test).

The idle userdb clients: nine UIDs (numbers with no user, outside the pool: any local users, or
the handlers of one service, a UID per invocation) each hold the per-UID cap of 64 idle
connections, 576 together, past the total cap of 512. Before activator.userdb closed an idle
connection to make room at the total cap, that locked every lookup of a dynamic user out
(``getent passwd`` answered "no such user") for as long as they stayed.

Handlers are the inetd-style echo (``UID=N`` then ``cat``) as dynamic users from a pool of their
own, 65360-65391. Unit names start with ``hx``. Each test records its figures (``figures``):
what it sent, what was served, refused and counted, the latencies of every door during the
attack, and activator's descriptors and memory at rest, at the peak and afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import json
import os
import resource
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activator.control import request as control_request
from activator.userdb import UserdbLimits
from tests.integration.conftest import (
    CHECKOUT,
    activator_command,
    fd_count,
    leaves_nothing_of,
    printed_uid,
    rss_kib,
)
from tests.integration.prometheus import Samples, counter, parse, scrape, value
from tests.integration.serving import (
    Client,
    StartServer,
    echo_units,
    free_port,
    getent_passwd,
    host_env,
    lease_records,
    userdb_socket,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

POOL_FIRST: Final = 65360
POOL_LAST: Final = 65391
POOL: Final = range(POOL_FIRST, POOL_LAST + 1)
POOL_SETTINGS: Final = f"[pool]\nfirst = {POOL_FIRST}\nlast = {POOL_LAST}\n"

#: The bound on "still answers": a control request, a scrape, a lookup or an echo during an
#: attack (an idle one takes milliseconds; the CLI's interpreter start takes a few tenths).
ANSWER_WITHIN: Final = 10.0
#: How long activator may take to close what the attack left, once the attackers are gone.
SETTLE_TIMEOUT: Final = 20.0
#: How often the sampler looks at activator's descriptors and memory.
SAMPLE_EVERY: Final = 0.05

#: The SYN flood: SYNs, the seconds they are spread over, and the most it may take on a busy
#: machine (it stops then, sent or not).
SYNS: Final = 20_000
SYN_SECONDS: Final = 4.0
SYN_LIMIT: Final = 10.0
FLOOD_COMMAND: Final = (sys.executable, "-m", "tests.integration.synflood")

#: The connect flood: MaxConnections=, and connections in all (each held open by the client).
MAX_CONNECTIONS: Final = 16
CONNECTIONS: Final = 2500
#: The connect flood's own bound in time, and the time its connections are spread over (1,250 a
#: second: past any PollLimit, and long enough for the side doors to be asked many times).
CONNECT_SECONDS: Final = 30.0
CONNECT_SPREAD: Final = 2.0
#: The connect flood's socket: MaxConnections=, and no rate limit. With systemd's defaults for
#: Accept=yes (PollLimit 150 and TriggerLimit 200 accepts per 2 s, both counting the refused
#: connections too, as systemd does) the refusal of 2,500 connections takes 20-30 s, the rest
#: waiting in the backlog meanwhile: a pause by design (DESIGN.md, "Rate limits pause"), covered
#: by test_serve_admission.py; here it would only make the test slow.
FLOOD_SOCKET_LINES: Final = (
    f"MaxConnections={MAX_CONNECTIONS}",
    "PollLimitIntervalSec=0",
    "TriggerLimitIntervalSec=0",
)

#: The side-door attacks: how long the slow clients trickle, a byte every this many seconds.
TRICKLE_SECONDS: Final = 4.0
TRICKLE_EVERY: Final = 0.25
#: A huge message: MiB without a newline or NUL, and how many of them are sent at once per door.
HUGE_MIB: Final = 8
HUGE_AT_ONCE: Final = 3
#: How many empty userdb messages a pipelining client keeps unanswered at most.
PIPELINE_AHEAD: Final = 4096
#: Random inputs hypothesis tries on each of the control and userdb sockets.
RANDOM_EXAMPLES: Final = 25
#: What activator's memory may grow by under the side-door attacks. Every door caps what it
#: buffers per client (64 KiB a control line, 64 KiB a userdb message, 8 KiB a request head), so
#: the few dozen attackers at once cost a few MiB; a door that kept a huge message whole would
#: cost HUGE_MIB * HUGE_AT_ONCE = 24 MiB per door, 48 MiB for two, and fail this bound.
RSS_GROWTH_BOUND_KIB: Final = 32 * 1024

#: Run a command as nobody:nogroup with no supplementary groups.
AS_NOBODY: Final = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")

#: The network namespace of the ``syn_acks_lost`` flood: loopback up, only 127.0.0.0/16 local,
#: the rest of 127.0.0.0/8 a unicast route on lo (so a SYN-ACK there is dropped, never reset).
LOSSY_LOOPBACK: Final = (
    "ip link set lo up"
    " && ip route del local 127.0.0.0/8 dev lo table local"
    " && ip route add local 127.0.0.0/16 dev lo table local"
    " && ip route add 127.0.0.0/8 dev lo"
)
_CLONE_NEWNET: Final = 0x40000000
_TCP_SYN_RECV: Final = "03"


# --- nothing of ours is left ---------------------------------------------------------------------


@pytest.fixture
def leaves_nothing_of_ours() -> Iterator[None]:
    """:func:`tests.integration.conftest.leaves_nothing` for this module's pool and ``hx`` units
    only (:func:`tests.integration.conftest.leaves_nothing_of`): tests of other files running at
    the same time may hold their own leases and cgroups for a moment. Request it first, so it
    checks after the clean-up."""
    with leaves_nothing_of(POOL, "hx"):
        yield


# --- activator's descriptors and memory -----------------------------------------------------------


class Sampler:
    """Samples activator's descriptors and memory (and ``extra``, when given) every
    :data:`SAMPLE_EVERY` s in a thread, keeping the peaks, while used as a context manager."""

    def __init__(self, pid: int, extra: Callable[[], int] | None = None) -> None:
        self.pid = pid
        self.extra = extra
        self.fds_peak = fd_count(pid)
        self.rss_peak_kib = rss_kib(pid)
        self.extra_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            with contextlib.suppress(OSError):
                self.fds_peak = max(self.fds_peak, fd_count(self.pid))
                self.rss_peak_kib = max(self.rss_peak_kib, rss_kib(self.pid))
                if self.extra is not None:
                    self.extra_peak = max(self.extra_peak, self.extra())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def figures(
        self, fds_idle: int, fds_after: int, rss_idle: int, rss_after: int
    ) -> dict[str, int]:
        """Descriptors and memory at rest before, at the peak, and after, as figures."""
        return {
            "fds_idle": fds_idle,
            "fds_peak": self.fds_peak,
            "fds_after": fds_after,
            "rss_idle_kib": rss_idle,
            "rss_peak_kib": self.rss_peak_kib,
            "rss_after_kib": rss_after,
        }


def idle_fds(pid: int) -> int:
    """activator's descriptor count at rest: the least seen over half a second (a connection
    just answered is closed by the server a moment after the client saw its answer)."""
    seen = fd_count(pid)
    for _ in range(10):
        time.sleep(SAMPLE_EVERY)
        seen = min(seen, fd_count(pid))
    return seen


def settled_fds(pid: int, idle: int) -> int:
    """activator's descriptor count once it is back to ``idle`` or below (or what it is after
    :data:`SETTLE_TIMEOUT` s, for the assertion to show)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (count := fd_count(pid)) > idle and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


# --- what a user does, timed --------------------------------------------------------------------


class Latencies:
    """Seconds each kind of request took, by name; :meth:`figures` gives count and max of each."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def timed(self, name: str, action: Callable[[], Any]) -> Any:
        """Run ``action``, record its wall time under ``name``, and return what it returned."""
        started = time.monotonic()
        result = action()
        with self._lock:
            self.seconds.setdefault(name, []).append(time.monotonic() - started)
        return result

    def figures(self, prefix: str) -> dict[str, object]:
        with self._lock:
            out: dict[str, object] = {}
            for name, seconds in sorted(self.seconds.items()):
                out[f"{prefix}{name}_answered"] = len(seconds)
                out[f"{prefix}{name}_seconds_max"] = round(max(seconds), 3)
            return out

    def assert_within(self, bound: float) -> None:
        with self._lock:
            slow = {k: max(v) for k, v in self.seconds.items() if max(v) > bound}
        assert not slow, f"answers slower than {bound} s: {slow}"


def echo(port: int) -> int:
    """One real client: connect, read the handler's ``UID=N``, have a line echoed, close; N."""
    with Client(("127.0.0.1", port), ANSWER_WITHIN) as client:
        uid = printed_uid(client.line())
        client.send(b"still here\n")
        assert client.line() == "still here"
        return uid


def ask(client: Client, text: bytes) -> None:
    """Have ``text`` echoed on a live echo connection."""
    client.send(text + b"\n")
    assert client.line() == text.decode()


def status(control: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    """``activator status --json`` on ``control``, run as the command ``prefix`` says (root
    without one)."""
    return subprocess.run(
        [*prefix, *activator_command("status", "--json", "--control", str(control))],
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
        timeout=ANSWER_WITHIN + 20,
        check=False,
    )


def root_status(control: Path) -> dict[str, Any]:
    """A root ``activator status --json`` that must answer: its result."""
    done = status(control)
    assert done.returncode == 0, f"activator status: {done.returncode}: {done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def metrics(port: int) -> Samples:
    """A scrape of ``/metrics`` that must answer: its samples."""
    got = scrape(port)
    assert got.status == 200, got
    return parse(got.body)


def our_leases() -> list[int]:
    """The lease files of this module's pool that exist now."""
    return sorted(lease_records(POOL))


# --- network namespaces ---------------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextlib.contextmanager
def network_namespace_of(pid: int) -> Iterator[None]:
    """Run this thread (and the subprocesses it starts) in the network namespace of ``pid``,
    then back in its own; sockets made meanwhile stay in that namespace."""
    with (
        open("/proc/thread-self/ns/net", "rb") as home,
        open(f"/proc/{pid}/ns/net", "rb") as there,
    ):
        _setns(there.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def net_counters(pid: int) -> dict[str, int]:
    """The TCP counters of the network namespace of ``pid`` (``/proc/PID/net/snmp`` and
    ``netstat``), as ``Tcp:OutRsts``, ``TcpExt:SyncookiesSent``..."""
    out: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        with open(f"/proc/{pid}/net/{name}", encoding="ascii") as file:
            lines = file.read().splitlines()
        for header, values in zip(lines[::2], lines[1::2], strict=True):
            prefix, *names = header.split()
            for key, number in zip(names, values.split()[1:], strict=True):
                with contextlib.suppress(ValueError):
                    out[prefix + key] = int(number)
    return out


def half_open(pid: int, port: int) -> int:
    """How many SYN_RECV requests port 127.0.0.1:``port`` has in the namespace of ``pid``."""
    local = f"0100007F:{port:04X}"
    count = 0
    with open(f"/proc/{pid}/net/tcp", encoding="ascii") as file:
        next(file)
        for line in file:
            fields = line.split()
            count += fields[1] == local and fields[3] == _TCP_SYN_RECV
    return count


#: The TCP counters a flood is judged by, and the names of their deltas in the figures.
FLOOD_COUNTERS: Final = {
    "TcpExt:SyncookiesSent": "syncookies_sent",
    "TcpExt:SyncookiesRecv": "syncookies_valid_acks",
    "TcpExt:SyncookiesFailed": "syncookies_bad_acks",
    "TcpExt:TCPReqQFullDoCookies": "syn_queue_full_cookies",
    "TcpExt:TCPReqQFullDrop": "syn_queue_full_drops",
    "TcpExt:ListenOverflows": "accept_queue_overflows",
    "TcpExt:ListenDrops": "listen_drops",
    "Tcp:AttemptFails": "half_open_reset",
    "Tcp:OutRsts": "rsts_sent",
}


# --- 1. a SYN flood from spoofed loopback sources ---------------------------------------------


@pytest.mark.parametrize("syn_acks", ["reset", "lost"], ids=["syn_acks_reset", "syn_acks_lost"])
def test_during_a_syn_flood_real_clients_metrics_and_status_are_served_and_nothing_is_left(
    leaves_nothing_of_ours: None, server: StartServer, figures: dict[str, Any], syn_acks: str
) -> None:
    port, metrics_port = free_port(), free_port()
    wrapper = (
        ["unshare", "--net", "--", "sh", "-c", f'{LOSSY_LOOPBACK} && exec "$@"', "sh"]
        if syn_acks == "lost"
        else []
    )
    srv = server(
        echo_units("hxsyn", port),
        POOL_SETTINGS,
        metrics=f"127.0.0.1:{metrics_port}",
        wrapper=wrapper,
    )
    pid = srv.proc.pid
    where = network_namespace_of(pid) if syn_acks == "lost" else contextlib.nullcontext()
    latencies = Latencies()
    with where:
        # Warm up every door once, so that the idle figures are those of a server in use.
        echo(port)
        root_status(srv.control)
        srv.wait_for(lambda e: e.get("event") == "invocation", ANSWER_WITHIN)
        accepted_before = value(
            metrics(metrics_port), "activator_connections_accepted_total", unit="hxsyn.socket"
        )
        fds_idle, rss_idle = idle_fds(pid), rss_kib(pid)
        counters_before = net_counters(pid)

        served: list[int] = []
        flood = subprocess.Popen(
            [*FLOOD_COMMAND, str(port), str(SYNS), str(SYN_SECONDS), str(SYN_LIMIT)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=CHECKOUT,
        )
        try:
            with Sampler(pid, extra=lambda: half_open(pid, port)) as sampler:
                while flood.poll() is None:
                    served.append(latencies.timed("echo", lambda: echo(port)))
                    latencies.timed("metrics", lambda: metrics(metrics_port))
                    latencies.timed("control", lambda: root_status(srv.control))
                    served.append(latencies.timed("echo", lambda: echo(port)))
                out, _ = flood.communicate(timeout=SYN_LIMIT + 10)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        assert flood.returncode == 0, f"the flood failed: {flood.returncode}"
        sent = json.loads(out)
        counters_after = net_counters(pid)
        # Once the flood is over, the port still serves.
        served.append(echo(port))
        srv.wait_for(lambda e: e.get("event") == "invocation", ANSWER_WITHIN, count=1 + len(served))
        after = metrics(metrics_port)
        accepted_delta = (
            value(after, "activator_connections_accepted_total", unit="hxsyn.socket")
            - accepted_before
        )
        leased = root_status(srv.control)["pool"]["leased"]
    fds_after = settled_fds(pid, fds_idle)
    rss_after = rss_kib(pid)
    deltas = {
        name: counters_after.get(key, 0) - counters_before.get(key, 0)
        for key, name in FLOOD_COUNTERS.items()
    }
    figures.update(
        syn_acks=syn_acks,
        syns_sent=sent["sent"],
        flood_seconds=sent["seconds"],
        real_clients_during=len(served) - 1,
        real_clients_served=len(served),
        accepted_delta=accepted_delta,
        half_open_peak=sampler.extra_peak,
        counters="namespace" if syn_acks == "lost" else "host (shared)",
        **deltas,
        **latencies.figures(""),
        **sampler.figures(fds_idle, fds_after, rss_idle, rss_after),
    )

    assert sent["sent"] >= SYNS // 2, "the machine was too busy to flood"
    assert len(served) >= 3, "no real client was served during the flood"
    latencies.assert_within(ANSWER_WITHIN)
    # Half-open connections never reach accept(): only the real clients were accepted, and
    # only they ran an invocation.
    assert accepted_delta == len(served)
    assert len(srv.invocations("hxsyn")) == 1 + len(served)
    if syn_acks == "lost":
        assert sampler.extra_peak > 1000, "the flood did not fill the SYN queue"
        assert deltas["syncookies_sent"] > 0, "the SYN queue never overflowed into SYN cookies"
    assert fds_after <= fds_idle, "descriptors leaked"
    assert leased == 0
    assert srv.stop() == 0
    assert not our_leases()


# --- 2. a connect flood past MaxConnections= ------------------------------------------------------


def open_connections(port: int, count: int) -> tuple[list[socket.socket], list[str]]:
    """Connect ``count`` times to 127.0.0.1:``port``, spread over :data:`CONNECT_SPREAD` s (at
    most :data:`CONNECT_SECONDS` s in all), keeping each socket open; the sockets, and the
    errors of the connects that failed."""
    made: list[socket.socket] = []
    failed: list[str] = []
    started = time.monotonic()
    deadline = started + CONNECT_SECONDS
    while len(made) + len(failed) < count and (now := time.monotonic()) < deadline:
        ahead = (len(made) + len(failed)) * CONNECT_SPREAD / count - (now - started)
        if ahead > 0:
            time.sleep(ahead)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError as error:
            sock.close()
            failed.append(errno.errorcode.get(error.errno or 0, str(error)))
            continue
        made.append(sock)
    return made, failed


def closed_by_server(socks: list[socket.socket], timeout: float) -> tuple[int, int, int]:
    """Wait (at most ``timeout`` s) for the server to close each of ``socks`` (which stay open
    on this side): how many it closed with no data, how many got data, and how many it left
    open."""
    closed = got_data = 0
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                selector.unregister(ready)
                try:
                    data = ready.recv(1)
                except ConnectionResetError:
                    data = b""
                if data:
                    got_data += 1
                else:
                    closed += 1
        still_open = len(selector.get_map())
    return closed, got_data, still_open


@attrs.define
class ConnectFlood:
    """The connect flood of one test, run in a thread: it connects, then waits for the server to
    close each connection past the limit; the client keeps its side of each open until
    :meth:`close`."""

    port: int
    count: int
    made: list[socket.socket] = attrs.Factory(list)
    failed: list[str] = attrs.Factory(list)
    outcome: tuple[int, int, int] = (0, 0, 0)
    connect_seconds: float = 0.0
    refuse_seconds: float = 0.0
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            started = time.monotonic()
            self.made, self.failed = open_connections(self.port, self.count)
            self.connect_seconds = time.monotonic() - started
            self.outcome = closed_by_server(self.made, SETTLE_TIMEOUT)
            self.refuse_seconds = time.monotonic() - started
        except BaseException as error:  # handed to the test's thread by join()
            self.error = error

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(CONNECT_SECONDS + SETTLE_TIMEOUT + 10)
        assert not self.thread.is_alive(), "the connect flood did not end"
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        for sock in self.made:
            sock.close()


def test_a_connect_flood_past_max_connections_is_refused_and_counted_and_the_doors_stay_open(
    leaves_nothing_of_ours: None, server: StartServer, figures: dict[str, Any]
) -> None:
    port, metrics_port = free_port(), free_port()
    srv = server(
        echo_units("hxflood", port, *FLOOD_SOCKET_LINES),
        POOL_SETTINGS,
        metrics=f"127.0.0.1:{metrics_port}",
    )
    pid = srv.proc.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = CONNECTIONS + 1000
    if soft < needed:  # as root, the hard limit is raised too when it is lower (restored after)
        raised = hard if hard == resource.RLIM_INFINITY else max(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, raised))
    try:
        echo(port)
        root_status(srv.control)
        srv.wait_for(lambda e: e.get("event") == "invocation", ANSWER_WITHIN)
        before = metrics(metrics_port)
        fds_idle, rss_idle = idle_fds(pid), rss_kib(pid)
        latencies = Latencies()
        flood = ConnectFlood(port, CONNECTIONS - MAX_CONNECTIONS)
        with contextlib.ExitStack() as stack:
            held = [
                stack.enter_context(Client(("127.0.0.1", port))) for _ in range(MAX_CONNECTIONS)
            ]
            uids = {printed_uid(client.line()) for client in held}
            assert len(uids) == MAX_CONNECTIONS
            stack.callback(flood.close)
            with Sampler(pid) as sampler:
                flood.start()
                # While connections pour in and are refused, the side doors answer, and so do
                # the connections within the limit.
                for turn in itertools.count():
                    if not flood.running():
                        break
                    latencies.timed("metrics", lambda: metrics(metrics_port))
                    latencies.timed("control", lambda: control_request(str(srv.control), "status"))
                    if turn % 4 == 0:
                        latencies.timed("status_cli", lambda: root_status(srv.control))
                    one = functools.partial(ask, held[turn % MAX_CONNECTIONS], b"during the flood")
                    latencies.timed("held_echo", one)
                flood.join()
            during, failed = len(flood.made), flood.failed
            closed, got_data, still_open = flood.outcome
            # The connections within the limit keep working.
            for client in held:
                ask(client, b"after the flood")
            mid = metrics(metrics_port)
        # Every client is gone: the handlers end.
        srv.wait_for(
            lambda e: e.get("event") == "invocation", SETTLE_TIMEOUT, count=1 + MAX_CONNECTIONS
        )
        fds_after = settled_fds(pid, fds_idle)
        rss_after = rss_kib(pid)
        leased = root_status(srv.control)["pool"]["leased"]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    refusals = {"unit": "hxflood.socket", "reason": "max_connections"}
    rejected = counter(mid, "activator_connections_rejected_total", **refusals) - counter(
        before, "activator_connections_rejected_total", **refusals
    )
    accepted = value(mid, "activator_connections_accepted_total", unit="hxflood.socket") - value(
        before, "activator_connections_accepted_total", unit="hxflood.socket"
    )
    figures.update(
        max_connections=MAX_CONNECTIONS,
        connections=MAX_CONNECTIONS + during,
        idle_connections_held=MAX_CONNECTIONS + during,
        connect_failures=len(failed),
        refused=closed,
        refused_counted=rejected,
        refused_with_data=got_data,
        left_open_by_server=still_open,
        accepted_delta=accepted,
        connect_seconds=round(flood.connect_seconds, 3),
        refused_all_seconds=round(flood.refuse_seconds, 3),
        **latencies.figures(""),
        **sampler.figures(fds_idle, fds_after, rss_idle, rss_after),
    )

    assert not failed, f"connects failed: {sorted(set(failed))}"
    assert during == CONNECTIONS - MAX_CONNECTIONS
    assert (closed, got_data, still_open) == (during, 0, 0)
    assert rejected == during
    assert accepted == MAX_CONNECTIONS + during
    assert len(srv.rejects()) == during
    assert len(srv.invocations("hxflood")) == 1 + MAX_CONNECTIONS
    latencies.assert_within(ANSWER_WITHIN)
    assert fds_after <= fds_idle, "descriptors leaked"
    assert leased == 0
    assert srv.stop() == 0
    assert not our_leases()


# --- 3. the side doors: control, userdb and /metrics, all at once -------------------------------


@pytest.fixture
def public_directory() -> Iterator[Path]:
    """A directory ``/run/hx-XXXXXXXX`` (mode 0755) for a control socket that nobody can reach
    (tmp_path is root's 0700), removed when the test ends."""
    path = Path(f"/run/hx-{secrets.token_hex(4)}")
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def receive_to(sock: socket.socket, separator: bytes, buffer: bytearray) -> bytes:
    """The next message up to ``separator`` (not included) from ``sock``, after what ``buffer``
    holds; b"" at the end of the stream (or a reset) with no message."""
    deadline = time.monotonic() + ANSWER_WITHIN
    while (end := buffer.find(separator)) < 0:
        left = deadline - time.monotonic()
        assert left > 0, f"no whole message in {ANSWER_WITHIN} s: {bytes(buffer[:200])!r}"
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return b""
        buffer += data
    message = bytes(buffer[:end])
    del buffer[: end + len(separator)]
    return message


def send_all_it_takes(sock: socket.socket, data: bytes) -> int:
    """Send ``data`` until the peer stops taking it (it closed); how many bytes went."""
    sent = 0
    view = memoryview(data)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        while sent < len(data):
            sent += sock.send(view[sent : sent + 65536])
    return sent


def control_reply(line: bytes) -> dict[str, Any]:
    """A control reply line, checked for its shape."""
    reply = json.loads(line)
    assert isinstance(reply, dict), line
    assert isinstance(reply.get("ok"), bool), line
    return reply


def varlink_reply(message: bytes) -> dict[str, Any]:
    """A Varlink reply (without its NUL), checked for its shape."""
    reply = json.loads(message)
    assert isinstance(reply, dict), message
    assert "error" in reply or "parameters" in reply, message
    return reply


def get_user(service: str, uid: int) -> bytes:
    """The userdb call nss-systemd makes for ``getent passwd UID``, NUL-terminated."""
    call = {
        "method": "io.systemd.UserDatabase.GetUserRecord",
        "parameters": {"uid": uid, "service": service},
    }
    return json.dumps(call).encode() + b"\0"


#: Malformed control request lines: each gets an error reply, and the connection goes on.
CONTROL_MALFORMED: Final = (
    b"{",
    b"[]",
    b"null",
    b'"status"',
    b'{"command": 1}',
    b'{"command": "status", "args": []}',
    b'{"command": "format-the-disk"}',
    b"\xff\xfe\x00\x01 not even UTF-8",
    b"[" * 60000,  # deep nesting, under the line limit: the parser's recursion
    b'{"command": "status", "args": {"unit": ' + b"[" * 30000 + b"}}",
)
#: Malformed Varlink messages: each gets an error reply, and the connection goes on.
USERDB_MALFORMED: Final = (
    b"{",
    b"[]",
    b"null",
    b'{"method": 1}',
    b'{"method": "io.systemd.UserDatabase.GetUserRecord", "parameters": {"uid": "root"}}',
    b'{"method": "io.systemd.UserDatabase.Nothing", "parameters": {}}',
    b"\xff\xfe\x01 not even UTF-8",
    b"[" * 60000,
)
#: Pieces that random inputs are made of, besides random bytes: near misses of real requests.
FRAGMENTS: Final = (
    b"\n",
    b"\0",
    b"{",
    b"}",
    b"[",
    b'"',
    b":",
    b",",
    b'{"command": "status"}',
    b'"command"',
    b'"args"',
    b'{"method": "io.systemd.UserDatabase.GetUserRecord"',
    b'"parameters": {',
    b'"uid": 65360',
    b'"service": "io.activator.DynamicUser"',
    b'"more": ',
    b"true",
    b"\xff",
)
random_input = st.lists(
    st.one_of(st.binary(max_size=64), st.sampled_from(FRAGMENTS)), max_size=40
).map(b"".join)
#: How hypothesis tries random inputs on a live server: a fixed number, no deadline per input
#: (the server is under attack meanwhile), nothing remembered between runs.
RANDOM_SETTINGS: Final = settings(
    max_examples=RANDOM_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class SideDoorAttack:
    """The attacks on one server's side doors, each in a thread of its own, all at once; what
    each saw is counted in :attr:`seen`, and a wrong answer fails it (see :meth:`join`)."""

    def __init__(self, control: Path, userdb: str, metrics_port: int, live_uid: int) -> None:
        self.control = str(control)
        self.userdb = userdb
        self.service = os.path.basename(userdb)
        self.metrics_port = metrics_port
        self.live_uid = live_uid
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.seen[what] = self.seen.get(what, 0) + n

    def start(self) -> None:
        plan: list[tuple[Callable[[], None], int]] = [
            (self.control_malformed, 1),
            (self.control_huge, HUGE_AT_ONCE),
            (self.control_half, 1),
            (self.control_slowloris, 4),
            (self.nobody_on_control, 1),
            (self.userdb_malformed, 1),
            (self.userdb_huge, HUGE_AT_ONCE),
            (self.userdb_half, 1),
            (self.userdb_slowloris, 4),
            (self.userdb_pipelined_empty, 1),
            (self.metrics_slowloris, 3),
            (self.metrics_huge_head, HUGE_AT_ONCE),
        ]
        for attack, copies in plan:
            for _ in range(copies):
                thread = threading.Thread(target=self._run, args=(attack,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _run(self, attack: Callable[[], None]) -> None:
        try:
            attack()
        except BaseException as error:  # handed to the test's thread by join()
            with self._lock:
                self._errors.append(error)

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self) -> None:
        deadline = time.monotonic() + TRICKLE_SECONDS + 3 * ANSWER_WITHIN
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not self.running(), "an attack did not end"
        if self._errors:
            raise self._errors[0]

    # --- the control socket

    def control_malformed(self) -> None:
        """Malformed lines on one connection: an error each; then a request is answered."""
        with Client(self.control, ANSWER_WITHIN) as client:
            buffer = bytearray()
            for line in CONTROL_MALFORMED:
                client.send(line + b"\n")
                reply = control_reply(receive_to(client.sock, b"\n", buffer))
                assert reply["ok"] is False, reply
                self.count("control_malformed")
            client.send(b'{"command": "status"}\n')
            assert control_reply(receive_to(client.sock, b"\n", buffer))["ok"] is True

    def control_huge(self) -> None:
        """HUGE_MIB MiB without a newline: the server says why and closes."""
        with Client(self.control, ANSWER_WITHIN) as client:
            sent = send_all_it_takes(client.sock, b"A" * (HUGE_MIB << 20))
            answer = client.rest()
        assert sent < HUGE_MIB << 20, "the server took a huge line whole"
        assert b"request longer than" in answer, answer[:200]
        self.count("control_huge")

    def control_half(self) -> None:
        """Half requests: closed at once (nothing to answer), or ended (an error reply)."""
        for _ in range(10):
            with Client(self.control, ANSWER_WITHIN) as client:
                client.send(b'{"command": "sta')
            self.count("control_half_closed")
            with Client(self.control, ANSWER_WITHIN) as client:
                client.send(b'{"command": "sta')
                client.finish_sending()
                assert control_reply(client.rest().rstrip(b"\n"))["ok"] is False
            self.count("control_half_ended")

    def control_slowloris(self) -> None:
        """A request a byte at a time for TRICKLE_SECONDS, then the rest: it is answered."""
        request = b'{"command": "status"}\n'
        with Client(self.control, ANSWER_WITHIN) as client:
            sent = trickle(client.sock, request)
            client.send(request[sent:])
            assert control_reply(receive_to(client.sock, b"\n", bytearray()))["ok"] is True
        self.count("control_slowloris")

    def nobody_on_control(self) -> None:
        """``activator status`` as nobody is refused with its reason; a burst of nobody's
        connections at once is refused or closed, never served."""
        for _ in range(2):
            done = status(Path(self.control), *AS_NOBODY)
            assert done.returncode == 1, done
            assert "permission denied: UID 65534 is not root" in done.stderr, done.stderr
            self.count("nobody_cli_refused")
        burst = subprocess.run(
            [*AS_NOBODY, sys.executable, "-c", NOBODY_BURST, self.control, "30"],
            capture_output=True,
            text=True,
            timeout=3 * ANSWER_WITHIN,
            check=False,
        )
        assert burst.returncode == 0, burst.stderr
        got = json.loads(burst.stdout)
        assert got["served"] == 0, got
        assert got["refused"] + got["closed"] == 30, got
        self.count("nobody_burst_refused", got["refused"])
        self.count("nobody_burst_closed_unanswered", got["closed"])

    # --- the userdb socket

    def userdb_malformed(self) -> None:
        """Malformed messages on one connection: an error each; then a lookup is answered."""
        with Client(self.userdb, ANSWER_WITHIN) as client:
            buffer = bytearray()
            for message in USERDB_MALFORMED:
                client.send(message + b"\0")
                assert "error" in varlink_reply(receive_to(client.sock, b"\0", buffer))
                self.count("userdb_malformed")
            client.send(get_user(self.service, self.live_uid))
            reply = varlink_reply(receive_to(client.sock, b"\0", buffer))
            assert reply["parameters"]["record"]["uid"] == self.live_uid, reply

    def userdb_huge(self) -> None:
        """HUGE_MIB MiB without a NUL: the client is dropped, unanswered."""
        with Client(self.userdb, ANSWER_WITHIN) as client:
            sent = send_all_it_takes(client.sock, b"A" * (HUGE_MIB << 20))
            answer = client.rest()
        assert sent < HUGE_MIB << 20, "the server took a huge message whole"
        assert answer == b"", answer[:200]
        self.count("userdb_huge")

    def userdb_half(self) -> None:
        """Half messages, then a close or an end of stream: no answer, the server goes on."""
        for _ in range(10):
            with Client(self.userdb, ANSWER_WITHIN) as client:
                client.send(get_user(self.service, self.live_uid)[:25])
            with Client(self.userdb, ANSWER_WITHIN) as client:
                client.send(get_user(self.service, self.live_uid)[:25])
                client.finish_sending()
                assert client.rest() == b""
            self.count("userdb_half", 2)

    def userdb_slowloris(self) -> None:
        """A lookup a byte at a time for TRICKLE_SECONDS, then the rest: it is answered."""
        call = get_user(self.service, self.live_uid)
        with Client(self.userdb, ANSWER_WITHIN) as client:
            sent = trickle(client.sock, call)
            client.send(call[sent:])
            reply = varlink_reply(receive_to(client.sock, b"\0", bytearray()))
            assert reply["parameters"]["record"]["uid"] == self.live_uid, reply
        self.count("userdb_slowloris")

    def userdb_pipelined_empty(self) -> None:
        """Empty messages (a NUL each) pipelined for TRICKLE_SECONDS, at most
        :data:`PIPELINE_AHEAD` ahead of the replies: each gets its error reply, in order.

        One byte of input costs the server a parse, an encode and a send: the cheapest work a
        client can ask of it. The connection stays usable after a malformed message (Rule 3 of
        activator.userdb), so a client can keep it busy for as long as it sends.
        """
        sent = answered = 0
        buffer = bytearray()
        deadline = time.monotonic() + TRICKLE_SECONDS
        with Client(self.userdb, ANSWER_WITHIN) as client:
            while time.monotonic() < deadline:
                if sent - answered < PIPELINE_AHEAD:
                    client.send(b"\0" * 1024)
                    sent += 1024
                while buffer.count(0) < 1 or sent - answered >= PIPELINE_AHEAD:
                    data = client.sock.recv(1 << 16)
                    assert data, "the server closed a pipelining client"
                    buffer += data
                    if buffer.count(0):
                        break
                while (end := buffer.find(0)) >= 0:
                    assert "error" in varlink_reply(bytes(buffer[:end]))
                    del buffer[: end + 1]
                    answered += 1
            client.finish_sending()
            tail = bytes(buffer) + client.rest()
        replies = tail.split(b"\0")
        assert replies[-1] == b""
        answered += len(replies) - 1
        assert answered == sent
        self.count("userdb_empty_messages_answered", answered)

    # --- /metrics

    def metrics_slowloris(self) -> None:
        """A request head a byte at a time: the server closes it (its head timeout) before the
        head is done; from 127.0.0.3, so no scrape of 127.0.0.1 evicts it first."""
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n\r\n"
        with Client(("127.0.0.1", self.metrics_port), ANSWER_WITHIN, source="127.0.0.3") as client:
            started = time.monotonic()
            sent = trickle(client.sock, head, until_closed=True)
            assert sent < len(head), "the server waited for a slow head to the end"
            assert client.rest() == b""
            with self._lock:
                self.seen["metrics_slowloris_closed_after_ms_max"] = max(
                    self.seen.get("metrics_slowloris_closed_after_ms_max", 0),
                    round((time.monotonic() - started) * 1000),
                )
        self.count("metrics_slowloris")

    def metrics_huge_head(self) -> None:
        """A request head of a MiB: 431, and the connection is closed."""
        head = b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"j" * (1 << 20) + b"\r\n\r\n"
        with Client(("127.0.0.1", self.metrics_port), ANSWER_WITHIN) as client:
            send_all_it_takes(client.sock, head)
            answer = client.rest()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        self.count("metrics_huge_head")


def trickle(sock: socket.socket, data: bytes, *, until_closed: bool = False) -> int:
    """Send ``data`` a byte every :data:`TRICKLE_EVERY` s for at most :data:`TRICKLE_SECONDS`
    s; how many bytes went. With ``until_closed``, stop as soon as the server closed."""
    deadline = time.monotonic() + TRICKLE_SECONDS
    sent = 0
    while sent < len(data) and time.monotonic() < deadline:
        if until_closed and closed(sock):
            break
        try:
            sock.sendall(data[sent : sent + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
        time.sleep(TRICKLE_EVERY)
    return sent


def closed(sock: socket.socket) -> bool:
    """Whether the peer has closed ``sock`` (end of stream or reset waiting to be read)."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


#: Run as nobody: N connections to the control socket at once, each sends a request; prints
#: how many got a refusal, were closed unanswered, or were served.
NOBODY_BURST: Final = """\
import json, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    socks.append(s)
got = {"refused": 0, "closed": 0, "served": 0}
for s in socks:
    try:
        s.sendall(b'{"command": "status"}\\n')
    except OSError:
        pass
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    line = data.split(b"\\n", 1)[0]
    if not line:
        got["closed"] += 1
    elif json.loads(line)["ok"]:
        got["served"] += 1
    else:
        assert "permission denied" in json.loads(line)["error"], line
        got["refused"] += 1
    s.close()
print(json.dumps(got))
"""


def test_bad_input_on_every_side_door_at_once_is_refused_in_bounded_memory_and_users_are_served(
    leaves_nothing_of_ours: None,
    public_directory: Path,
    server: StartServer,
    figures: dict[str, Any],
) -> None:
    port, metrics_port = free_port(), free_port()
    srv = server(
        echo_units("hxdoor", port),
        POOL_SETTINGS,
        metrics=f"127.0.0.1:{metrics_port}",
        control=public_directory / "control",
    )
    pid = srv.proc.pid
    userdb = userdb_socket(srv)
    # Warm up every door once, so that the idle figures are those of a server in use.
    echo(port)
    root_status(srv.control)
    metrics(metrics_port)
    getent_passwd(POOL_FIRST)
    srv.wait_for(lambda e: e.get("event") == "invocation", ANSWER_WITHIN)
    fds_idle, rss_idle = idle_fds(pid), rss_kib(pid)

    latencies = Latencies()
    inputs = {"control": 0, "userdb": 0}

    with Client(("127.0.0.1", port)) as live:  # a live dynamic user for getent
        live_uid = printed_uid(live.line())
        name = getent_passwd(live_uid).stdout.split(":")[0]
        assert name.startswith("hxdoor-"), name
        attack = SideDoorAttack(srv.control, userdb, metrics_port, live_uid)
        stop = threading.Event()

        def users() -> None:
            """What users do meanwhile: each must be answered."""
            while not stop.is_set():
                got = latencies.timed("control", lambda: root_status(srv.control))
                assert got["pool"]["leased"] >= 1
                entry = latencies.timed("getent", lambda: getent_passwd(live_uid))
                assert entry.returncode == 0, entry
                assert entry.stdout.startswith(f"{name}:x:{live_uid}:{live_uid}:"), entry.stdout
                latencies.timed("metrics", lambda: metrics(metrics_port))
                latencies.timed("echo", lambda: echo(port))

        user_errors: list[BaseException] = []

        def run_users() -> None:
            try:
                users()
            except BaseException as error:
                user_errors.append(error)

        @RANDOM_SETTINGS
        @given(data=random_input)
        def random_control(data: bytes) -> None:
            with Client(srv.control.as_posix(), ANSWER_WITHIN) as client:
                client.send(data)
                client.finish_sending()
                answer = client.rest()
            tail = data.rpartition(b"\n")[2]
            expected = data.count(b"\n") + (1 if tail.strip() else 0)
            replies = answer.split(b"\n")
            assert replies[-1] == b"", answer[-200:]
            assert len(replies) - 1 == expected, (data, answer)
            for line in replies[:-1]:
                control_reply(line)
            inputs["control"] += 1

        @RANDOM_SETTINGS
        @given(data=random_input)
        def random_userdb(data: bytes) -> None:
            with Client(userdb, ANSWER_WITHIN) as client:
                client.send(data)
                client.finish_sending()
                answer = client.rest()
            assert answer.endswith(b"\0") or not answer, answer[-200:]
            final = [
                reply
                for reply in (varlink_reply(m) for m in answer.split(b"\0")[:-1])
                if not reply.get("continues")
            ]
            calls = data.count(b"\0")
            # A oneway call gets no reply; a random input is never one, or hardly.
            assert len(final) <= calls, (data, answer)
            assert len(final) >= calls - data.count(b'"oneway"'), (data, answer)
            inputs["userdb"] += 1

        checker = threading.Thread(target=run_users, daemon=True)
        with Sampler(pid) as sampler:
            attack.start()
            checker.start()
            try:
                random_control()
                random_userdb()
                attack.join()
            finally:
                stop.set()
                checker.join(3 * ANSWER_WITHIN)
        assert not checker.is_alive(), "the users' checks did not end"
        if user_errors:
            raise user_errors[0]
        # After it all, the live user's connection still works.
        live.send(b"after the attack\n")
        assert live.line() == "after the attack"
    srv.wait_for(
        lambda e: e.get("event") == "invocation",
        SETTLE_TIMEOUT,
        count=2 + len(latencies.seconds.get("echo", [])),
    )
    fds_after = settled_fds(pid, fds_idle)
    rss_after = rss_kib(pid)
    leased = root_status(srv.control)["pool"]["leased"]
    figures.update(
        **attack.seen,
        random_inputs_control=inputs["control"],
        random_inputs_userdb=inputs["userdb"],
        **latencies.figures("during_"),
        **sampler.figures(fds_idle, fds_after, rss_idle, rss_after),
        rss_growth_bound_kib=RSS_GROWTH_BOUND_KIB,
    )

    assert inputs == {"control": RANDOM_EXAMPLES, "userdb": RANDOM_EXAMPLES}
    for what in ("control", "getent", "metrics", "echo"):
        assert latencies.seconds.get(what), f"no {what} answered during the attack"
    latencies.assert_within(ANSWER_WITHIN)
    assert sampler.rss_peak_kib - rss_idle < RSS_GROWTH_BOUND_KIB
    assert rss_after - rss_idle < RSS_GROWTH_BOUND_KIB
    assert fds_after <= fds_idle, "descriptors leaked"
    assert leased == 0
    # Nothing the attackers sent reached an invocation, or failed one.
    assert all(e.get("exit_code") == 0 for e in srv.invocations("hxdoor")), srv.log()
    assert srv.stop() == 0
    assert not our_leases()


# --- 4. idle userdb clients of many UIDs ----------------------------------------------------------

#: What the userdb socket serves at once: in all, and per peer UID.
USERDB_TOTAL: Final = UserdbLimits().max_connections
USERDB_PER_UID: Final = UserdbLimits().max_connections_per_uid
#: UIDs that hold idle userdb connections, each up to its cap: more than the total cap together.
#: Outside the default pool (and with no user): any local users, or the dynamic users of a
#: service's handlers, each invocation a UID of its own.
IDLE_UIDS: Final = range(70001, 70001 + USERDB_TOTAL // USERDB_PER_UID + 1)
#: How long each of them holds its connections (bounded), once all are connected.
IDLE_HOLD_SECONDS: Final = 3.0

#: Run as one UID: connect N times to the userdb socket and send nothing; say "ready", hold the
#: connections until stdin closes (or HOLD seconds), then print how many the server closed.
IDLE_HOLDER: Final = """\
import select, socket, sys
path, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socks.append(s)
print("ready", flush=True)
select.select([sys.stdin], [], [], hold)
closed = 0
for s in socks:
    if select.select([s], [], [], 0)[0]:
        try:
            closed += s.recv(1) == b""
        except ConnectionResetError:
            closed += 1
    s.close()
print(closed, flush=True)
"""


def test_idle_userdb_clients_of_many_uids_past_the_total_cap_cannot_lock_lookups_out(
    leaves_nothing_of_ours: None, server: StartServer, figures: dict[str, Any]
) -> None:
    port = free_port()
    srv = server(echo_units("hxidle", port), POOL_SETTINGS)
    pid = srv.proc.pid
    userdb = userdb_socket(srv)
    echo(port)
    srv.wait_for(lambda e: e.get("event") == "invocation", ANSWER_WITHIN)
    fds_idle = idle_fds(pid)
    latencies = Latencies()
    holders: list[subprocess.Popen[str]] = []
    with Client(("127.0.0.1", port)) as live:
        live_uid = printed_uid(live.line())
        entry = getent_passwd(live_uid)
        assert entry.returncode == 0, entry
        try:
            for uid in IDLE_UIDS:
                holder = subprocess.Popen(
                    [
                        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        sys.executable, "-c", IDLE_HOLDER,
                        userdb, str(USERDB_PER_UID), str(IDLE_HOLD_SECONDS + ANSWER_WITHIN),
                    ],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                holders.append(holder)
                assert holder.stdout is not None
                assert holder.stdout.readline() == "ready\n", f"UID {uid} could not connect"
            # Every UID holds its cap of idle connections, more than the total cap together:
            # lookups, by root and by another user, still answer.
            deadline = time.monotonic() + IDLE_HOLD_SECONDS
            while time.monotonic() < deadline:
                got = latencies.timed("getent", lambda: getent_passwd(live_uid))
                assert got.stdout == entry.stdout, f"getent passwd {live_uid}: {got}"
                as_nobody = latencies.timed(
                    "getent_nobody",
                    lambda: subprocess.run(
                        [*AS_NOBODY, "getent", "passwd", str(live_uid)],
                        capture_output=True, text=True, env=host_env(),
                        timeout=ANSWER_WITHIN, check=False,
                    ),
                )  # fmt: skip
                assert as_nobody.stdout == entry.stdout, f"as nobody: {as_nobody}"
            closed = []
            for holder in holders:
                out, _ = holder.communicate("", timeout=ANSWER_WITHIN)
                assert holder.returncode == 0, out
                closed.append(int(out.split()[-1]))
        finally:
            for holder in holders:
                if holder.poll() is None:
                    holder.kill()
                    holder.wait()
    fds_after = settled_fds(pid, fds_idle)
    figures.update(
        uids=len(IDLE_UIDS),
        idle_connections_held=len(IDLE_UIDS) * USERDB_PER_UID,
        total_cap=USERDB_TOTAL,
        closed_by_server=sum(closed),
        **latencies.figures("during_"),
        fds_idle=fds_idle,
        fds_after=fds_after,
    )

    latencies.assert_within(ANSWER_WITHIN)
    # Room was made by closing idle connections, of the UIDs holding the most.
    assert sum(closed) >= len(IDLE_UIDS) * USERDB_PER_UID - USERDB_TOTAL
    assert fds_after <= fds_idle, "descriptors leaked"
    assert srv.stop() == 0
    assert not our_leases()
