"""Per-customer template instances at runtime, through the control socket, as a hosting operator
uses them: enable two customers, connect to each, see their separate users and state, disable
one, restart activator (issue 6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from activator.control import ControlError, request
from tests.integration.conftest import activator_command
from tests.integration.prometheus import parse, scrape, value
from tests.integration.serving import Client, Server, free_port

pytestmark = pytest.mark.root

#: The per-customer handler: it says who it is and where its state is, keeps a secret there, then
#: reads a path from the client and answers with that file's content (or the error).
SERVICE = """\
[Service]
DynamicUser=yes
StateDirectory=foobar/%i
StandardInput=socket
ExecStart=/bin/sh -c 'echo "customer=%i uid=$(id -u) state=$STATE_DIRECTORY"; \
echo secret-of-%i > "$STATE_DIRECTORY/secret"; read path; cat "$path" 2>&1; echo end'
"""
#: The template socket; each customer's port comes from a drop-in, as an operator would write it.
SOCKET = "[Socket]\nListenStream=/run/activator-test-foobar/%i.sock\nAccept=yes\n"
STATE = Path("/var/lib/private/foobar")


@pytest.fixture
def customers() -> Iterator[Callable[[Server, str], int]]:
    """Give a customer a TCP port of its own: a drop-in of its socket instance; its port."""
    yield lambda server, name: _port_dropin(server, name)
    shutil.rmtree(STATE, ignore_errors=True)
    shutil.rmtree("/var/lib/foobar", ignore_errors=True)  # the public symlinks
    shutil.rmtree("/run/activator-test-foobar", ignore_errors=True)


def _port_dropin(server: Server, name: str) -> int:
    port = free_port()
    dropin = server.units / f"foobar@{name}.socket.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "port.conf").write_text(f"[Socket]\nListenStream=127.0.0.1:{port}\n")
    return port


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``activator ARGS --control SOCKET`` as the operator would."""
    argv = activator_command(*args, "--control", str(server.control))
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def hello(server: Server, port: int) -> tuple[Client, dict[str, str]]:
    """Connect to a customer's port; the client (still open) and the handler's greeting."""
    client = Client(("127.0.0.1", port))
    try:
        line = client.line()
    except AssertionError as error:
        time.sleep(3)
        failed = [e for e in server.events if e.get("level") == "error"]
        msg = f"{error}; failed invocations: {failed}"
        raise AssertionError(msg) from None
    return client, dict(part.split("=", 1) for part in line.split())


def ask(client: Client, path: str) -> str:
    client.send(f"{path}\n".encode())
    return client.rest().decode()


def test_customers_enabled_at_runtime_get_their_own_users_and_state(
    server: Callable[..., Server], customers: Callable[[Server, str], int]
) -> None:
    srv = server({"foobar@.service": SERVICE, "foobar@.socket": SOCKET})
    alice_port, bob_port = customers(srv, "alice"), customers(srv, "bob")
    for name in ("alice", "bob"):
        done = ctl(srv, "enable", f"foobar@{name}", "--now")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            f"enabled foobar@{name}.socket",
            f"started foobar@{name}.socket",
        ]
    assert sorted(os.listdir(srv.directory / "enabled")) == [
        "foobar@alice.socket",
        "foobar@bob.socket",
    ]
    alice, seen_by_alice = hello(srv, alice_port)
    bob, seen_by_bob = hello(srv, bob_port)
    with alice, bob:
        assert seen_by_alice["customer"] == "alice"
        assert seen_by_bob["customer"] == "bob"
        assert seen_by_alice["uid"] != seen_by_bob["uid"]
        assert seen_by_alice["state"] == "/var/lib/foobar/alice"
        assert seen_by_bob["state"] == "/var/lib/foobar/bob"
        users = json.loads(ctl(srv, "list-users", "--json").stdout)
        assert {(u["user"], str(u["uid"])) for u in users} == {
            ("foobar-alice", seen_by_alice["uid"]),
            ("foobar-bob", seen_by_bob["uid"]),
        }
        # Each owns its own state; alice's handler cannot read bob's.
        assert (STATE / "alice").stat().st_uid == int(seen_by_alice["uid"])
        assert (STATE / "bob").stat().st_uid == int(seen_by_bob["uid"])
        # (Her sandbox shows no other state directory at all: "No such file or directory".)
        answer = ask(alice, "/var/lib/foobar/bob/secret")
        assert answer.startswith("cat: /var/lib/foobar/bob/secret: ")
        assert "secret-of-bob" not in answer
        assert ask(bob, "/var/lib/foobar/bob/secret") == "secret-of-bob\nend\n"
    # Disabling bob stops his socket and leaves alice's live connection alone.
    alice, _ = hello(srv, alice_port)
    with alice:
        done = ctl(srv, "disable", "foobar@bob", "--now")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "disabled foobar@bob.socket",
            "stopped foobar@bob.socket",
        ]
        assert ask(alice, "/var/lib/foobar/alice/secret") == "secret-of-alice\nend\n"
    with pytest.raises(OSError):
        Client(("127.0.0.1", bob_port), timeout=2).close()
    assert os.listdir(srv.directory / "enabled") == ["foobar@alice.socket"]
    status = json.loads(ctl(srv, "status", "--json").stdout)
    assert [u["unit"] for u in status["units"] if u["kind"] == "socket"] == ["foobar@alice.socket"]
    assert srv.stop() == 0


def test_enabled_customers_come_back_after_a_restart_with_their_uids_and_no_chown(
    server: Callable[..., Server], customers: Callable[[Server, str], int]
) -> None:
    units = {"foobar@.service": SERVICE, "foobar@.socket": SOCKET}
    first = server(units)
    ports = {name: customers(first, name) for name in ("alice", "bob")}
    for name in ports:
        assert ctl(first, "enable", f"foobar@{name}", "--now").returncode == 0
    uids = {}
    for name, port in ports.items():
        client, fields = hello(first, port)
        with client:
            uids[name] = fields["uid"]
            ask(client, "/dev/null")
    assert first.stop() == 0
    chowned = [e for e in first.events if "chowned" in e.get("message", "")]
    assert len(chowned) == 2  # the first connection of each customer made its state directory
    metrics_port = free_port()
    again = server(units, directory=first.directory, metrics=f"127.0.0.1:{metrics_port}")
    for name, port in ports.items():
        # A few connections each: every one runs as the customer's UID, none chowns.
        for _ in range(3):
            client, fields = hello(again, port)
            with client:
                assert fields["uid"] == uids[name]
                assert ask(client, f"/var/lib/foobar/{name}/secret") == f"secret-of-{name}\nend\n"
    samples = parse(scrape(metrics_port).body)
    assert value(samples, "activator_uid_chown_total") == 0
    assert value(samples, "activator_uid_chown_files_total") == 0
    assert value(samples, "activator_connections_accepted_total", unit="foobar@alice.socket") == 3
    assert again.stop() == 0
    assert not [e for e in again.events if "chowned" in e.get("message", "")]


def test_a_customers_concurrent_connections_share_its_user(
    server: Callable[..., Server], customers: Callable[[Server, str], int]
) -> None:
    srv = server({"foobar@.service": SERVICE, "foobar@.socket": SOCKET})
    port = customers(srv, "carol")
    assert ctl(srv, "enable", "foobar@carol", "--now").returncode == 0
    one, first = hello(srv, port)
    two, second = hello(srv, port)
    with one, two:
        assert first["uid"] == second["uid"]
        users = json.loads(ctl(srv, "list-users", "--json").stdout)
        assert [(u["user"], u["holders"]) for u in users] == [("foobar-carol", 2)]
        assert ask(one, "/dev/null") == "end\n"
        # The first connection's end leaves the second its user and its state.
        assert ask(two, "/var/lib/foobar/carol/secret") == "secret-of-carol\nend\n"
    srv.wait_for(lambda e: len(srv.invocations("foobar@carol")) == 2, 30)
    assert json.loads(ctl(srv, "list-users", "--json").stdout) == []
    assert srv.stop() == 0


def test_the_control_socket_refuses_strangers_and_survives_garbage(
    server: Callable[..., Server],
) -> None:
    # A socket a stranger can reach (the test's directory is root's alone).
    control = f"/run/activator-test-control-{os.getpid()}.sock"
    srv = server({}, control=Path(control))
    as_nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         *activator_command("status", "--control", control)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert as_nobody.returncode == 1
    assert "permission denied" in as_nobody.stderr
    garbage = subprocess.run(
        ["socat", "-t", "5", "-", f"UNIX-CONNECT:{control}"],
        input="{not json\n[1]\n" + "x" * 70000 + "\n",
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    replies = [json.loads(line) for line in garbage.stdout.splitlines()]
    assert [reply["ok"] for reply in replies] == [False, False, False]
    with pytest.raises(ControlError, match="unknown command"):
        request(control, "launch-missiles")
    status = request(control, "status")
    assert isinstance(status, dict)
    assert status["pool"]["size"] == 65519 - 61184 + 1
    assert srv.stop() == 0
