"""Faults injected into a real ``activator serve`` under load, and what its users see after.

Each test starts a real server (the ``server`` fixture), puts it under client load, injects one
fault, and asserts what clients and the host see afterwards; each records its figures (the
``figures`` fixture: connections run, faults injected, what was lost, recovery seconds).

- ``kill -9`` of the activator: its spawner sees its socket close and exits, killing and reaping
  every handler (each one PID 1 of its PID namespace: its background children die with it).
  With a hung spawner the handlers outlive the crash, and the restart kills them through the
  cgroups its stale lease files name, before it listens. Either way nothing of the crashed run
  is left, no UID is leased twice, the state directory is intact, and the restart listens
  again in well under the issue's 2 s.
- ``kill -9`` of the spawner: the activator starts a new one. Handlers that ran die with the old
  one (their clients see the end; their UIDs are released once their cgroups are empty, and the
  host's init reaps them); a spawn in flight, or sent before the activator saw the death, is
  refused (the client sees the connection closed); one that comes during the restart waits
  for the new spawner and is served. None hangs.
- A full file system where a state directory is made: that invocation fails with the path and
  ``No space left on device`` in the log, its client sees the connection closed at once, other
  services are served, nothing is half made. A chown needs no space on ext4 (the owner lives in
  the inode): on a full file system it works.
- Silent clients of the userdb socket (connected, never writing), up to the per-peer cap: NSS
  lookups of live dynamic users still answer at once, except for the silent clients' own UID
  once it holds its whole cap, which is refused at once.

Handlers are inetd-style shell one-liners as dynamic users. Unit names start with ``f9``; each
test has a pool range of its own inside the default pool (so ``leaves_nothing`` watches it).
File-descriptor exhaustion is in ``test_serve_pressure.py``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest

from activator.userdb import SOCKET_PATH, UserdbLimits
from tests.integration.conftest import (
    LEASE_DIRECTORY,
    children_of,
    pool_processes,
    printed_uid,
    processes_of,
)
from tests.integration.prometheus import parse, scrape, value
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
    lease_files,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

Figures = dict[str, Any]

#: A client's deadline (connect, and the whole answer) under load: an answer that takes longer
#: is counted as hung.
CLIENT_DEADLINE: Final = 5.0
#: The most exchanges one load thread makes, and the longest it runs.
LOAD_MOST: Final = 400
LOAD_SECONDS: Final = 20.0
#: How long a server may take to deal with everything after a fault (processes reaped, leases
#: released), before a test gives up.
SETTLE_TIMEOUT: Final = 15.0
#: A bound on "still answers": a lookup or a control request, not a speed target.
ANSWERS_WITHIN: Final = 5.0

#: The spawner's script, as its command line shows it.
SPAWNER_SCRIPT: Final = "activator/spawner/__main__.py"

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


def spawner_of(running: Server) -> int:
    """The PID of the server's spawner: its child running the spawner's script."""
    found = [pid for pid in children_of(running.proc.pid) if SPAWNER_SCRIPT in command_line(pid)]
    assert len(found) == 1, f"not one spawner among the server's children: {found}"
    return found[0]


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
    """The processes of a UID of ``pool`` that have ended and wait to be reaped (orphans of a
    dead spawner wait for the host's init)."""
    return [pid for pid, ids in pool_processes().items() if ids[0] in pool and not alive(pid)]


def records_in(pool: range) -> dict[int, dict[str, Any]]:
    """The lease files of ``pool`` that exist now and are this file's (their unit starts with
    ``f9``: another activator on the host may lease a UID of ``pool`` too), with their records
    (UID -> record)."""
    out: dict[int, dict[str, Any]] = {}
    for name in lease_files():
        if name.isdigit() and int(name) in pool:
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(Path(LEASE_DIRECTORY, name).read_text())
                if str(record.get("unit")).startswith("f9"):
                    out[int(name)] = record
    return out


def control(running: Server, command: str) -> Any:
    """One request on the server's control socket; its ``result`` (asserts ``ok``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ANSWERS_WITHIN)
        sock.connect(str(running.control))
        sock.sendall(json.dumps({"command": command, "args": {}}).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"the control socket closed: {answer!r}"
            answer += chunk
    reply = json.loads(answer)
    assert reply["ok"], reply
    return reply["result"]


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
    """Watches processes through pidfds (no PID reuse can fool it) and notes when each ended."""

    def __init__(self, pids: list[int]) -> None:
        self.fds: dict[int, int] = {}
        self.ended: dict[int, float] = {}
        for pid in pids:
            try:
                self.fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                self.ended[pid] = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        poller = select.poll()
        for fd in self.fds.values():
            poller.register(fd, select.POLLIN)
        pids = {fd: pid for pid, fd in self.fds.items()}
        deadline = time.monotonic() + LOAD_SECONDS + SETTLE_TIMEOUT
        while self.running() and not self._stop.is_set():
            if time.monotonic() > deadline:
                return
            for fd, _ in poller.poll(50):
                self.ended.setdefault(pids[fd], time.monotonic())
                poller.unregister(fd)

    def running(self) -> list[int]:
        """The watched processes that have not ended."""
        return sorted(pid for pid in self.fds if pid not in self.ended)

    def kill(self, pid: int) -> None:
        """SIGKILL a watched process through its pidfd (nothing if it is gone)."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.fds[pid], signal.SIGKILL)

    def close(self) -> None:
        """Stop watching, close the pidfds."""
        self._stop.set()
        self._thread.join(1)
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
            connection ended without the whole echo: refused by the server after accept),
            ``refused`` (the connect was refused: nothing listened), ``hung`` (no end within
            :data:`CLIENT_DEADLINE`).
        uid: the UID the handler printed, if it did.
        peer: the client's address as the server logs it, once connected.
    """

    started: float
    ended: float
    outcome: str
    uid: int | None
    peer: str | None


def echo_once(address: tuple[str, int], token: str) -> Attempt:
    """Connect, send ``token`` and a newline, half-close, and read the answer to its end."""
    started = time.monotonic()
    try:
        client = Client(address, CLIENT_DEADLINE)
    except ConnectionRefusedError:
        return Attempt(started, time.monotonic(), "refused", None, None)
    except TimeoutError:
        return Attempt(started, time.monotonic(), "hung", None, None)
    with client:
        peer = f"127.0.0.1:{client.port}"
        try:
            client.send(f"{token}\n".encode())
            client.finish_sending()
            answer = client.rest().decode(errors="replace")
        except AssertionError:  # no end of the answer within the deadline
            return Attempt(started, time.monotonic(), "hung", None, peer)
        except OSError:  # reset while sending: closed by the server
            return Attempt(started, time.monotonic(), "closed", None, peer)
    found = re.match(r"UID=(\d+)\n", answer)
    uid = int(found.group(1)) if found else None
    outcome = "echoed" if answer == f"UID={uid}\n{token}\n" else "closed"
    return Attempt(started, time.monotonic(), outcome, uid, peer)


class EchoLoad:
    """Client threads doing echo exchanges, each bounded by :data:`LOAD_MOST` exchanges and
    :data:`LOAD_SECONDS`; :meth:`stop` ends them and returns every attempt."""

    def __init__(self, address: tuple[str, int], threads: int, name: str) -> None:
        self.address = address
        self.attempts: list[Attempt] = []
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
        for n in range(LOAD_MOST):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            attempt = echo_once(self.address, f"{name}-{n}")
            with self._lock:
                self.attempts.append(attempt)
            if attempt.outcome == "refused":
                time.sleep(0.01)  # nothing listens: do not spin

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


def service_units(name: str, port: int, command: str, *service_lines: str) -> dict[str, str]:
    """``NAME.socket`` (Accept=yes on 127.0.0.1:``port``) and ``NAME@.service`` running
    ``command`` as a dynamic user with the connection on its stdin and stdout."""
    extra = "".join(f"{line}\n" for line in service_lines)
    return {
        f"{name}.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
        f"{name}@.service": (
            f"[Service]\nExecStart={command}\nDynamicUser=yes\n"
            f"StandardInput=socket\nStandardOutput=socket\n{extra}"
        ),
    }


# --- kill -9 of the activator -------------------------------------------------------------------

CRASH_POOL: Final = range(64700, 64764)


@pytest.mark.parametrize(
    "spawner_hangs", [False, True], ids=["the-spawner-exits", "the-spawner-hangs"]
)
def test_kill_9_of_the_activator_under_load_then_a_restart_leaves_nothing_of_the_crashed_run(
    leaves_nothing: None,
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
        **service_units("f9state", state_port, APPEND_TO_STATE, f"StateDirectory={state}"),
    }
    settings = pool_settings(CRASH_POOL)
    crashed = server(units, settings)
    stored: list[str] = []  # the lines the state handler said it stored, in order
    sent: list[str] = []  # the connections of the state's client
    stopping = threading.Event()

    def append_to_state() -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        for n in range(LOAD_MOST):
            if stopping.is_set() or time.monotonic() > deadline:
                return
            line = f"line-{n}"
            sent.append(line)
            with (
                contextlib.suppress(ConnectionRefusedError, OSError, AssertionError),
                Client(("127.0.0.1", state_port), CLIENT_DEADLINE) as client,
            ):
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

        # The crashed run's processes: those of every UID it leased, as its lease files say.
        ours = set(records_in(CRASH_POOL))
        assert set(held_uids) <= ours
        leftovers = {pid: uid for uid in ours for pid in processes_of(uid)}
        background = [pid for pid in processes_of(child_uid) if "sleep" in command_line(pid)]
        assert background, "the background child is gone before the crash"
        spawner = spawner_of(crashed)
        deaths = Deaths([*leftovers, spawner])
        stack.callback(deaths.close)
        stored_before = len(stored)

        if spawner_hangs:  # a hung spawner cannot take its handlers down with it
            os.kill(spawner, signal.SIGSTOP)
            stack.callback(deaths.kill, spawner)  # ours, through its pidfd, whatever happens
        killed = time.monotonic()
        os.kill(crashed.proc.pid, signal.SIGKILL)
        crashed.proc.wait(SETTLE_TIMEOUT)
        if not spawner_hangs:
            # Each held client sees its connection end: its handler died with the spawner.
            for client in held_clients:
                assert client.rest() == b"", "a held connection got data, or did not end"
            closed_seconds = time.monotonic() - killed
            wait_until("the spawner exits", lambda: spawner in deaths.ended)
        running_at_restart = [pid for pid in deaths.running() if pid != spawner]
        if spawner_hangs:
            # The held handlers (and the background child) outlive the crash: nothing kills them.
            held_processes = [pid for pid, uid in leftovers.items() if uid in held_uids]
            assert set(held_processes) <= set(running_at_restart), "died with a hung spawner"

        restart = time.monotonic()
        restarted = server(units, settings, directory=crashed.directory, wait=False)
        listening = first_echo = None
        while first_echo is None:
            assert time.monotonic() - restart < 30, f"not serving again: {restarted.log()}"
            attempt = echo_once(("127.0.0.1", echo_port), "probe")
            if attempt.outcome != "refused" and listening is None:
                listening = attempt.started - restart  # a connect attempt that got through
            if attempt.outcome == "echoed":
                first_echo = attempt.ended - restart
            elif attempt.outcome == "refused":
                time.sleep(0.005)
        assert listening is not None
        restarted.wait_for(lambda e: e.get("event") == "ready")
        ready = time.monotonic() - restart
        # Every process of the crashed run is gone: the handlers, their children, and (unless
        # it is stopped) the spawner. The restart killed survivors before it listened.
        assert [pid for pid in deaths.running() if pid != spawner] == [], [
            (pid, command_line(pid)) for pid in deaths.running()
        ]
        late = {pid: deaths.ended[pid] - restart for pid in leftovers}
        assert all(seconds < listening for seconds in late.values()), (listening, late)
        if spawner_hangs:
            for client in held_clients:
                assert client.rest() == b"", "a held connection got data, or did not end"
            closed_seconds = time.monotonic() - killed
            deaths.kill(spawner)
            wait_until("the stopped spawner is killed", lambda: spawner in deaths.ended)
        wait_until(  # zombies: reaped by the host's init
            "the crashed run's processes are reaped",
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in leftovers),
        )
        after_restart = time.monotonic()
        with contextlib.suppress(AssertionError):
            wait_until("load after the restart", lambda: load.count("echoed", restart) >= 20, 5)
        stopping.set()
        writer.join(CLIENT_DEADLINE * 2 + 1)
        checked += leases_are_live(restarted, CRASH_POOL)
        attempts = load.stop()

    # No UID leased twice: a handler of the restarted run printed a UID only after every
    # process of the crashed run with that UID had ended.
    last_death = dict.fromkeys(ours, 0.0)
    for pid, uid in leftovers.items():
        last_death[uid] = max(last_death[uid], deaths.ended[pid])
    reused = [a for a in attempts if a.started > restart and a.uid in ours]
    early = [a for a in reused if a.uid is not None and a.started <= last_death[a.uid]]
    assert not early, f"leased again while a process of the crashed run lived: {early}"
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
    # Handlers killed by the restart were the stopped spawner's children: the host's init reaps
    # them once it is gone.
    wait_until("the crashed run's orphans are reaped", lambda: zombies_in(CRASH_POOL) == [])
    figures.update(
        connections=len(attempts) + len(held_clients) + len(sent) + 1,
        faults_injected=1,
        held_connections=len(held_clients),
        crashed_run_processes=len(leftovers),
        crashed_run_uids=len(ours),
        background_children=len(background),
        spawner_hangs=spawner_hangs,
        spawner_exited_seconds=None if spawner_hangs else round(deaths.ended[spawner] - killed, 3),
        held_connections_closed_seconds=round(closed_seconds, 3),
        processes_alive_at_restart=len(running_at_restart),
        leftovers_gone_after_kill_seconds=round(
            max((deaths.ended[pid] for pid in leftovers), default=killed) - killed, 3
        ),
        restart_listening_seconds=round(listening, 3),
        restart_first_echo_seconds=round(first_echo, 3),
        restart_ready_seconds=round(ready, 3),
        uids_reused_after_restart=len({a.uid for a in reused}),
        leased_twice=len(early),
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
    leaves_nothing: None, server: StartServer, figures: Figures
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
        spawner = spawner_of(running)
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
        new_spawner = spawner_of(running)
        assert (int(died[1]), int(back[1])) == (spawner, new_spawner)
        wait_until(
            "served after the restart", lambda: load.count("echoed", restarted_seen) >= 20, 10
        )
        # The held handlers are gone (their processes ended, all of them).
        assert deaths.running() == [], [(pid, command_line(pid)) for pid in deaths.running()]
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
    lost = tuple(sorted({"how": "lost", "status": "spawner_died", **label}.items()))
    assert metrics.get(("activator_handler_exits_total", lost), 0.0) == len(killed)
    assert value(metrics, "activator_invocations_total", result="success", **label) == len(served)
    assert running.stop() == 0
    # The killed handlers were the dead spawner's children: the host's init reaps them.
    reaped = wait_until("the orphans are reaped", lambda: zombies_in(SPAWNER_POOL) == [])

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
        **service_units("f9disk", full_port, ECHO, f"StateDirectory={parent}/state"),
        **service_units("f9other", other_port, ECHO, f"StateDirectory={other_state}"),
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
            service_units("f9chown", port, ECHO, f"StateDirectory={parent}/state"),
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


def userdb_socket(running: Server) -> str:
    """The userdb socket the server serves: the main one, or its own beside it when another
    activator holds the main one."""
    for event in running.events:
        found = re.search(r"serving (\S+) instead", str(event.get("message", "")))
        if found:
            return found.group(1)
    return SOCKET_PATH


@attrs.frozen
class Lookup:
    """One ``getent passwd`` as a host tool runs it: its exit status, output and seconds."""

    code: int
    output: str
    seconds: float


def lookup(uid: int, as_uid: int = 0) -> Lookup:
    """``getent passwd UID``, run as ``as_uid`` (root by default), timed."""
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
                assert clients.stdout is not None
                held = json.loads(clients.stdout.readline())
                connections += held["held"] + 1
                # Below the cap the extra connection is served (it waits for a request); at
                # the cap it is closed at once: the silent ones hold every slot of their UID.
                assert held["extra_closed"] is (silent == PER_PEER_CAP), held
                by_root = lookup(users[0])
                by_other = lookup(users[1], as_uid=OTHER_UID)
                by_silent_uid = lookup(users[1], as_uid=SILENT_UID)
            finally:
                if clients.stdin is not None:
                    clients.stdin.close()
                clients.wait(CLIENT_DEADLINE)
                if clients.stdout is not None:
                    clients.stdout.close()
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
