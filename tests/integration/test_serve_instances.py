"""Per-customer template instances at runtime, through the control socket, as a hosting operator
uses them: enable two customers, connect to each, see their separate users and state, disable
one, restart activator (issue 6)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import attrs
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
StateDirectory={state}/%i
StandardInput=socket
ExecStart=/bin/sh -c 'echo "customer=%i uid=$(id -u) state=$STATE_DIRECTORY"; \
echo secret-of-%i > "$STATE_DIRECTORY/secret"; read path; cat "$path" 2>&1; echo end'
"""
#: The template socket; each customer's port comes from a drop-in, as an operator would write it.
SOCKET = "[Socket]\nListenStream=/run/{state}/%i.sock\nAccept=yes\nRemoveOnStop=yes\n"


@attrs.frozen
class Hosting:
    """The template units of one test, with a state directory name of its own."""

    state: str

    @property
    def units(self) -> dict[str, str]:
        return {
            "foobar@.service": SERVICE.format(state=self.state),
            "foobar@.socket": SOCKET.format(state=self.state),
        }

    def boundary(self, customer: str) -> Path:
        return Path("/var/lib/private") / self.state / customer

    def public(self, customer: str) -> str:
        return f"/var/lib/{self.state}/{customer}"


@pytest.fixture
def hosting(leaves_nothing: None, directory_name: Callable[[str], str]) -> Hosting:
    """Requested before ``server``, so its clean-up (state directories, and the check that the
    host keeps nothing of the pool) runs after the servers are stopped."""
    return Hosting(directory_name("foobar"))


def port_dropin(server: Server, name: str) -> int:
    """Give a customer a TCP port of its own, in a drop-in of its socket instance; the port."""
    port = free_port()
    dropin = server.units / f"foobar@{name}.socket.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "port.conf").write_text(f"[Socket]\nListenStream=127.0.0.1:{port}\n")
    return port


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``activator ARGS --control SOCKET`` as the operator would."""
    argv = activator_command(*args, "--control", str(server.control))
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def ok(server: Server, *args: str) -> list[str]:
    done = ctl(server, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def hello(server: Server, port: int) -> tuple[Client, dict[str, str]]:
    """Connect to a customer's port; the client (still open) and the handler's greeting."""
    client = Client(("127.0.0.1", port))
    try:
        line = client.line()
    except AssertionError as error:
        time.sleep(3)  # the invocation's own account of it
        failed = [e for e in server.events if e.get("level") in ("warning", "error")]
        msg = f"{error}; warnings and errors: {failed}"
        raise AssertionError(msg) from None
    return client, dict(part.split("=", 1) for part in line.split())


def ask(client: Client, path: str) -> str:
    client.send(f"{path}\n".encode())
    return client.rest().decode()


def test_customers_enabled_at_runtime_get_their_own_users_and_state(
    hosting: Hosting, server: Callable[..., Server]
) -> None:
    srv = server(hosting.units)
    alice_port, bob_port = port_dropin(srv, "alice"), port_dropin(srv, "bob")
    for name in ("alice", "bob"):
        assert ok(srv, "enable", f"foobar@{name}", "--now") == [
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
        assert seen_by_alice["state"] == hosting.public("alice")
        assert seen_by_bob["state"] == hosting.public("bob")
        users = json.loads(ctl(srv, "list-users", "--json").stdout)
        assert {(u["user"], str(u["uid"])) for u in users} == {
            ("foobar-alice", seen_by_alice["uid"]),
            ("foobar-bob", seen_by_bob["uid"]),
        }
        # Each owns its own state; alice's handler cannot read bob's.
        assert hosting.boundary("alice").stat().st_uid == int(seen_by_alice["uid"])
        assert hosting.boundary("bob").stat().st_uid == int(seen_by_bob["uid"])
        # (Her sandbox shows no other state directory at all: "No such file or directory".)
        answer = ask(alice, f"{hosting.public('bob')}/secret")
        assert answer.startswith(f"cat: {hosting.public('bob')}/secret: ")
        assert "secret-of-bob" not in answer
        assert ask(bob, f"{hosting.public('bob')}/secret") == "secret-of-bob\nend\n"
    # Disabling bob stops his socket and leaves alice's live connection alone.
    alice, _ = hello(srv, alice_port)
    with alice:
        assert ok(srv, "disable", "foobar@bob", "--now") == [
            "disabled foobar@bob.socket",
            "stopped foobar@bob.socket",
        ]
        assert ask(alice, f"{hosting.public('alice')}/secret") == "secret-of-alice\nend\n"
    with pytest.raises(OSError):
        Client(("127.0.0.1", bob_port), timeout=2).close()
    assert not os.path.exists(f"/run/{hosting.state}/bob.sock")  # RemoveOnStop=yes
    assert os.listdir(srv.directory / "enabled") == ["foobar@alice.socket"]
    status = json.loads(ctl(srv, "status", "--json").stdout)
    assert [u["unit"] for u in status["units"] if u["kind"] == "socket"] == ["foobar@alice.socket"]
    assert srv.stop() == 0


def test_enabled_customers_come_back_after_a_restart_with_their_uids_and_no_chown(
    hosting: Hosting, server: Callable[..., Server]
) -> None:
    first = server(hosting.units)
    ports = {name: port_dropin(first, name) for name in ("alice", "bob")}
    for name in ports:
        ok(first, "enable", f"foobar@{name}", "--now")
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
    again = server(hosting.units, directory=first.directory, metrics=f"127.0.0.1:{metrics_port}")
    for name, port in ports.items():
        # A few connections each: every one runs as the customer's UID, none chowns.
        for _ in range(3):
            client, fields = hello(again, port)
            with client:
                assert fields["uid"] == uids[name]
                secret = ask(client, f"{hosting.public(name)}/secret")
                assert secret == f"secret-of-{name}\nend\n"
    again.wait_for(lambda _: len(again.invocations("foobar@")) == 6, 30)
    samples = parse(scrape(metrics_port).body)
    assert value(samples, "activator_uid_chown_total") == 0
    assert value(samples, "activator_uid_chown_files_total") == 0
    assert value(samples, "activator_connections_accepted_total", unit="foobar@alice.socket") == 3
    assert again.stop() == 0
    assert not [e for e in again.events if "chowned" in e.get("message", "")]


def test_a_customers_concurrent_connections_share_its_user(
    hosting: Hosting, server: Callable[..., Server]
) -> None:
    srv = server(hosting.units)
    port = port_dropin(srv, "carol")
    ok(srv, "enable", "foobar@carol", "--now")
    one, first = hello(srv, port)
    two, second = hello(srv, port)
    with one, two:
        assert first["uid"] == second["uid"]
        users = json.loads(ctl(srv, "list-users", "--json").stdout)
        assert [(u["user"], u["holders"]) for u in users] == [("foobar-carol", 2)]
        assert ask(one, "/dev/null") == "end\n"
        # The first connection's end leaves the second its user, its lease and its state.
        srv.wait_for(lambda _: len(srv.invocations("foobar@carol")) == 1, 30)
        users = json.loads(ctl(srv, "list-users", "--json").stdout)
        assert [(u["user"], str(u["uid"]), u["holders"]) for u in users] == [
            ("foobar-carol", first["uid"], 1)
        ]
        alive = json.loads(ctl(srv, "list-connections", "--json").stdout)
        assert users[0]["invocations"] == [c["invocation"] for c in alive]
        secret = ask(two, f"{hosting.public('carol')}/secret")
        assert secret == "secret-of-carol\nend\n"
    srv.wait_for(lambda _: len(srv.invocations("foobar@carol")) == 2, 30)
    assert json.loads(ctl(srv, "list-users", "--json").stdout) == []
    assert srv.stop() == 0


def test_instance_verbs_kill_and_their_refusals(
    hosting: Hosting, server: Callable[..., Server]
) -> None:
    srv = server(hosting.units)
    port = port_dropin(srv, "dave")
    # A port already in use: enable --now fails with the reason, and nothing is recorded.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        refused = ctl(srv, "enable", "foobar@dave", "--now")
        assert refused.returncode == 1
        assert refused.stderr.startswith("activator: foobar@dave.socket: cannot listen: ")
        assert "Address already in use" in refused.stderr
    assert os.listdir(srv.directory / "enabled") == []
    assert not os.path.exists(f"/run/{hosting.state}/dave.sock")
    # Started without enabling: it listens now, and is not recorded.
    assert ok(srv, "start", "foobar@dave.socket") == ["started foobar@dave.socket"]
    assert os.listdir(srv.directory / "enabled") == []
    one, _ = hello(srv, port)
    two, _ = hello(srv, port)
    with one, two:
        # The service runs per connection: it is started and restarted through its socket.
        refused = ctl(srv, "restart", "foobar@dave.service")
        assert refused.returncode == 1
        assert "restart foobar@dave.socket instead" in refused.stderr
        live = json.loads(ctl(srv, "list-connections", "--json").stdout)
        assert len(live) == 2
        killed = ok(srv, "kill", live[0]["invocation"][:8])
        assert len(killed) == 1
        # The killed connection ends at once; the other one goes on.
        srv.wait_for(lambda _: len(srv.invocations("foobar@dave")) == 1, 30)
        killed_event = srv.invocations("foobar@dave")[0]
        assert killed_event["invocation"] == live[0]["invocation"]
        assert killed_event["signal"] == "SIGKILL"
        assert [
            c["invocation"] for c in json.loads(ctl(srv, "list-connections", "--json").stdout)
        ] == [live[1]["invocation"]]
    assert ok(srv, "stop", "foobar@dave.socket") == ["stopped foobar@dave.socket"]
    assert ok(srv, "stop", "foobar@dave.socket") == ["foobar@dave.socket: already stopped"]
    refused = ctl(srv, "enable", "nosuch@dave", "--now")
    assert refused.returncode == 1
    assert "nosuch@" in refused.stderr
    assert srv.stop() == 0


def test_a_customer_named_after_a_domain_is_an_instance_too(
    hosting: Hosting, server: Callable[..., Server]
) -> None:
    srv = server(hosting.units)
    assert ok(srv, "enable", "foobar@example.com", "--now") == [
        "enabled foobar@example.com.socket",
        "started foobar@example.com.socket",
    ]
    with Client(f"/run/{hosting.state}/example.com.sock") as client:
        assert client.line().startswith("customer=example.com uid=")
        client.send(b"/dev/null\n")
        assert client.rest() == b"end\n"
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
    assert not os.path.exists(control)


def test_an_enabled_service_instance_runs_at_once_and_again_after_a_restart(
    hosting: Hosting, server: Callable[..., Server]
) -> None:
    worker = (
        f"[Service]\nDynamicUser=yes\nStateDirectory={hosting.state}/%i\n"
        "ExecStart=/bin/sh -c 'echo started >> \"$STATE_DIRECTORY/log\"; exec sleep 600'\n"
    )
    first = server({"worker@.service": worker})
    assert ok(first, "enable", "worker@nightly", "--now") == [
        "enabled worker@nightly.service",
        "started worker@nightly.service",
    ]

    def running(srv: Server) -> list[str]:
        status = json.loads(ctl(srv, "status", "worker@nightly", "--json").stdout)
        return [u["state"] for u in status["units"]]

    first.wait_for(lambda _: hosting.boundary("nightly").joinpath("log").exists(), 30)
    assert running(first) == ["running"]
    assert first.stop() == 0  # stopped with the server (KillSignal=, as a drain does)
    again = server({"worker@.service": worker}, directory=first.directory)
    again.wait_for(
        lambda _: hosting.boundary("nightly").joinpath("log").read_text().count("started") == 2,
        30,
    )
    assert running(again) == ["running"]
    assert ok(again, "stop", "worker@nightly") == ["stopped worker@nightly.service"]
    assert running(again) == ["inactive"]
    assert again.stop() == 0
