"""The walk-through of ``examples/per-customer/README.md``, with real git clients: two customers
enabled at runtime, a push and a clone, separate users and state, one customer disabled."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import CHECKOUT, activator_command
from tests.integration.serving import Server, free_port

pytestmark = pytest.mark.root

EXAMPLE = Path(CHECKOUT) / "examples" / "per-customer" / "units"


@pytest.fixture
def units(leaves_nothing: None, directory_name: Callable[[str], str]) -> tuple[dict[str, str], str]:
    """The example's templates, with state and sockets under a name of this test's own (so that
    it never touches the state of someone following the walk-through on this host); and that
    name. Requested before ``server``: its clean-up runs after the server is stopped."""
    name = directory_name("gitd")
    texts = {}
    for unit in ("gitd@.socket", "gitd@.service"):
        text = (EXAMPLE / unit).read_text()
        texts[unit] = text.replace("StateDirectory=gitd/", f"StateDirectory={name}/").replace(
            "/run/activator-gitd/", f"/run/{name}/"
        )
    assert texts != {u: (EXAMPLE / u).read_text() for u in texts}
    return texts, name


def ctl(server: Server, *args: str) -> str:
    done = subprocess.run(
        activator_command(*args, "--control", str(server.control)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=alice", "-c", "user.email=alice@example.com", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_customers_push_and_clone_each_as_their_own_user(
    units: tuple[dict[str, str], str], server: Callable[..., Server], tmp_path: Path
) -> None:
    texts, state = units
    srv = server(texts)
    ports = {}
    for name in ("alice", "bob"):
        ports[name] = free_port()
        dropin = srv.units / f"gitd@{name}.socket.d"
        dropin.mkdir()
        (dropin / "port.conf").write_text(f"[Socket]\nListenStream=127.0.0.1:{ports[name]}\n")
        assert ctl(srv, "enable", f"gitd@{name}", "--now").split() == [
            "enabled", f"gitd@{name}.socket", "started", f"gitd@{name}.socket",
        ]  # fmt: skip
    alice = f"git://127.0.0.1:{ports['alice']}/repo.git"
    bob = f"git://127.0.0.1:{ports['bob']}/repo.git"
    work = tmp_path / "work"
    git("init", "-q", str(work))
    git("commit", "-q", "--allow-empty", "-m", "hello from alice", cwd=work)
    git("push", "-q", alice, "HEAD:main", cwd=work)
    git("clone", "-q", alice, str(tmp_path / "clone"))
    assert "hello from alice" in git("log", "--oneline", cwd=tmp_path / "clone")
    assert git("ls-remote", bob) == ""  # bob's repository is his own, and empty
    owners = {d.name: d.stat().st_uid for d in (Path("/var/lib/private") / state).iterdir()}
    assert set(owners) == {"alice", "bob"}
    assert owners["alice"] != owners["bob"]
    srv.wait_for(lambda _: any(e["user"] == "gitd-bob" for e in srv.invocations("gitd@")), 30)
    logged = {e["user"]: e["uid"] for e in srv.invocations("gitd@")}
    assert logged == {"gitd-alice": owners["alice"], "gitd-bob": owners["bob"]}
    ctl(srv, "disable", "gitd@bob", "--now")
    refused = subprocess.run(
        ["git", "ls-remote", bob], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode != 0
    assert "refs/heads/main" in git("ls-remote", alice)
    status = json.loads(ctl(srv, "status", "--json"))
    sockets = [(u["unit"], u["enabled"]) for u in status["units"] if u["kind"] == "socket"]
    assert sockets == [("gitd@alice.socket", True)]
    assert not Path(f"/run/{state}/bob.sock").exists()  # RemoveOnStop=yes
    assert srv.stop() == 0
