"""``activator serve`` under pressure: a UID pool with every UID leased, and a process with every
file descriptor in use.

What a client sees when the pool is exhausted: with ``on_exhausted = "reject"`` the connection is
closed at once, with no data, and the server logs a ``reject`` event (reason ``exhausted``); with
``"wait"`` the connection waits for a UID and is served as soon as one is released, or is closed
after ``wait_timeout_sec`` (reason ``wait_timeout``). What it must never see: a live connection
that stops working, or two live connections served by one UID.

When activator runs out of file descriptors (it runs under ``prlimit --nofile=64:64``), accepting
backs off and retries: connections wait in the kernel's backlog, the server logs a warning, and
once the clients go away it serves again by itself, with no restart. Clients come one at a time
(each served before the next connects) or in a burst; either way a connection that fails for want
of descriptors fails alone, and nothing of it is left on the host.

Handlers are the inetd-style echo ``/bin/sh -c 'echo UID=$(id -u); exec cat'`` as a dynamic user:
it lives exactly as long as its client keeps sending. Unit names start with ``c3``.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from typing import Any, Final

import pytest

from tests.integration.conftest import printed_uid
from tests.integration.serving import (
    Client,
    Event,
    Server,
    StartServer,
    echo_units,
    exchange,
    free_port,
    lease_files,
)

pytestmark = pytest.mark.root

#: A pool of 16 UIDs (inside the default pool, so ``leaves_nothing`` watches it).
POOL_FIRST: Final = 65000
POOL_LAST: Final = 65015
POOL: Final = range(POOL_FIRST, POOL_LAST + 1)

#: The file descriptor limit of the server in the exhaustion test, and the most clients it opens.
NOFILE: Final = 64
MOST_CLIENTS: Final = 200
#: A client's deadline (connect, each read) in the exhaustion test.
CLIENT_DEADLINE: Final = 5.0
#: How long the server may take to deal with every connection of the clients, once they are gone.
DRAIN_TIMEOUT: Final = 30.0
#: What activator logs when accept() fails for want of descriptors (strerror(EMFILE)).
EMFILE_TEXT: Final = "Too many open files"


# --- helpers ------------------------------------------------------------------------------------


def pool_settings(on_exhausted: str, wait_timeout_sec: float | None = None) -> str:
    """The ``[pool]`` table of the 16-UID pool."""
    text = f'[pool]\nfirst = {POOL_FIRST}\nlast = {POOL_LAST}\non_exhausted = "{on_exhausted}"\n'
    if wait_timeout_sec is not None:
        text += f"wait_timeout_sec = {wait_timeout_sec}\n"
    return text


def peer(client: Client) -> str:
    """A TCP client's address as the server logs it (``127.0.0.1:41234``)."""
    return f"127.0.0.1:{client.port}"


def fill_pool(stack: contextlib.ExitStack, port: int) -> list[tuple[Client, int]]:
    """16 live connections, each waiting in its handler; with the UIDs their handlers printed,
    which must be every UID of the pool."""
    held = []
    for _ in POOL:
        client = stack.enter_context(Client(("127.0.0.1", port)))
        held.append((client, printed_uid(client.line())))
    uids = sorted(uid for _, uid in held)
    assert uids == list(POOL), f"16 live connections, not 16 distinct UIDs of the pool: {uids}"
    return held


def hang_up(client: Client, uid: int, running: Server) -> Event:
    """End a held connection cleanly (its echo comes back whole) and wait for its invocation
    (the next one logged with ``uid``: an earlier connection may have had it before)."""

    def with_uid(event: Event) -> bool:
        return event.get("event") == "invocation" and event.get("uid") == uid

    earlier = len([e for e in running.invocations() if with_uid(e)])
    client.send(b"bye\n")
    client.finish_sending()
    assert client.rest() == b"bye\n"
    done = running.wait_for(with_uid, count=earlier + 1)[-1]
    assert (done["exit_code"], done["signal"], done["failure"]) == (0, None, None), done
    return done


def nothing_arrives(client: Client, seconds: float) -> bool:
    """Whether ``client`` stays silent (no data, no end of file) for ``seconds``."""
    readable, _, _ = select.select([client.sock], [], [], seconds)
    return not readable


def assert_refused(running: Server, client: Client, reason: str) -> None:
    """``client`` was closed at once with no data, and the server logged why."""
    assert client.rest() == b"", f"{peer(client)} got data instead of a refusal"
    (event,) = running.wait_for(
        lambda e: e.get("event") == "reject" and e.get("peer") == peer(client)
    )
    assert (event["unit"], event["reason"]) == ("c3pool.socket", reason), running.log()


def stop_cleanly(running: Server) -> None:
    """SIGTERM: the server exits 0, no lease left."""
    assert running.stop() == 0
    assert lease_files() == [], "leases left after the server stopped"


# --- pool exhaustion ----------------------------------------------------------------------------


def test_with_on_exhausted_reject_a_connection_past_the_pool_is_refused_at_once(
    leaves_nothing: None, server: StartServer
) -> None:
    port = free_port()
    running = server(echo_units("c3pool", port), pool_settings("reject"))
    with contextlib.ExitStack() as stack:
        held = fill_pool(stack, port)
        with Client(("127.0.0.1", port)) as late:
            assert_refused(running, late, "exhausted")
        # The 16 are untouched; when one ends, its UID serves the next connection.
        client, uid = held.pop(0)
        hang_up(client, uid, running)
        answer = exchange(("127.0.0.1", port), b"after one left\n").decode()
        assert answer == f"UID={uid}\nafter one left\n"
        for client, uid in held:
            hang_up(client, uid, running)
    assert [e["reason"] for e in running.rejects()] == ["exhausted"]
    stop_cleanly(running)


def test_with_on_exhausted_wait_a_connection_past_the_pool_is_served_when_a_uid_is_released(
    leaves_nothing: None, server: StartServer
) -> None:
    port = free_port()
    running = server(echo_units("c3pool", port), pool_settings("wait", 5))
    with contextlib.ExitStack() as stack:
        held = fill_pool(stack, port)
        waiting = stack.enter_context(Client(("127.0.0.1", port)))
        assert nothing_arrives(waiting, 0.5), "served, or closed, with no UID free"
        client, uid = held.pop(0)
        hang_up(client, uid, running)
        assert waiting.line() == f"UID={uid}"
        held.append((waiting, uid))
        for client, uid in held:
            hang_up(client, uid, running)
    assert running.rejects() == []
    stop_cleanly(running)


def test_with_on_exhausted_wait_a_connection_past_the_pool_is_refused_after_wait_timeout_sec(
    leaves_nothing: None, server: StartServer
) -> None:
    port = free_port()
    running = server(echo_units("c3pool", port), pool_settings("wait", 0.5))
    with contextlib.ExitStack() as stack:
        held = fill_pool(stack, port)
        with Client(("127.0.0.1", port)) as late:
            assert_refused(running, late, "wait_timeout")
        for client, uid in held:
            hang_up(client, uid, running)
    assert [e["reason"] for e in running.rejects()] == ["wait_timeout"]
    stop_cleanly(running)


# --- file descriptor exhaustion -----------------------------------------------------------------


def accept_failed(event: Event) -> bool:
    """A warning that accept() failed for want of file descriptors."""
    message = str(event.get("message", ""))
    return event.get("level") == "warning" and "accept" in message and EMFILE_TEXT in message


def answered_or_accept_failed(running: Server, client: Client) -> None:
    """Wait until the server answered ``client`` (data or end of file) or logged that accept()
    failed, within :data:`CLIENT_DEADLINE`."""
    deadline = time.monotonic() + CLIENT_DEADLINE
    while not any(map(accept_failed, running.events)):
        left = deadline - time.monotonic()
        assert left > 0, (
            f"no answer and no accept() warning in {CLIENT_DEADLINE} s: {running.events[-12:]}"
        )
        if not nothing_arrives(client, min(left, 0.05)):
            return


@pytest.mark.parametrize(
    ("one_at_a_time", "stderr"),
    [(True, "inherit"), (False, "inherit"), (False, "journal")],
    ids=["one-at-a-time", "burst", "burst-with-output-pipes"],
)
def test_out_of_file_descriptors_accept_backs_off_and_the_server_recovers_by_itself(
    leaves_nothing: None,
    server: StartServer,
    one_at_a_time: bool,
    stderr: str,
    figures: dict[str, Any],
) -> None:
    port = free_port()
    # MaxConnections=1000: only descriptors run out. prlimit sets the limit on itself and execs,
    # so its PID is the server's own.
    running = server(
        echo_units("c3fd", port, "MaxConnections=1000", stderr=stderr),
        wrapper=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"],
    )
    fds_idle_before = len(os.listdir(f"/proc/{running.proc.pid}/fd"))
    with contextlib.ExitStack() as stack:
        clients: list[Client] = []
        while len(clients) < MOST_CLIENTS and not any(map(accept_failed, running.events)):
            client = stack.enter_context(Client(("127.0.0.1", port), CLIENT_DEADLINE))
            clients.append(client)
            if one_at_a_time:  # each connection served (or refused) before the next
                answered_or_accept_failed(running, client)
        (warning,) = running.wait_for(accept_failed, timeout=10)
        assert warning["message"].startswith("c3fd.socket: "), warning  # names the unit
        assert running.proc.poll() is None, "the server died of it"
        if one_at_a_time:  # a connection served before the descriptors ran out still works
            first = clients[0]
            printed_uid(first.line())
            first.send(b"still here\n")
            first.finish_sending()
            assert first.rest() == b"still here\n"
    # Every client is gone. Once the server has dealt with each of their connections (in
    # the backlog too), it has recovered by itself: a new connection gets it all.
    clients_gone = time.monotonic()
    running.wait_for(
        lambda e: e.get("event") in ("invocation", "reject"), DRAIN_TIMEOUT, count=len(clients)
    )
    with Client(("127.0.0.1", port)) as fresh:
        fresh.send(b"fresh\n")
        fresh.finish_sending()
        answer = fresh.rest().decode()
    if "UID=" not in answer:
        why = [e for e in running.events if e.get("peer") == peer(fresh)]
        pytest.fail(f"after the clients left, a new connection got {answer!r}: {why}")
    assert answer == f"UID={printed_uid(answer)}\nfresh\n"
    recovered = time.monotonic() - clients_gone
    running.wait_for(lambda e: e.get("event") == "invocation" and e.get("peer") == peer(fresh))
    fds_idle_after = len(os.listdir(f"/proc/{running.proc.pid}/fd"))
    invocations = running.invocations("c3fd@")
    figures.update(
        connections=len(clients) + 1,
        nofile=NOFILE,
        accept_backoffs=sum(map(accept_failed, running.events)),
        served=sum(1 for e in invocations if e["failure"] is None),
        failed=sum(1 for e in invocations if e["failure"] is not None),
        refused=len(running.rejects()),
        recovered_seconds=round(recovered, 3),
        fds_idle_before=fds_idle_before,
        fds_idle_after=fds_idle_after,
    )
    assert running.stop() == 0
    assert lease_files() == [], "leases left after the server stopped"
