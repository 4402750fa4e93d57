"""Directories of a plain Accept=yes socket's per-connection instances, on a real server
(issue 9, found by the soak).

Each connection runs its own instance (``shared@N-LOCAL-REMOTE.service``). A directory whose
path is the same for every connection (``StateDirectory=x``, ``RuntimeDirectory=x``) makes every
connection of the template run as one dynamic user, the template's (``shared``), as systemd's
instances do: the state directory keeps one owner (chowned once), every connection writes it at
once, and the runtime directory outlives each connection but the last. A directory of each
connection's own (``RuntimeDirectory=x/%i``: the instance's colons are part of the name) keeps
the fresh user per connection. A unit whose every connection fails (``%I`` of a connection's
instance holds ``/``) refuses each connection at once, with a ``reject`` event and an error
naming the instance.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from typing import Any, Final

import pytest

from activator.control import request
from tests.integration.prometheus import parse, scrape, value
from tests.integration.serving import Client, Server, free_port

pytestmark = pytest.mark.root

#: Connections held open at once in the shared-user test.
AT_ONCE: Final = 4

#: The handler: its UID and runtime directories, then one answer per request line: ``state``
#: writes a new file into the state directory, ``run PATH`` a file into the directory PATH; each
#: answers ``WHAT ok`` or ``WHAT refused``. It ends at the client's end of file.
SCRIPT: Final = (
    'echo "UID=$(id -u) RUN=$RUNTIME_DIRECTORY"; while read -r what where; do case $what in '
    'state) mktemp "$STATE_DIRECTORY/w.XXXXXX" >/dev/null 2>&1 && echo "state ok" '
    '|| echo "state refused";; '
    'run) echo x 2>/dev/null > "$where/r" && echo "run ok" || echo "run refused";; '
    "esac; done"
)


def units(port: int, directories: str) -> dict[str, str]:
    """``shared.socket`` (Accept=yes on 127.0.0.1:``port``) and ``shared@.service`` running
    :data:`SCRIPT` as a dynamic user with ``directories`` (unit lines)."""
    return {
        "shared.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
        "shared@.service": (
            f"[Service]\nDynamicUser=yes\n{directories}StandardInput=socket\n"
            "StandardOutput=socket\nStandardError=journal\nRuntimeMaxSec=60s\n"
            f"ExecStart=:/bin/sh -c '{SCRIPT}'\n"
        ),
    }


def hello(port: int) -> tuple[Client, dict[str, str]]:
    """Connect; the client (still open) and the handler's first line, as fields."""
    client = Client(("127.0.0.1", port))
    try:
        line = client.line()
    except BaseException:
        client.close()
        raise
    return client, dict(part.split("=", 1) for part in line.split())


def two_hellos(port: int) -> tuple[tuple[Client, dict[str, str]], tuple[Client, dict[str, str]]]:
    """:func:`hello` twice, both clients open; the first is closed if the second fails (the
    server's drain would wait for it)."""
    first = hello(port)
    try:
        return first, hello(port)
    except BaseException:
        first[0].close()
        raise


def ask(client: Client, what: str) -> str:
    """Send one request line; the handler's answer."""
    client.send(f"{what}\n".encode())
    return client.line()


def instance(number: int, port: int, client: Client) -> str:
    """The instance name of the socket's ``number``-th connection, from ``client``."""
    return f"{number}-127.0.0.1:{port}-127.0.0.1:{client.port}"


def finish(server: Server, client: Client, ended: int) -> None:
    """End a connection (end of file: the handler leaves) and wait until ``ended`` invocations
    of ``shared@`` are over (each is logged once torn down)."""
    client.finish_sending()
    assert client.rest() == b""
    client.close()
    server.wait_for(lambda _: len(server.invocations("shared@")) >= ended, 30)


def users(server: Server) -> list[tuple[str, int, int]]:
    """The live dynamic users: (user, UID, holders)."""
    rows = request(str(server.control), "list-users", timeout=5)
    assert isinstance(rows, list)
    return [(row["user"], row["uid"], row["holders"]) for row in rows]


@pytest.mark.slow
def test_connections_of_a_shared_state_directory_run_as_one_user_and_write_it_at_once(
    leaves_nothing: None,
    server: Callable[..., Server],
    directory_name: Callable[[str], str],
    figures: dict[str, Any],
) -> None:
    """``StateDirectory=S`` and ``RuntimeDirectory=R R2/%i``: S and R are the same for every
    connection, so all run as the template's user ``shared``; each has R2/INSTANCE of its own."""
    state, run, own = directory_name("shst"), directory_name("shrun"), directory_name("shown")
    port, metrics = free_port(), free_port()
    srv = server(
        units(port, f"StateDirectory={state}\nRuntimeDirectory={run} {own}/%i\n"),
        metrics=f"127.0.0.1:{metrics}",
    )
    shared_run = f"/run/{run}"
    open_clients: list[tuple[Client, str]] = []  # each with its own runtime directory
    answers: list[str] = []

    def ask_both(client: Client, mine: str) -> None:
        answers.extend([ask(client, "state"), ask(client, f"run {shared_run}")])
        answers.append(ask(client, f"run {mine}"))

    try:
        uids = set()
        for number in range(1, AT_ONCE + 1):
            client, fields = hello(port)
            mine = f"/run/{own}/{instance(number, port, client)}"
            open_clients.append((client, mine))
            uids.add(int(fields["UID"]))
            assert fields["RUN"] == f"{shared_run}:{mine}"
        assert len(uids) == 1, uids
        uid = uids.pop()
        assert users(srv) == [("shared", uid, AT_ONCE)]
        assert os.stat(f"/var/lib/private/{state}").st_uid == uid
        for path in (shared_run, *(mine for _, mine in open_clients)):
            assert os.stat(path).st_uid == uid
        # Every connection writes the state and both runtime directories while all run.
        for client, mine in open_clients:
            ask_both(client, mine)
        # The first connection ends: its own runtime directory goes, the shared one stays.
        client, mine = open_clients.pop(0)
        finish(srv, client, 1)
        own_gone = not os.path.exists(mine)
        survived = os.path.isdir(shared_run)
        assert (own_gone, survived) == (True, True)
        assert users(srv) == [("shared", uid, AT_ONCE - 1)]
        # A newcomer joins the same user, and everyone still writes.
        late, fields = hello(port)
        open_clients.append((late, f"/run/{own}/{instance(AT_ONCE + 1, port, late)}"))
        assert int(fields["UID"]) == uid
        for client, mine in open_clients:
            ask_both(client, mine)
        # All but the last end: the shared runtime directory is still there for the last.
        while len(open_clients) > 1:
            client, mine = open_clients.pop(0)
            finish(srv, client, AT_ONCE + 1 - len(open_clients))
            assert not os.path.exists(mine)
        assert os.path.isdir(shared_run)
        ask_both(*open_clients[0])
        assert set(answers) == {"state ok", "run ok"}, answers
        finish(srv, open_clients.pop()[0], AT_ONCE + 1)
    finally:
        for client, _ in open_clients:
            client.close()
    # The last holder removed the shared one, and released the user.
    assert not os.path.exists(shared_run)
    assert os.listdir(f"/run/{own}") == []
    assert users(srv) == []
    samples = parse(scrape(metrics).body)
    chowns = value(samples, "activator_uid_chown_total")
    chowned = [
        int(found[1])
        for e in srv.events
        if (found := re.search(r": chowned (\d+) files to ", e.get("message", "")))
    ]
    invocations = srv.invocations("shared@")
    assert {e["uid"] for e in invocations} == {uid}
    assert all(e["exit_code"] == 0 and e["failure"] is None for e in invocations), invocations
    files = len(os.listdir(f"/var/lib/private/{state}"))
    assert srv.stop() == 0
    figures.update(
        connections=len(invocations),
        at_once=AT_ONCE,
        uids=1,
        writes=len(answers),
        refused=sum(a.endswith("refused") for a in answers),
        chowns=int(chowns),
        chowned_files=chowned,
        shared_runtime_directory_survived_first_end=survived,
        own_runtime_directory_gone_at_its_end=own_gone,
        state_files=files,
    )
    # The state and the shared runtime directory were made (and chowned) by the first
    # connection; each later one chowned only its own new runtime directory, never the state
    # directory again (with its files by then).
    assert chowned == [3] + [1] * (len(invocations) - 1)
    assert chowns == len(invocations)
    assert files == answers.count("state ok")  # every state write is there


@pytest.mark.slow
def test_a_runtime_directory_per_connection_gives_each_its_own_directory_and_user(
    leaves_nothing: None,
    server: Callable[..., Server],
    directory_name: Callable[[str], str],
    figures: dict[str, Any],
) -> None:
    run = directory_name("shinst")
    port = free_port()
    srv = server(units(port, f"RuntimeDirectory={run}/%i\n"))
    (one, first), (two, second) = two_hellos(port)
    with one, two:
        # systemd's instance names, colons and all: N-LOCAL-REMOTE.
        assert first["RUN"] == f"/run/{run}/1-127.0.0.1:{port}-127.0.0.1:{one.port}"
        assert second["RUN"] == f"/run/{run}/2-127.0.0.1:{port}-127.0.0.1:{two.port}"
        uid_one, uid_two = int(first["UID"]), int(second["UID"])
        assert uid_one != uid_two
        assert os.stat(first["RUN"]).st_uid == uid_one
        assert os.stat(second["RUN"]).st_uid == uid_two
        assert sorted((holders, user.startswith("shared-")) for user, _, holders in users(srv)) == [
            (1, True),
            (1, True),
        ]
        assert ask(one, f"run {first['RUN']}") == ask(two, f"run {second['RUN']}") == "run ok"
        finish(srv, one, 1)
        gone_first = not os.path.exists(first["RUN"])
        assert gone_first
        assert os.path.isdir(second["RUN"])
        assert ask(two, f"run {second['RUN']}") == "run ok"
        finish(srv, two, 2)
    assert os.listdir(f"/run/{run}") == []
    invocations = srv.invocations("shared@")
    assert all(e["failure"] is None for e in invocations), invocations
    assert srv.stop() == 0
    figures.update(
        connections=len(invocations),
        uids=len({e["uid"] for e in invocations}),
        own_directory_gone_at_its_end=gone_first,
    )


@pytest.mark.slow
def test_connections_of_a_unit_with_user_share_that_dynamic_user(
    leaves_nothing: None, server: Callable[..., Server], figures: dict[str, Any]
) -> None:
    """``User=`` names the user of every connection (systemd's rule): concurrent connections
    share it (before, the second one failed: the name was taken)."""
    name = f"sh{secrets.token_hex(3)}"
    port = free_port()
    srv = server(units(port, f"User={name}\n"))
    (one, first), (two, second) = two_hellos(port)
    with one, two:
        assert first["UID"] == second["UID"]
        assert users(srv) == [(name, int(first["UID"]), 2)]
        finish(srv, one, 1)
        finish(srv, two, 2)
    assert users(srv) == []
    assert srv.stop() == 0
    figures.update(connections=2, uids=1)


@pytest.mark.slow
def test_a_unit_that_fails_every_connection_refuses_it_at_once_naming_the_instance(
    leaves_nothing: None,
    server: Callable[..., Server],
    directory_name: Callable[[str], str],
    figures: dict[str, Any],
) -> None:
    """``StateDirectory=x/%I``: ``%I`` of a connection's instance (``1/127.0.0.1:P/...``) holds
    ``/``. The client sees the end at once; the log has a ``reject`` (``unit_error``) and an
    error naming the socket, the instance, the directive and its value."""
    state = directory_name("shbad")
    port = free_port()
    srv = server(units(port, f"StateDirectory={state}/%I\n"))
    with Client(("127.0.0.1", port)) as client:
        assert client.rest() == b""
        instance = f"1-127.0.0.1:{port}-127.0.0.1:{client.port}"
    reject = srv.wait_for(lambda e: e.get("event") == "reject", 10)[0]
    assert (reject["unit"], reject["reason"]) == ("shared.socket", "unit_error")
    errors = [e["message"] for e in srv.events if e.get("level") == "error"]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"shared.socket: shared@{instance}.service: "), errors
    assert errors[0].endswith(
        f"StateDirectory='{state}/%I': %I gives '1/127.0.0.1:{port}/127.0.0.1:{client.port}': "
        "an instance's directory may not nest in another's; use %i"
    ), errors
    assert srv.invocations("shared@") == []
    assert srv.stop() == 0
    figures.update(connections=1, refused=1, invocations=0)
