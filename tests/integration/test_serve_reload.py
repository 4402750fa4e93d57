"""The life of a real ``activator serve``: units with errors at start (skipped, or fatal with
``--strict``), reloads (SIGHUP) under load and with added, removed, changed and broken units, and
the drain on SIGTERM, driven by real TCP and Unix-socket clients.

What a user must see: a reload refuses no connection on a socket it keeps; a changed service
answers differently from the next connection on; a removed socket refuses new connections while
its live ones finish; a unit that breaks keeps serving its previous version; SIGTERM lets live
connections finish (up to TimeoutStopSec=), kills the rest, exits 0 and leaves no lease behind.

The clients' helpers (``connect``, ``ask``, ``read_to_end`` ...) are the admission tests'.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Final

import pytest

from tests.integration.serving import (
    START_TIMEOUT,
    Event,
    Server,
    free_port,
    lease_files,
    write_units,
)
from tests.integration.test_serve_admission import (
    DEADLINE,
    Serve,
    ask,
    connect,
    echo_units,
    finished,
    peer,
    read_to_end,
    round_trip,
)

pytestmark = pytest.mark.root

#: The continuous load: sequential connections, at most this many, for at most this long.
LOAD_CONNECTIONS: Final = 300
LOAD_SECONDS: Final = 20.0
#: Connections served between two reloads (about half a second).
BETWEEN_RELOADS: Final = 25


def answer_units(name: str, port: int, answer: str) -> dict[str, str]:
    """An Accept=yes service ``name`` on 127.0.0.1:``port`` whose handler writes ``answer`` and a
    newline to the connection and ends (a dynamic user each time)."""
    return {
        f"{name}.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
        f"{name}@.service": f"[Service]\nExecStart=/bin/echo {answer}\nDynamicUser=yes\n"
        "StandardInput=socket\n",
    }


def answer(port: int) -> bytes:
    """All that one new connection to 127.0.0.1:``port`` receives."""
    with connect(port) as sock:
        return read_to_end(sock)


def listener_inode(port: int) -> int:
    """The inode of the socket that listens on TCP ``port`` (from /proc/net/tcp, as ``ss -l``
    shows it): the same inode is the same socket, never closed in between."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        found = [
            int(fields[9])
            for fields in (line.split() for line in table)
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A"  # TCP_LISTEN
        ]
    assert len(found) == 1, f"{len(found)} sockets listen on port {port}"
    return found[0]


def refused(port: int) -> bool:
    """Whether a connection to 127.0.0.1:``port`` is refused (nothing listens there)."""
    try:
        connect(port).close()
    except ConnectionRefusedError:
        return True
    return False


def late_connection(port: int) -> socket.socket | None:
    """A connection to 127.0.0.1:``port``, or None when it is refused."""
    try:
        return connect(port)
    except ConnectionRefusedError:
        return None


def nothing_but_the_end(sock: socket.socket) -> bool:
    """Whether ``sock`` ends (end-of-file or a reset) without receiving a byte."""
    try:
        return read_to_end(sock) == b""
    except ConnectionResetError:
        return True


def problems(srv: Server, file_name: str) -> list[Event]:
    """The ``problem`` events about the unit file ``file_name`` (waiting for the first)."""

    def about(event: Event) -> bool:
        return event.get("event") == "problem" and Path(str(event["path"])).name == file_name

    srv.wait_for(about)
    return [e for e in list(srv.events) if about(e)]


def listening(srv: Server) -> list[str]:
    """The socket units the server announced as listening, in order."""
    return [str(e["unit"]) for e in list(srv.events) if e.get("event") == "listening"]


# --- units with errors at start -----------------------------------------------------------------


#: A broken socket (line 4) and a broken service (line 4: a systemd directive activator refuses).
BROKEN: Final = {
    "socket": (
        "c2bad.socket",
        4,
        {
            "c2bad.socket": "[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n"
            "MaxConnections=many\n",
            "c2bad@.service": "[Service]\nExecStart=/bin/cat\nStandardInput=socket\n",
        },
    ),
    "service": (
        "c2bad@.service",
        4,
        {
            "c2bad.socket": "[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
            "c2bad@.service": "[Service]\nExecStart=/bin/cat\nStandardInput=socket\n"
            "PrivateUsers=yes\n",
        },
    ),
}


def broken_units(which: str, good_port: int, bad_port: int) -> dict[str, str]:
    """A good echo service on ``good_port`` and a broken one (``BROKEN[which]``) on ``bad_port``."""
    _, _, texts = BROKEN[which]
    return echo_units("c2good", good_port) | {
        name: text.format(port=bad_port) for name, text in texts.items()
    }


@pytest.mark.parametrize("which", sorted(BROKEN))
def test_a_unit_with_errors_at_start_is_reported_and_skipped_while_the_others_serve(
    leaves_nothing: None, server: Serve, which: str
) -> None:
    good, bad = free_port(), free_port()
    srv = server(broken_units(which, good, bad))
    file_name, line, _ = BROKEN[which]

    assert [e["line"] for e in problems(srv, file_name)] == [line], srv.log()
    (ready,) = [e for e in srv.events if e.get("event") == "ready"]
    assert ready["sockets"] == 1
    assert listening(srv) == ["c2good.socket"]
    assert round_trip(good, b"hello\n") == b"hello\n"
    assert refused(bad)
    assert srv.stop() == 0


def test_strict_makes_a_unit_error_fatal_before_anything_is_bound(
    leaves_nothing: None, server: Serve
) -> None:
    good, bad = free_port(), free_port()
    srv = server(broken_units("socket", good, bad), strict=True, wait=False)
    assert srv.proc.wait(START_TIMEOUT) == 2
    assert srv.stop() == 2  # it has exited: this checks the log
    assert [e["line"] for e in problems(srv, "c2bad.socket")] == [4]
    assert listening(srv) == []
    assert [e for e in srv.events if e.get("event") == "ready"] == []
    assert refused(good)
    assert refused(bad)


# --- reload -------------------------------------------------------------------------------------


def test_reloads_under_continuous_load_refuse_no_connection_and_apply_a_changed_service(
    leaves_nothing: None, server: Serve
) -> None:
    port = free_port()
    srv = server(answer_units("c2load", port, "v1"))
    inode = listener_inode(port)
    answers: list[bytes | str] = []
    done = threading.Event()

    def load() -> None:
        """Sequential connections until told to stop (or the bounds): each one's answer, or why
        it had none."""
        deadline = time.monotonic() + LOAD_SECONDS
        while not done.is_set() and len(answers) < LOAD_CONNECTIONS:
            if time.monotonic() > deadline:
                answers.append("the load ran out of time")
                return
            try:
                answers.append(answer(port))
            except BaseException as error:  # a failure here is a result: pytest.fail included
                answers.append(f"{type(error).__name__}: {error}")

    def served(more: int, want: bytes = b"") -> None:
        """Wait until ``more`` further connections (with ``want`` as their answer) are done."""
        base = sum(1 for a in answers if not want or a == want)
        deadline = time.monotonic() + DEADLINE
        while sum(1 for a in answers if not want or a == want) < base + more:
            assert thread.is_alive(), answers[-5:]
            assert time.monotonic() < deadline, f"the load is stuck: {answers[-5:]}"
            time.sleep(0.01)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        served(BETWEEN_RELOADS)
        for _ in range(2):
            same = srv.reload()
            assert (same["changed"], same["failed"]) == ([], []), same
            assert "c2load.socket" in same["kept"]
            served(BETWEEN_RELOADS)

        write_units(srv.units, answer_units("c2load", port, "v2"))
        change = srv.reload()
        served(BETWEEN_RELOADS, b"v2\n")

        again = srv.reload()
        assert (again["changed"], again["failed"]) == ([], []), again
        served(BETWEEN_RELOADS)
    finally:
        done.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()

    # Every connection got its whole answer: v1 until the change, v2 from then on.
    assert all(a in (b"v1\n", b"v2\n") for a in answers), [a for a in answers if isinstance(a, str)]
    first_v2 = answers.index(b"v2\n")
    assert answers == [b"v1\n"] * first_v2 + [b"v2\n"] * (len(answers) - first_v2)
    assert first_v2 >= 3 * BETWEEN_RELOADS
    assert len(answers) - first_v2 >= 2 * BETWEEN_RELOADS
    assert answer(port) == b"v2\n"
    assert listener_inode(port) == inode, "the listening socket was replaced"
    assert srv.rejects() == []
    srv.wait_for(lambda e: e.get("event") == "invocation", count=len(answers) + 1)
    assert srv.stop() == 0
    # The reload that changed the service says so, by the service's name or by its socket's.
    assert {"c2load@.service", "c2load.socket"} & set(change["changed"]), change
    assert (change["added"], change["removed"], change["failed"]) == ([], [], [])


def test_a_reload_closes_a_removed_socket_after_its_live_connection_and_binds_a_new_one(
    leaves_nothing: None, server: Serve
) -> None:
    keep, gone, new = free_port(), free_port(), free_port()
    srv = server(echo_units("c2keep", keep) | echo_units("c2gone", gone))
    with connect(gone) as live:
        assert ask(live, b"before\n") == b"before\n"

        (srv.units / "c2gone.socket").unlink()
        (srv.units / "c2gone@.service").unlink()
        write_units(srv.units, echo_units("c2new", new))
        event = srv.reload()
        assert "c2gone.socket" in event["removed"], event
        assert "c2new.socket" in event["added"], event
        assert "c2keep.socket" in event["kept"], event
        assert event["failed"] == []

        assert refused(gone)
        assert ask(live, b"after\n") == b"after\n"
        live.shutdown(socket.SHUT_WR)
        assert read_to_end(live) == b""
        ended = finished(srv, live)
    assert str(ended["unit"]).startswith("c2gone@")
    assert ended["exit_code"] == 0

    srv.wait_for(lambda e: e.get("event") == "listening" and e.get("unit") == "c2new.socket")
    assert round_trip(new, b"new\n") == b"new\n"
    assert round_trip(keep, b"kept\n") == b"kept\n"
    assert refused(gone)
    assert srv.stop() == 0


@pytest.mark.parametrize(
    ("broken", "line"),
    [
        ({"c2fail.socket": "[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\nBacklog=-1\n"}, 4),
        (
            {
                "c2fail@.service": "[Service]\nExecStart=/bin/echo v2\nDynamicUser=yes\n"
                "StandardInput=socket\nPrivateUsers=yes\n"
            },
            5,
        ),
    ],
    ids=["socket", "service"],
)
def test_a_unit_that_breaks_keeps_its_previous_version_serving(
    leaves_nothing: None, server: Serve, broken: dict[str, str], line: int
) -> None:
    port = free_port()
    srv = server(answer_units("c2fail", port, "v1"))
    assert answer(port) == b"v1\n"
    (name,) = broken

    write_units(srv.units, {name: text.format(port=port) for name, text in broken.items()})
    event = srv.reload()
    assert {name, "c2fail.socket"} & set(event["failed"]), event
    assert [e["line"] for e in problems(srv, name)] == [line]
    assert answer(port) == b"v1\n"
    assert answer(port) == b"v1\n"

    write_units(srv.units, answer_units("c2fail", port, "v3"))
    event = srv.reload()
    assert event["failed"] == [], event
    assert answer(port) == b"v3\n"
    assert srv.rejects() == []
    assert srv.stop() == 0


# --- stop ---------------------------------------------------------------------------------------


def test_sigterm_lets_live_connections_finish_kills_the_rest_and_releases_every_lease(
    leaves_nothing: None, server: Serve, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "c2unix.sock"
    before = lease_files()
    srv = server(
        echo_units("c2term", port, service="TimeoutStopSec=3s\n")
        | echo_units("c2unix", str(path), "RemoveOnStop=yes")
    )
    assert path.is_socket()
    with connect(port) as draining, connect(port) as idle:
        assert ask(draining, b"a\n") == b"a\n"
        assert ask(idle, b"b\n") == b"b\n"
        assert len(set(lease_files()) - set(before)) == 2, "each live connection holds a lease"

        srv.signal(signal.SIGTERM)
        srv.wait_for(lambda e: e.get("event") == "stopping")
        late = late_connection(port)
        # A live connection goes on working during the drain, and may end by itself.
        assert ask(draining, b"c\n") == b"c\n"
        draining.shutdown(socket.SHUT_WR)
        assert read_to_end(draining) == b""
        assert finished(srv, draining)["exit_code"] == 0
        # The idle one is killed after TimeoutStopSec=.
        assert read_to_end(idle) == b""
        assert finished(srv, idle)["signal"] is not None
        assert srv.proc.wait(DEADLINE) == 0

    assert srv.stop() == 0
    srv.wait_for(lambda e: e.get("event") == "stopped")
    assert lease_files() == before
    assert not path.exists(), "RemoveOnStop=yes: the Unix socket is removed"
    if late is not None:  # connected to a socket that no longer accepts: never served
        with late:
            who = peer(late)
            assert nothing_but_the_end(late)
        assert [e for e in srv.invocations() if e["peer"] == who] == []
