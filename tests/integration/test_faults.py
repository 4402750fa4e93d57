"""Faults injected into a real ``activator serve`` under load, and what its users see after.

Each test starts a real server (the ``server`` fixture), puts it under client load, injects one
fault, and asserts what clients and the host see afterwards; each records its figures (the
``figures`` fixture: connections run, faults injected, what was lost, recovery seconds).

- ``kill -9`` of the activator: its spawner sees its socket close and exits, killing and reaping
  every handler (each one PID 1 of its PID namespace: its background children die with it).
  With a hung spawner the handlers outlive the crash, and the restart kills them through the
  cgroups its stale lease files name, before it listens. Either way nothing of the crashed run
  runs when the restart accepts its first connection (each process's pidfd and each cgroup of
  the crashed run are looked at that moment, by every client), so no UID is leased twice; the
  state directory is intact, and the restart listens again in well under the issue's 2 s.
- ``kill -9`` of the spawner: the activator starts a new one. Handlers that ran die with the old
  one (their clients see the end; their UIDs are released once their cgroups are empty); a
  spawn in flight, or sent before the activator saw the death, is refused (the client sees the
  connection closed); one that comes during the restart waits for the new spawner and is
  served. None hangs.
- A full file system where a state directory is made: that invocation fails with the path and
  ``No space left on device`` in the log, its client sees the connection closed at once, other
  services are served, nothing is half made. A chown needs no space on ext4 (the owner lives in
  the inode): on a full file system it works.
- Silent clients of the userdb socket (connected, never writing), up to the per-peer cap: NSS
  lookups of live dynamic users still answer at once, except for the silent clients' own UID
  once it holds its whole cap, which is refused at once.

Handlers are inetd-style shell one-liners as dynamic users. Unit names start with ``f9``; each
test has a pool range of its own inside the default pool (so ``leaves_nothing`` watches it).
The tests that kill a spawner or an activator make this process a child subreaper
(:class:`Orphans`): what the dead leave is reparented here and reaped by the test, whatever the
host's init does.
File-descriptor exhaustion is in ``test_serve_pressure.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import select
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest

from activator.control import request as control_request
from activator.userdb import UserdbLimits
from tests.integration.conftest import (
    cgroup_populated,
    children_of,
    in_pool,
    pool_processes,
    printed_uid,
    processes_of,
)
from tests.integration.prometheus import counter, parse, scrape, value
from tests.integration.serving import (
    ECHO,
    Address,
    Client,
    Event,
    Server,
    StartServer,
    echo_units,
    exchange,
    free_port,
    getent_passwd,
    host_env,
    lease_records,
    service_units,
    spawner_of,
    userdb_socket,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

Figures = dict[str, Any]

#: A client's deadline (connect, and the whole answer) under load: an answer that takes longer
#: is counted as hung.
CLIENT_DEADLINE: Final = 5.0
#: The most exchanges one load thread makes (connections that got through), the most connects
#: refused (nothing listened) it tries, and the longest it runs.
LOAD_MOST: Final = 400
REFUSED_MOST: Final = 3000
LOAD_SECONDS: Final = 20.0
#: How long a server may take to deal with everything after a fault (processes reaped, leases
#: released), before a test gives up.
SETTLE_TIMEOUT: Final = 15.0
#: A bound on "still answers": a lookup or a control request, not a speed target.
ANSWERS_WITHIN: Final = 5.0

#: The echo handler that first starts a background child in a session of its own.
ECHO_WITH_CHILD: Final = "/bin/sh -c 'echo UID=$(id -u); setsid sleep 600 & exec cat'"
#: A handler that appends the client's first line to a file of its state directory, says
#: ``stored``, and then echoes.
APPEND_TO_STATE: Final = (
    '/bin/sh -c \'echo UID=$(id -u); read line; echo "$line" >> "$STATE_DIRECTORY/log"; '
    "echo stored; exec cat'"
)


# --- the host -----------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> str:
    """The command line of ``pid`` (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(what: str, condition: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> float:
    """Poll ``condition`` until it holds; the seconds it took. AssertionError after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            msg = f"not within {timeout} s: {what}"
            raise AssertionError(msg)
        time.sleep(0.01)
    return time.monotonic() - started


def logged_connection(event: Event, prefix: str) -> bool:
    """Whether ``event`` is the end of a connection of units starting with ``prefix``: an
    ``invocation`` or a ``reject``."""
    return event.get("event") in ("invocation", "reject") and str(event["unit"]).startswith(prefix)


def logged(running: Server, pattern: re.Pattern[str]) -> re.Match[str]:
    """The first log message of the server that ``pattern`` finds (waiting for it)."""
    (event,) = running.wait_for(lambda e: pattern.search(str(e.get("message"))) is not None)
    found = pattern.search(str(event["message"]))
    assert found is not None
    return found


def zombies_in(pool: range) -> list[int]:
    """The processes of a UID of ``pool`` that have ended and wait to be reaped."""
    return [pid for pid, ids in pool_processes().items() if ids[0] in pool and not alive(pid)]


def records_in(pool: range) -> dict[int, dict[str, Any]]:
    """The lease files of ``pool`` that exist now and are this file's (their unit starts with
    ``f9``: another activator on the host may lease a UID of ``pool`` too): UID -> record."""
    return lease_records(pool, "f9")


def control(running: Server, command: str) -> Any:
    """One request on the server's control socket, answered within :data:`ANSWERS_WITHIN`; its
    ``result``."""
    return control_request(str(running.control), command, timeout=ANSWERS_WITHIN)


class Orphans:
    """This test process as a child subreaper (``PR_SET_CHILD_SUBREAPER``) while it is used:
    what a dead spawner or a killed activator leaves is reparented here, not to the host's init,
    and the test reaps it itself (:meth:`reap`) instead of waiting for an init that may not
    reap at all. Only processes this test knows are reaped: a pool UID's, or a PID it was
    told about (:meth:`adopt`); never a child some ``Popen`` waits for."""

    _PR_SET_CHILD_SUBREAPER: Final = 36
    _PR_GET_CHILD_SUBREAPER: Final = 37

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        self._prctl(self._PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag))
        self._was = flag.value
        self.known: set[int] = set()
        self.reaped: list[int] = []

    def _prctl(self, option: int, argument: int) -> None:
        if self._libc.prctl(option, ctypes.c_ulong(argument), 0, 0, 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def __enter__(self) -> Orphans:
        self._prctl(self._PR_SET_CHILD_SUBREAPER, 1)
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Reap what is left (a process killed a moment ago is given up to 5 s to end), then
        stop being a subreaper."""
        try:
            deadline = time.monotonic() + 5.0
            while self.reap() or (self._left() and time.monotonic() < deadline):
                time.sleep(0.01)
        finally:
            self._prctl(self._PR_SET_CHILD_SUBREAPER, self._was)

    def _left(self) -> list[int]:
        """The children of this process that it knows (alive or not)."""
        pool = pool_processes()
        return [
            pid
            for pid in children_of(os.getpid())
            if pid in self.known or any(in_pool(uid) for uid in pool.get(pid, ()))
        ]

    def adopt(self, *pids: int) -> None:
        """Reap these PIDs too once they are this process's dead children (a spawner)."""
        self.known.update(pids)

    def reap(self) -> list[int]:
        """Reap every dead child of this process that it knows; the PIDs reaped now."""
        now = []
        for pid in self._left():
            if not alive(pid):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        now.append(pid)
        self.reaped += now
        return now


@pytest.fixture
def orphans() -> Iterator[Orphans]:
    """This test process as the reaper of what the servers it starts leave (:class:`Orphans`);
    request it before ``server``, so that every process the server starts knows it."""
    with Orphans() as reaper:
        yield reaper


def leases_are_live(running: Server, pool: range) -> int:
    """Assert that every lease file of ``pool`` names an invocation the server runs; the number
    of lease files checked.

    The manager lists an invocation from before its lease to after its release, so a record
    read before the listing and still there, unchanged, after it was held all along: its
    invocation must be in the listing.
    """
    before = records_in(pool)
    live = {row["invocation"] for row in control(running, "list-connections")}
    after = records_in(pool)
    held = {uid: record for uid, record in before.items() if after.get(uid) == record}
    orphans = {uid: r for uid, r in held.items() if r["invocation"] not in live}
    assert not orphans, f"lease files of no live invocation: {orphans}; live: {sorted(live)}"
    return len(held)


class Deaths:
    """Watches processes through pidfds (no PID reuse can fool it): :meth:`alive` says which
    still run at the moment it is asked, in the caller's thread; a thread notes when each ended
    (:attr:`ended`, monotonic seconds: for the figures, a poll interval late at worst)."""

    def __init__(self, pids: list[int]) -> None:
        self.fds: dict[int, int] = {}
        self.ended: dict[int, float] = {}
        self._lock = threading.Lock()
        self.watch(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def watch(self, pids: list[int]) -> None:
        """Watch these processes too (those already watched are skipped)."""
        with self._lock:
            for pid in pids:
                if pid in self.fds or pid in self.ended:
                    continue
                try:
                    self.fds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    self.ended[pid] = time.monotonic()

    def _ready(self, timeout_ms: int) -> list[int]:
        """The watched processes whose pidfd says they ended, waiting up to ``timeout_ms``."""
        poller = select.poll()
        with self._lock:
            pids = {fd: pid for pid, fd in self.fds.items() if pid not in self.ended}
        for fd in pids:
            poller.register(fd, select.POLLIN)
        return [pids[fd] for fd, _ in poller.poll(timeout_ms)] if pids else []

    def _watch(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS + SETTLE_TIMEOUT
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not self.running():
                self._stop.wait(0.05)  # more may be watched later
                continue
            with contextlib.suppress(OSError):  # a pidfd closed meanwhile: stopping
                for pid in self._ready(50):
                    self.ended.setdefault(pid, time.monotonic())

    def running(self) -> list[int]:
        """The watched processes the thread has not seen end (yet)."""
        with self._lock:
            return sorted(pid for pid in self.fds if pid not in self.ended)

    def alive(self) -> list[int]:
        """The watched processes that run now: their pidfd is not readable at this moment
        (asked in the caller's thread, with no wait; nothing after :meth:`close`)."""
        with self._lock:
            if self._stop.is_set():
                return []
            poller = select.poll()
            pids = {fd: pid for pid, fd in self.fds.items()}
            for fd in pids:
                poller.register(fd, select.POLLIN)
            ended = {pids[fd] for fd, _ in poller.poll(0)}
            return sorted(pid for pid in pids.values() if pid not in ended)

    def send(self, pid: int, signum: int) -> None:
        """Send a signal to a watched process through its pidfd (nothing if it is gone)."""
        with self._lock, contextlib.suppress(ProcessLookupError):
            if pid in self.fds:
                signal.pidfd_send_signal(self.fds[pid], signum)

    def close(self) -> None:
        """Stop watching, close the pidfds."""
        self._stop.set()
        self._thread.join(1)
        with self._lock:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()


def no_files_of_a_free_uid(top: str, pool: range, leased: set[int]) -> list[tuple[str, int]]:
    """Every file below ``top`` (on its file system) owned by a UID of ``pool`` not in
    ``leased``: what a half-done chown would leave."""
    found = []
    for parent, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(parent, name)
            with contextlib.suppress(FileNotFoundError):
                uid = os.lstat(path).st_uid
                if uid in pool and uid not in leased:
                    found.append((path, uid))
    return found


# --- the clients --------------------------------------------------------------------------------


@attrs.frozen
class Attempt:
    """One echo exchange of a load thread, as its client saw it.

    Attributes:
        started, ended: monotonic seconds of the connect attempt and of the outcome.
        outcome: ``echoed`` (the UID line and the request back, then the end), ``closed`` (the
            connection ended without the whole echo: refused by the server after accept, or
            reset before it was accepted),
            ``refused`` (the connect was refused: nothing listened), ``hung`` (no end within
            :data:`CLIENT_DEADLINE`).
        uid: the UID the handler printed, if it did.
        peer: the client's address as the server logs it, once connected.
        left_at_connect: what the ``on_connect`` look of :func:`echo_once` found the moment the
            connection was made (None: nothing looked).
    """

    started: float
    ended: float
    outcome: str
    uid: int | None
    peer: str | None
    left_at_connect: tuple[str, ...] | None = None


#: A look at the host taken the moment a client's connection is made: what it finds.
OnConnect = Callable[[], list[str]]


def echo_once(address: tuple[str, int], token: str, on_connect: OnConnect | None = None) -> Attempt:
    """Connect, send ``token`` and a newline, half-close, and read the answer to its end; with
    ``on_connect``, call it as soon as the connection is made (before anything is sent)."""
    started = time.monotonic()
    try:
        client = Client(address, CLIENT_DEADLINE)
    except ConnectionRefusedError:
        return Attempt(started, time.monotonic(), "refused", None, None)
    except ConnectionResetError:  # the listener closed (a crash) while the handshake was queued
        return Attempt(started, time.monotonic(), "closed", None, None)
    except TimeoutError:
        return Attempt(started, time.monotonic(), "hung", None, None)
    with client:
        left = None if on_connect is None else tuple(on_connect())
        peer = f"127.0.0.1:{client.port}"
        try:
            client.send(f"{token}\n".encode())
            client.finish_sending()
            answer = client.rest().decode(errors="replace")
        except AssertionError:  # no end of the answer within the deadline
            return Attempt(started, time.monotonic(), "hung", None, peer, left)
        except OSError:  # reset while sending: closed by the server
            return Attempt(started, time.monotonic(), "closed", None, peer, left)
    found = re.match(r"UID=(\d+)\n", answer)
    uid = int(found.group(1)) if found else None
    outcome = "echoed" if answer == f"UID={uid}\n{token}\n" else "closed"
    return Attempt(started, time.monotonic(), outcome, uid, peer, left)


class EchoLoad:
    """Client threads doing echo exchanges, each bounded by :data:`LOAD_MOST` exchanges (a
    connect refused, nothing listening, does not count: the load goes on after a restart),
    :data:`REFUSED_MOST` refused connects and :data:`LOAD_SECONDS`; :meth:`stop` ends them and
    returns every attempt. Set :attr:`on_connect` to look at the host at each connect."""

    def __init__(self, address: tuple[str, int], threads: int, name: str) -> None:
        self.address = address
        self.attempts: list[Attempt] = []
        self.on_connect: OnConnect | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(f"{name}{n}",), daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        exchanges = refused = 0
        while exchanges < LOAD_MOST and refused < REFUSED_MOST:
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            attempt = echo_once(self.address, f"{name}-{exchanges}", self.on_connect)
            with self._lock:
                self.attempts.append(attempt)
            if attempt.outcome == "refused":
                refused += 1
                time.sleep(0.01)  # nothing listens: do not spin
            else:
                exchanges += 1

    def count(self, outcome: str, since: float = 0.0) -> int:
        """How many attempts started at ``since`` or later ended in ``outcome`` so far."""
        with self._lock:
            return sum(1 for a in self.attempts if a.outcome == outcome and a.started >= since)

    def stop(self) -> list[Attempt]:
        """End the threads (each finishes its exchange) and return every attempt."""
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_DEADLINE * 2 + 1)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not end"
        return sorted(self.attempts, key=lambda a: a.started)


def outcomes(attempts: list[Attempt]) -> dict[str, int]:
    """How many attempts ended each way."""
    out: dict[str, int] = {}
    for attempt in attempts:
        out[attempt.outcome] = out.get(attempt.outcome, 0) + 1
    return out


def hold(address: Address) -> tuple[Client, int]:
    """A connection whose handler runs (it printed its UID) until the client lets go."""
    client = Client(address, CLIENT_DEADLINE)
    try:
        return client, printed_uid(client.line())
    except BaseException:
        client.close()
        raise


def pool_settings(pool: range) -> str:
    """The ``[pool]`` table of ``pool``: refuse at once when it is exhausted."""
    return f'[pool]\nfirst = {pool.start}\nlast = {pool.stop - 1}\non_exhausted = "reject"\n'


# --- kill -9 of the activator -------------------------------------------------------------------

CRASH_POOL: Final = range(64700, 64764)


def named_cgroups(records: dict[int, dict[str, Any]]) -> set[str]:
    """The invocation cgroups lease records name (their ``cgroup``: one per line)."""
    return {
        name
        for record in records.values()
        for name in str(record.get("cgroup") or "").split("\n")
        if name
    }


def still_there(deaths: Deaths, cgroups: set[str], but: int) -> list[str]:
    """What of a crashed run runs now: its watched processes (but ``but``) whose pidfd is not
    readable, and its invocation cgroups that hold a process."""
    return [f"pid {pid} {command_line(pid)!r}" for pid in deaths.alive() if pid != but] + [
        f"cgroup {name}" for name in sorted(cgroups) if cgroup_populated(name)
    ]


def zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and waits to be reaped."""
    return os.path.exists(f"/proc/{pid}") and not alive(pid)


@pytest.mark.parametrize(
    "spawner_hangs", [False, True], ids=["the-spawner-exits", "the-spawner-hangs"]
)
def test_kill_9_of_the_activator_under_load_then_a_restart_leaves_nothing_of_the_crashed_run(
    leaves_nothing: None,
    orphans: Orphans,
    server: StartServer,
    directory_name: Callable[[str], str],
    figures: Figures,
    spawner_hangs: bool,
) -> None:
    echo_port, child_port, state_port = free_port(), free_port(), free_port()
    state = directory_name("f9crash")
    units = {
        **echo_units("f9crash", echo_port),
        **service_units("f9child", child_port, ECHO_WITH_CHILD),
        **service_units(
            "f9state", state_port, APPEND_TO_STATE, service_lines=[f"StateDirectory={state}"]
        ),
    }
    settings = pool_settings(CRASH_POOL)
    crashed = server(units, settings)
    stored: list[str] = []  # the lines the state handler said it stored, in order
    sent: list[str] = []  # the connections of the state's client
    stopping = threading.Event()

    def append_to_state() -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        refused = 0  # connects that did not get through (nothing listened): not counted
        while len(sent) < LOAD_MOST and refused < REFUSED_MOST:
            if stopping.is_set() or time.monotonic() > deadline:
                return
            line = f"line-{len(sent)}"
            try:
                client = Client(("127.0.0.1", state_port), CLIENT_DEADLINE)
            except OSError:
                refused += 1
                time.sleep(0.01)
                continue
            sent.append(line)
            with client, contextlib.suppress(OSError, AssertionError):
                printed_uid(client.line())
                client.send(f"{line}\n".encode())
                if client.line() == "stored":
                    stored.append(line)
            time.sleep(0.02)

    with contextlib.ExitStack() as stack:
        held_clients: list[Client] = []
        held_uids: list[int] = []
        for port in (echo_port, echo_port, echo_port, child_port):
            client, uid = hold(("127.0.0.1", port))
            stack.callback(client.close)
            held_clients.append(client)
            held_uids.append(uid)
        child_uid = held_uids[-1]
        wait_until(  # the handler's background child runs
            "the background sleep of the held handler",
            lambda: any("sleep" in command_line(pid) for pid in processes_of(child_uid)),
        )
        load = EchoLoad(("127.0.0.1", echo_port), 3, "crash")
        writer = threading.Thread(target=append_to_state, daemon=True)
        writer.start()
        wait_until("the load is served", lambda: load.count("echoed") >= 20 and len(stored) >= 3)
        checked = sum(leases_are_live(crashed, CRASH_POOL) for _ in range(5))
        # A socket of its own beside the main userdb socket outlives a kill -9 (see the report).
        userdb_path = userdb_socket(crashed)
        if userdb_path.endswith(f".run-{crashed.proc.pid}"):
            stack.callback(lambda: Path(userdb_path).unlink(missing_ok=True))

        # The crashed run, stopped while it is looked at (the activator and its spawner): no
        # lease is taken and no handler started meanwhile. Its processes are those of every UID
        # it leased, as its lease files say.
        spawner = spawner_of(crashed.proc.pid)
        orphans.adopt(spawner)  # its parent dies: this test reaps it
        deaths = Deaths([spawner])
        stack.callback(deaths.close)
        crashed.signal(signal.SIGSTOP)
        stack.callback(crashed.proc.send_signal, signal.SIGCONT)  # a failure here: stop it then
        deaths.send(spawner, signal.SIGSTOP)
        if spawner_hangs:  # a hung spawner cannot take its handlers down with it
            stack.callback(deaths.send, spawner, signal.SIGKILL)  # whatever happens
        else:
            stack.callback(deaths.send, spawner, signal.SIGCONT)
        records = records_in(CRASH_POOL)
        ours = set(records)
        assert set(held_uids) <= ours
        leftovers = {pid: uid for uid in ours for pid in processes_of(uid)}
        background = [pid for pid in processes_of(child_uid) if "sleep" in command_line(pid)]
        assert background, "the background child is gone before the crash"
        deaths.watch(list(leftovers))
        stored_before = len(stored)

        killed = time.monotonic()
        crashed.signal(signal.SIGKILL)
        crashed.proc.wait(SETTLE_TIMEOUT)
        if not spawner_hangs:
            deaths.send(spawner, signal.SIGCONT)  # it sees its activator gone
            # Each held client sees its connection end: its handler died with the spawner.
            for client in held_clients:
                assert client.rest() == b"", "a held connection got data, or did not end"
            closed_seconds = time.monotonic() - killed
            wait_until("the spawner exits", lambda: spawner in deaths.ended)
        # What is left of the crashed run when the restart begins: every process of its UIDs
        # (a handler's child started after the look above too), and the cgroups its lease files
        # name (a process started after that last look is in one of them).
        deaths.watch([pid for uid in ours for pid in processes_of(uid)])
        cgroups = named_cgroups(records)
        running_at_restart = [pid for pid in deaths.alive() if pid != spawner]
        watched = len(deaths.fds) - 1  # the spawner is not the crashed run's handlers
        if spawner_hangs:
            # The held handlers (and the background child) outlive the crash: nothing kills them.
            held_processes = [pid for pid, uid in leftovers.items() if uid in held_uids]
            assert set(held_processes) <= set(running_at_restart), "died with a hung spawner"

        def left_now() -> list[str]:
            return still_there(deaths, cgroups, spawner)

        restart = time.monotonic()
        load.on_connect = left_now  # every connection after the restart looks
        restarted = server(units, settings, directory=crashed.directory, wait=False)
        listening = first_echo = None
        left_at_listen: tuple[str, ...] = ()
        while first_echo is None:
            assert time.monotonic() - restart < 30, f"not serving again: {restarted.log()}"
            attempt = echo_once(("127.0.0.1", echo_port), "probe", left_now)
            if attempt.outcome != "refused" and listening is None:
                listening = attempt.started - restart  # a connect attempt that got through
                left_at_listen = attempt.left_at_connect or ()
            if attempt.outcome == "echoed":
                first_echo = attempt.ended - restart
            elif attempt.outcome == "refused":
                time.sleep(0.005)
        assert listening is not None
        # The restart killed what was left of the crashed run before it listened: when the first
        # connection got through, every process of it had ended (its pidfd said so, looked at
        # that moment) and its cgroups were empty. The handlers, their children, and (unless it
        # is stopped) the spawner.
        assert left_at_listen == (), f"running when the restart listened: {left_at_listen}"
        restarted.wait_for(lambda e: e.get("event") == "ready")
        ready = time.monotonic() - restart
        if spawner_hangs:
            for client in held_clients:
                assert client.rest() == b"", "a held connection got data, or did not end"
            closed_seconds = time.monotonic() - killed
            deaths.send(spawner, signal.SIGKILL)
            wait_until("the stopped spawner is killed", lambda: spawner in deaths.ended)
        # The spawner's parent died: the spawner, and the handlers it had not reaped, are this
        # test's to reap (a child subreaper), not the host's init's.
        wait_until(
            "the crashed run's processes are reaped",
            lambda: not orphans.reap() and not any(zombie(pid) for pid in deaths.fds),
        )
        after_restart = time.monotonic()
        with contextlib.suppress(AssertionError):
            wait_until("load after the restart", lambda: load.count("echoed", restart) >= 20, 5)
        stopping.set()
        writer.join(CLIENT_DEADLINE * 2 + 1)
        checked += leases_are_live(restarted, CRASH_POOL)
        attempts = load.stop()

    # No connection was made while anything of the crashed run ran, so no UID was leased twice:
    # every connection after the restart found nothing of it left the moment it was made.
    looked = [a for a in attempts if a.left_at_connect is not None]
    early = [a for a in looked if a.left_at_connect]
    assert not early, f"connections made while the crashed run ran: {early}"
    reused = [a for a in looked if a.uid in ours]
    assert [a for a in attempts if a.outcome == "hung"] == []

    # The state directory is intact, and owned by the UID the next connection runs as.
    log = Path(f"/var/lib/private/{state}/log")
    lines = log.read_text().splitlines()
    assert set(stored) <= set(lines), f"the state file lost lines: {set(stored) - set(lines)}"
    # Each line whole, in the order written (a line cut by the crash was never acknowledged).
    assert all(re.fullmatch(r"line-\d+", line) for line in lines), lines
    numbers = [int(line.removeprefix("line-")) for line in lines]
    assert numbers == sorted(set(numbers)), lines
    with Client(("127.0.0.1", state_port), CLIENT_DEADLINE) as client:
        uid = printed_uid(client.line())
        client.send(b"after-restart\n")
        assert client.line() == "stored"
        owners = {os.stat(path).st_uid for path in (log.parent, log)}
        assert owners == {uid}, f"the state directory is owned by {owners}, not by {uid}"
        assert os.stat(log.parent).st_gid == uid
    assert log.read_text().splitlines() == [*lines, "after-restart"]

    # After the load, every lease of the pool is released: no lease file is left.
    wait_until("every lease is released", lambda: records_in(CRASH_POOL) == {})
    assert restarted.stop() == 0
    assert zombies_in(CRASH_POOL) == []
    figures.update(
        connections=len(attempts) + len(held_clients) + len(sent) + 1,
        faults_injected=1,
        held_connections=len(held_clients),
        crashed_run_processes=watched,
        crashed_run_uids=len(ours),
        crashed_run_cgroups=len(cgroups),
        background_children=len(background),
        spawner_hangs=spawner_hangs,
        spawner_exited_seconds=None if spawner_hangs else round(deaths.ended[spawner] - killed, 3),
        held_connections_closed_seconds=round(closed_seconds, 3),
        processes_alive_at_restart=len(running_at_restart),
        leftovers_gone_after_kill_seconds=round(
            max((deaths.ended[pid] for pid in leftovers), default=killed) - killed, 3
        ),
        left_when_listening=len(left_at_listen),
        restart_listening_seconds=round(listening, 3),
        restart_first_echo_seconds=round(first_echo, 3),
        restart_ready_seconds=round(ready, 3),
        connections_checked_at_connect=len(looked),
        uids_reused_after_restart=len({a.uid for a in reused}),
        leased_twice=len([a for a in reused if a.left_at_connect]),
        reaped_by_the_test=len(orphans.reaped),
        lease_files_checked_live=checked,
        state_lines_stored=len(stored),
        state_lines_stored_before_crash=stored_before,
        state_lines_lost=len(set(stored) - set(lines)),
        load_outcomes=outcomes(attempts),
        load_refused_during_crash=sum(
            1 for a in attempts if a.outcome == "refused" and killed <= a.started <= after_restart
        ),
        connections_cut_by_the_crash=len(held_clients) + outcomes(attempts).get("closed", 0),
        lost=len(set(stored) - set(lines)) + len(early),
    )


# --- kill -9 of the spawner ---------------------------------------------------------------------

SPAWNER_POOL: Final = range(64800, 64832)
#: What the server logs when its spawner died, and when a new one runs.
SPAWNER_DIED: Final = re.compile(
    r"spawner \(pid (\d+)\) died \(killed by SIGKILL\): (\d+) spawns failed, (\d+) handlers killed"
)
SPAWNER_RESTARTED: Final = re.compile(r"spawner restarted \(pid (\d+)\)")


def test_kill_9_of_the_spawner_under_load_restarts_it_and_no_connection_hangs(
    leaves_nothing: None, orphans: Orphans, server: StartServer, figures: Figures
) -> None:
    port, metrics_port = free_port(), free_port()
    running = server(
        echo_units("f9spawn", port),
        pool_settings(SPAWNER_POOL),
        metrics=f"127.0.0.1:{metrics_port}",
    )
    label = {"unit": "f9spawn@.service"}
    with contextlib.ExitStack() as stack:
        held: list[tuple[Client, int]] = []
        for _ in range(3):
            client, uid = hold(("127.0.0.1", port))
            stack.callback(client.close)
            held.append((client, uid))
        held_peers = {f"127.0.0.1:{client.port}" for client, _ in held}
        load = EchoLoad(("127.0.0.1", port), 4, "spawn")
        wait_until("the load is served", lambda: load.count("echoed") >= 20)
        spawner = spawner_of(running.proc.pid)
        deaths = Deaths([spawner, *(pid for _, uid in held for pid in processes_of(uid))])
        stack.callback(deaths.close)

        killed_at = time.monotonic()
        os.kill(spawner, signal.SIGKILL)
        # The held handlers die with their spawner: each client sees its connection end.
        for client, _ in held:
            assert client.rest() == b"", "a held connection got data, or did not end"
        closed_seconds = time.monotonic() - killed_at
        died = logged(running, SPAWNER_DIED)
        back = logged(running, SPAWNER_RESTARTED)
        restarted_seen = time.monotonic()
        new_spawner = spawner_of(running.proc.pid)
        assert (int(died[1]), int(back[1])) == (spawner, new_spawner)
        wait_until(
            "served after the restart", lambda: load.count("echoed", restarted_seen) >= 20, 10
        )
        # The held handlers are gone (their processes ended, all of them).
        assert deaths.alive() == [], [(pid, command_line(pid)) for pid in deaths.alive()]
        attempts = load.stop()

    # Every UID is released once the load is over.
    wait_until("every lease is released", lambda: records_in(SPAWNER_POOL) == {})
    # Every connection is logged once, as an invocation or a reject.
    every = len(attempts) + len(held)
    running.wait_for(lambda e: logged_connection(e, "f9spawn"), count=every)
    assert [a for a in attempts if a.outcome == "hung"] == []
    assert [a for a in attempts if a.outcome == "refused"] == [], "the socket stopped listening"

    # What clients saw, and what the server counted. A spawn in flight when the spawner died is
    # refused: a `reject` event (reason "spawner"). A handler that ran is killed with the
    # spawner: an `invocation` event failed at the stage "spawner". Every client whose
    # connection ended without its echo is one of them.
    died_text, failed_spawns, killed_handlers = died[0], int(died[2]), int(died[3])
    refused = {e["peer"] for e in running.rejects() if e["reason"] == "spawner"}
    killed = {e["peer"] for e in running.invocations("f9spawn@") if e["stage"] == "spawner"}
    # The spawns the log says failed, and those sent to the dead spawner before the server saw
    # it die (the send fails: refused too).
    assert len(refused) >= failed_spawns, (died_text, running.log())
    assert len(killed) == killed_handlers, died_text
    assert held_peers <= killed
    cut = [a for a in attempts if a.outcome == "closed"]
    cut_peers = {a.peer for a in cut} | held_peers
    assert cut_peers <= refused | killed, (
        f"closed with no failure logged: {cut_peers - refused - killed}: "
        f"{[e for e in running.events if e.get('peer') in cut_peers - refused - killed]}"
    )
    # The other way round, a client may have been served all the same when the spawner died
    # between its handler's start (or exit) and the report of it: a handler ran but the spawn
    # counts as refused ("may not have started"), or it exited but its status is lost.
    unseen = (refused | killed) - cut_peers
    echoed = {a.peer for a in attempts if a.outcome == "echoed"}
    assert unseen <= echoed, f"failures no client saw: {unseen - echoed}"
    # Every other connection was served, and logged as an invocation.
    served = [e for e in running.invocations("f9spawn@") if e["failure"] is None]
    assert len(served) + len(refused) + len(killed) == every

    metrics = parse(scrape(metrics_port).body)
    assert value(metrics, "activator_spawner_restarts_total") == 1
    assert value(metrics, "activator_spawner_up") == 1
    assert value(
        metrics, "activator_connections_rejected_total", unit="f9spawn.socket", reason="spawner"
    ) == len(refused)
    # Both kinds count as failed invocations: the refused ones as spawn failures (their handler
    # never ran), the killed ones as exits whose status went with the spawner.
    failures = len(refused) + len(killed)
    assert value(metrics, "activator_invocations_total", result="failure", **label) == failures
    spawn_failures = value(metrics, "activator_spawn_failures_total", stage="spawner", **label)
    assert spawn_failures == len(refused)
    exits = counter(
        metrics, "activator_handler_exits_total", how="lost", status="spawner_died", **label
    )
    assert exits == len(killed)
    assert value(metrics, "activator_invocations_total", result="success", **label) == len(served)
    assert running.stop() == 0
    # The killed handlers were the dead spawner's children: orphans, reparented to this test (a
    # child subreaper), which reaps them (the host's init need not).
    reaped = wait_until(
        "the orphans are reaped",
        lambda: not orphans.reap() and zombies_in(SPAWNER_POOL) == [],
    )

    gap = [a for a in attempts if a.started <= restarted_seen and a.ended >= killed_at]
    served_again = min(a.ended for a in attempts if a.outcome == "echoed" and a.started > killed_at)
    figures.update(
        connections=len(attempts) + len(held),
        faults_injected=1,
        held_connections=len(held),
        held_connections_closed_seconds=round(closed_seconds, 3),
        spawner_restart_seen_seconds=round(restarted_seen - killed_at, 3),
        connections_during_the_gap=len(gap),
        gap_outcomes=outcomes(gap),
        refused=len(refused),
        handlers_killed=len(killed),
        closed_without_echo_seen_by_clients=len(cut_peers),
        closed_slowest_seconds=round(max((a.ended - a.started for a in cut), default=0.0), 3),
        hung=sum(1 for a in attempts if a.outcome == "hung"),
        counted_as_failed_invocations=failures,
        counted_as_spawn_failures=int(spawn_failures),
        refused_but_served=len(unseen & refused),
        status_lost_but_served=len(unseen & killed),
        served_again_seconds=round(served_again - killed_at, 3),
        orphans_reaped_after_stop_seconds=round(reaped, 3),
        orphans_reaped_by_the_test=len(orphans.reaped),
        load_outcomes=outcomes(attempts),
        lost=len(cut_peers - refused - killed),
    )


# --- a full file system -------------------------------------------------------------------------

DISK_POOL: Final = range(64850, 64866)
#: The owner of a state directory left by an earlier user: in the default pool, not in the
#: test's, so the pool does not prefer it and the directory must be chowned.
STALE_UID: Final = 64899
#: The small file system: 2 MiB of 1 KiB blocks, no blocks reserved for root, few inodes.
SMALL_FS_SIZE: Final = "2M"
SMALL_FS_INODES: Final = 64
NO_SPACE: Final = os.strerror(errno.ENOSPC)


@contextlib.contextmanager
def small_file_system(image: Path, mount_point: str) -> Iterator[str]:
    """A loop-mounted ext4 of :data:`SMALL_FS_SIZE` at ``mount_point`` (made, and removed at the
    end with the file system unmounted); the mount point."""
    subprocess.run(["truncate", "-s", SMALL_FS_SIZE, str(image)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", "-N", str(SMALL_FS_INODES), str(image)],
        check=True,
        capture_output=True,
    )
    if not os.path.isdir("/var/lib/private"):
        os.mkdir("/var/lib/private", 0o700)  # the boundary, as activator makes it
    os.mkdir(mount_point, 0o755)
    try:
        subprocess.run(["mount", "-o", "loop", str(image), mount_point], check=True)
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", mount_point], check=True)
    finally:
        os.rmdir(mount_point)
        image.unlink()


def fill(top: str, *, blocks: bool = True, inodes: bool = True) -> tuple[int, int]:
    """Fill the file system of ``top``: its inodes with empty files, then its blocks with one
    file, each until ENOSPC (as root: nothing is reserved for root); (bytes, files) written."""
    filler = os.path.join(top, "filler")
    os.makedirs(filler, exist_ok=True)
    written = files = 0
    big = os.open(os.path.join(filler, "blocks"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if inodes:
            for n in range(SMALL_FS_INODES * 2):
                try:
                    os.close(os.open(os.path.join(filler, f"inode-{n}"), os.O_CREAT | os.O_WRONLY))
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
                files += 1
        # Large writes, then what is left block by block; ext4 counts delayed allocations
        # late, so again after each fsync until no block is free.
        for size in (65536, 1024, 1024, 1024, 1024) if blocks else ():
            if os.fstatvfs(big).f_bavail == 0:
                break
            for _ in range(4096):
                try:
                    written += os.write(big, b"\0" * size)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
            os.fsync(big)
    finally:
        os.close(big)
    return written, files


def unfill(top: str) -> None:
    """Remove what :func:`fill` wrote."""
    filler = os.path.join(top, "filler")
    for name in os.listdir(filler):
        os.unlink(os.path.join(filler, name))


def cannot_mkdir(top: str) -> bool:
    """Whether a directory cannot be made on the file system of ``top`` for want of space."""
    try:
        os.mkdir(os.path.join(top, "probe"))
    except OSError as error:
        return error.errno == errno.ENOSPC
    os.rmdir(os.path.join(top, "probe"))
    return False


def refused_at_once(address: tuple[str, int]) -> float:
    """Connect and wait for the end: the connection must close with no data; the seconds."""
    started = time.monotonic()
    with Client(address, CLIENT_DEADLINE) as client:
        assert client.rest() == b"", "served, where the invocation should have failed"
    return time.monotonic() - started


def test_a_full_file_system_fails_the_state_directory_creation_alone(
    leaves_nothing: None,
    server: StartServer,
    directory_name: Callable[[str], str],
    tmp_path: Path,
    figures: Figures,
) -> None:
    full_port, other_port = free_port(), free_port()
    parent = directory_name("f9disk")
    other_state = directory_name("f9other")
    units = {
        **service_units(
            "f9disk", full_port, ECHO, service_lines=[f"StateDirectory={parent}/state"]
        ),
        **service_units(
            "f9other", other_port, ECHO, service_lines=[f"StateDirectory={other_state}"]
        ),
    }
    private = f"/var/lib/private/{parent}/state"
    public = f"/var/lib/{parent}/state"
    mount_point = f"/var/lib/private/{parent}"
    failures: list[str] = []
    refused_seconds: list[float] = []
    others = 0
    with small_file_system(tmp_path / "small.ext4", mount_point):
        running = server(units, pool_settings(DISK_POOL))
        for full in ("blocks", "inodes"):
            fill(mount_point, blocks=full == "blocks", inodes=full == "inodes")
            assert cannot_mkdir(mount_point), f"the file system has room ({full} filled)"
            for _ in range(2):
                refused_seconds.append(refused_at_once(("127.0.0.1", full_port)))
                # Another service goes on being served meanwhile.
                answer = exchange(("127.0.0.1", other_port), b"other\n").decode()
                assert answer == f"UID={printed_uid(answer)}\nother\n"
                others += 1
            # Nothing half made: no state directory (nor its public symlink), no lease, no file
            # of a pool UID on the full file system.
            assert not os.path.lexists(private)
            assert not os.path.lexists(public)
            wait_until("no lease is left", lambda: records_in(DISK_POOL) == {})
            half_owned = no_files_of_a_free_uid(mount_point, DISK_POOL, set())
            assert half_owned == []
            unfill(mount_point)
        # With room again, the same service is served, its directory made and owned right.
        with Client(("127.0.0.1", full_port), CLIENT_DEADLINE) as client:
            uid = printed_uid(client.line())
            info = os.stat(private)
            assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, uid, 0o755)
            assert os.readlink(public) == f"../private/{parent}/state"
        running.wait_for(  # each connection is logged, once its teardown is over
            lambda e: logged_connection(e, "f9disk"), count=len(refused_seconds) + 1
        )
        failed = [e for e in running.invocations("f9disk@") if e["failure"] is not None]
        for event in failed:
            assert event["stage"] == "directories", event
            assert event["failure"] == f"mkdir {private}: {NO_SPACE}", event
            failures.append(event["failure"])
        assert len(failed) == len(refused_seconds)
        assert running.rejects() == []
        wait_until("no lease is left", lambda: records_in(DISK_POOL) == {})
        assert running.stop() == 0
    figures.update(
        connections=len(refused_seconds) + others + 1,
        faults_injected=2,  # blocks full, then inodes full
        failed_invocations=len(failed),
        refused_slowest_seconds=round(max(refused_seconds), 3),
        other_service_served=others,
        error=failures[0],
        served_with_room_again=1,
        half_owned_files=len(half_owned),
        lost=len(half_owned),
    )


def make_tree(top: str, owner: int) -> int:
    """A state directory tree at ``top`` (3 directories of 3 files, and a symlink) owned by
    ``owner``; the number of entries, ``top`` included."""
    os.mkdir(top, 0o755)
    made = [top]
    for d in range(3):
        sub = os.path.join(top, f"dir{d}")
        os.mkdir(sub, 0o755)
        made.append(sub)
        for f in range(3):
            path = os.path.join(sub, f"file{f}")
            Path(path).write_text(f"{d}.{f}\n")
            made.append(path)
    os.symlink("dir0/file0", os.path.join(top, "link"))
    made.append(os.path.join(top, "link"))
    for path in made:
        os.lchown(path, owner, owner)
    return len(made)


def owners_below(top: str) -> dict[str, tuple[int, int]]:
    """The owner (UID, GID) of every entry below ``top``, ``top`` included."""
    out = {top: (os.lstat(top).st_uid, os.lstat(top).st_gid)}
    for parent, dirs, files in os.walk(top):
        for name in dirs + files:
            info = os.lstat(os.path.join(parent, name))
            out[os.path.join(parent, name)] = (info.st_uid, info.st_gid)
    return out


def test_a_chown_on_a_full_file_system_needs_no_space_and_serves(
    leaves_nothing: None,
    server: StartServer,
    directory_name: Callable[[str], str],
    tmp_path: Path,
    figures: Figures,
) -> None:
    port = free_port()
    parent = directory_name("f9chown")
    private = f"/var/lib/private/{parent}/state"
    mount_point = f"/var/lib/private/{parent}"
    with small_file_system(tmp_path / "small.ext4", mount_point):
        entries = make_tree(private, STALE_UID)
        written, files = fill(mount_point)  # no block and no inode left
        space = os.statvfs(mount_point)
        assert (space.f_bavail, space.f_favail) == (0, 0), space
        running = server(
            service_units("f9chown", port, ECHO, service_lines=[f"StateDirectory={parent}/state"]),
            pool_settings(DISK_POOL),
        )
        with Client(("127.0.0.1", port), CLIENT_DEADLINE) as client:
            uid = printed_uid(client.line())
            assert uid != STALE_UID
            # The whole tree is the new user's: chown changes the inode only, and ext4 has
            # room for that on a full disk.
            owners = owners_below(private)
            assert set(owners.values()) == {(uid, uid)}, owners
            assert len(owners) == entries
            client.send(b"still full\n")
            client.finish_sending()
            assert client.rest() == b"still full\n"
        (done,) = running.wait_for(
            lambda e: e.get("event") == "invocation" and e["unit"].startswith("f9chown@")
        )
        assert (done["exit_code"], done["failure"]) == (0, None), done
        (chowned,) = running.wait_for(lambda e: "chowned" in str(e.get("message")))
        assert f"chowned {entries} files to {uid}" in chowned["message"]
        assert os.statvfs(mount_point).f_bavail == 0, "the file system had room after all"
        wait_until("no lease is left", lambda: records_in(DISK_POOL) == {})
        assert running.stop() == 0
    figures.update(
        connections=1,
        faults_injected=1,
        filled_bytes=written,
        filled_inodes=files,
        chowned_files=entries,
        directories_seconds=done["timings"].get("directories"),
        failed_invocations=0 if done["failure"] is None else 1,
        lost=0 if set(owners.values()) == {(uid, uid)} else len(owners),
    )


# --- silent userdb clients ----------------------------------------------------------------------

USERDB_POOL: Final = range(64900, 64916)
#: The user the silent clients connect as (the per-peer cap counts connections per peer UID),
#: and another unprivileged user whose lookups must not suffer from them.
SILENT_UID: Final = 65534  # nobody
OTHER_UID: Final = 1  # daemon
#: The most connections of one peer UID the userdb socket serves at once.
PER_PEER_CAP: Final = UserdbLimits().max_connections_per_uid
#: Connects COUNT clients to PATH that never read nor write, then one more, and prints (JSON)
#: how many it holds and whether the server closed the extra one within a second; holds them
#: all until its stdin closes. Run by the system's Python as an unprivileged user.
SILENT_CLIENTS: Final = """\
import json, select, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(count + 1):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    held.append(client)
started = time.monotonic()
readable, _, _ = select.select([held[-1]], [], [], 1.0)
closed = bool(readable) and held[-1].recv(1) == b""
print(json.dumps({"held": count, "extra_closed": closed,
                  "seconds": round(time.monotonic() - started, 4)}), flush=True)
sys.stdin.read()
"""


@attrs.frozen
class Lookup:
    """One ``getent passwd`` as a host tool runs it: its exit status, output and seconds."""

    code: int
    output: str
    seconds: float


def lookup(uid: int, as_uid: int = 0) -> Lookup:
    """``getent passwd UID``, run as ``as_uid`` (root by default), timed.

    nss-systemd asks each userdb socket itself, as the process's UID: it never goes through
    systemd-userdbd's ``io.systemd.Multiplexer`` (it looks up with ``USERDB_EXCLUDE_NSS``, and
    systemd's userdb.c asks the multiplexer only without it), so the UID our socket sees is
    ``as_uid`` even where systemd-userdbd runs.
    """
    if as_uid == 0:
        started = time.monotonic()
        done = getent_passwd(uid)
    else:
        argv = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups"]
        started = time.monotonic()
        done = subprocess.run(
            [*argv, "getent", "passwd", str(uid)],
            capture_output=True,
            text=True,
            env=host_env(),
            timeout=ANSWERS_WITHIN * 3,
            check=False,
        )
    return Lookup(done.returncode, done.stdout, time.monotonic() - started)


def first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first line ``process`` prints (it prints it whole, at once); AssertionError when it
    prints none within ``timeout`` s, or ends first."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no line from {process.args!r} within {timeout} s"
    line = process.stdout.readline()
    assert line.endswith("\n"), f"{process.args!r} ended without a line: {line!r}"
    return line


def end(process: subprocess.Popen[str], timeout: float) -> None:
    """Close the stdin of ``process`` and wait for it to end; SIGKILL, by PID, if it does not
    within ``timeout`` s. Its stdout is closed."""
    try:
        if process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    finally:
        if process.stdout is not None:
            process.stdout.close()


def test_silent_userdb_clients_up_to_the_per_peer_cap_do_not_delay_other_lookups(
    leaves_nothing: None, server: StartServer, figures: Figures
) -> None:
    port = free_port()
    running = server(echo_units("f9nss", port), pool_settings(USERDB_POOL))
    path = userdb_socket(running)
    assert stat.S_ISSOCK(os.stat(path).st_mode), path
    found: dict[str, Any] = {}
    connections = failed = 0
    with contextlib.ExitStack() as stack:
        users = []
        for _ in range(2):
            client, uid = hold(("127.0.0.1", port))
            stack.callback(client.close)
            users.append(uid)
        idle = lookup(users[0])
        assert idle.code == 0, idle
        assert idle.output.startswith("f9nss-"), idle
        found["lookup_idle_ms"] = round(idle.seconds * 1000, 1)
        for silent in (1, PER_PEER_CAP):
            clients = subprocess.Popen(
                ["/usr/bin/python3", "-I", "-c", SILENT_CLIENTS, path, str(silent)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                user=SILENT_UID,
                group=SILENT_UID,
                extra_groups=[],
            )
            try:
                held = json.loads(first_line(clients, CLIENT_DEADLINE))
                connections += held["held"] + 1
                # Below the cap the extra connection is served (it waits for a request); at
                # the cap it is closed at once: the silent ones hold every slot of their UID.
                assert held["extra_closed"] is (silent == PER_PEER_CAP), held
                by_root = lookup(users[0])
                by_other = lookup(users[1], as_uid=OTHER_UID)
                by_silent_uid = lookup(users[1], as_uid=SILENT_UID)
            finally:
                end(clients, CLIENT_DEADLINE)
            for each, uid in ((by_root, users[0]), (by_other, users[1])):
                failed += each.code != 0
                assert each.code == 0, each
                assert each.output.startswith("f9nss-"), each
                assert f":{uid}:{uid}:" in each.output, each
                assert each.seconds < ANSWERS_WITHIN, each
            # The UID holding its cap is refused by our socket, at once (never a wait): for it,
            # the dynamic user does not exist then. Its own doing, and no one else's problem.
            assert by_silent_uid.code == (2 if silent == PER_PEER_CAP else 0), by_silent_uid
            assert by_silent_uid.seconds < ANSWERS_WITHIN, by_silent_uid
            found[f"silent_{silent}_lookup_by_root_ms"] = round(by_root.seconds * 1000, 1)
            found[f"silent_{silent}_lookup_by_other_uid_ms"] = round(by_other.seconds * 1000, 1)
            found[f"silent_{silent}_lookup_by_the_silent_uid"] = {
                "exit": by_silent_uid.code,
                "ms": round(by_silent_uid.seconds * 1000, 1),
            }
            found[f"silent_{silent}_extra_connection_closed"] = held["extra_closed"]
    assert running.stop() == 0
    figures.update(
        connections=len(users) + connections,
        silent_clients=[1, PER_PEER_CAP],
        per_peer_cap=PER_PEER_CAP,
        lookups=1 + 3 * 2,
        **found,
        lookups_failed_for_others=failed,
        lost=failed,
    )
