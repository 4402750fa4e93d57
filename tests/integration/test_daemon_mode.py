"""``activator serve --daemon``: the command returns once the daemon listens, the daemon is
detached (no terminal, /dev/null for stdio, ``/`` as its directory, umask 022), its pidfile is
locked against a second daemon and removed at exit, its log goes to the configured file, and
SIGTERM through the pidfile stops it with no lease left.

And the other way to run it, under a service manager: systemd's own ``systemd-socket-activate``
binds the socket of deploy/systemd/activator.socket's kind and starts activator on the first
connection, which activator serves on the socket handed over.

The daemon is no child of the test (it detaches by forking twice), so its end is seen in
``/proc``; a test that fails still stops it, by the PID of its pidfile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.integration.conftest import CHECKOUT, activator_command, printed_uid
from tests.integration.serving import (
    Client,
    Server,
    free_port,
    lease_files,
    write_config,
    write_units,
)

pytestmark = pytest.mark.root

#: How long a daemon has to start, or to stop after SIGTERM.
TIMEOUT = 30.0
#: The daemons' own pool, which no other test uses: "no lease left" looks at these UIDs only
#: (tests running at the same time hold leases of their own pools).
POOL_FIRST = 65460
POOL_LAST = 65475
POOL = f"[pool]\nfirst = {POOL_FIRST}\nlast = {POOL_LAST}\n"


def leases_left() -> list[str]:
    """The lease lock files of this module's pool that exist now."""
    return [name for name in lease_files() if POOL_FIRST <= int(name) <= POOL_LAST]


ECHO = {
    "echo.socket": "[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
    "echo@.service": (
        "[Service]\nExecStart=/bin/sh -c 'echo UID=$(id -u); exec cat'\n"
        "StandardInput=socket\nDynamicUser=yes\n"
    ),
}


@attrs.define
class Setup:
    """A daemon's files: settings, log file, pidfile, and the echo service's port."""

    config: Path
    log: Path
    pidfile: Path
    port: int

    def start(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``activator serve --daemon`` to its end (the daemon stays)."""
        argv = ["serve", "--config", str(self.config), "--daemon", "--pidfile", str(self.pidfile)]
        return subprocess.run(
            activator_command(*argv, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=CHECKOUT,
            check=False,
        )

    def pid(self) -> int | None:
        """The PID in the pidfile, or None when there is no pidfile."""
        try:
            return int(self.pidfile.read_text(encoding="ascii"))
        except FileNotFoundError:
            return None

    def events(self) -> list[dict[str, Any]]:
        """Every line of the log file, as JSON objects (the settings ask for JSON)."""
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no longer does: nothing of it is left but its status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = TIMEOUT) -> None:
    """Poll ``/proc`` until ``pid`` has exited; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"PID {pid} still runs after {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """Echo units and settings logging JSON to a file; when the test ends, a daemon still
    running with the pidfile is stopped (SIGTERM, then SIGKILL), by its PID."""
    port = free_port()
    write_units(tmp_path / "units", {k: v.format(port=port) for k, v in ECHO.items()})
    log = tmp_path / "activator.log"
    config = write_config(tmp_path, f'target = "{log}"\n{POOL}')
    made = Setup(config, log, tmp_path / "run" / "activator.pid", port)
    yield made
    pid = made.pid()
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            wait_gone(pid)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)


def test_a_daemon_serves_until_sigterm_through_its_pidfile_and_leaves_nothing(
    leaves_nothing: None, setup: Setup
) -> None:
    started = setup.start()
    assert started.returncode == 0, started.stderr
    assert started.stderr == ""
    pid = setup.pid()
    assert pid is not None
    assert alive(pid)
    # Ready means listening: the command returned, so the first connection is served.
    with Client(("127.0.0.1", setup.port)) as client:
        assert POOL_FIRST <= printed_uid(client.line()) <= POOL_LAST
        client.send(b"hello daemon\n")
        assert client.line() == "hello daemon"
    # Detached: no terminal, stdio on /dev/null, not a session leader, / and umask 022.
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert os.getsid(pid) != pid
    assert os.getsid(pid) != os.getsid(0)
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    assert "\nUmask:\t0022\n" in status
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not setup.pidfile.exists()
    assert leases_left() == []
    names = [e.get("event") for e in setup.events()]
    for name in ("listening", "ready", "invocation", "stopped"):
        assert name in names, f"no {name} event in the log file: {names}"


def test_a_second_daemon_with_the_same_pidfile_is_refused_before_detaching(
    leaves_nothing: None, setup: Setup
) -> None:
    assert setup.start().returncode == 0
    pid = setup.pid()
    second = setup.start()
    assert second.returncode == 1
    assert second.stderr == (
        f"activator: already running as PID {pid} (pidfile {setup.pidfile} is locked)\n"
    )
    assert setup.pid() == pid  # the running daemon's pidfile is untouched
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not setup.pidfile.exists()
    assert leases_left() == []


def test_a_daemon_that_cannot_start_tells_the_command_why(
    leaves_nothing: None, setup: Setup
) -> None:
    service = setup.config.parent / "units" / "echo@.service"
    service.write_text(ECHO["echo@.service"] + "ProtectSystem=sometimes\n", encoding="utf-8")
    started = setup.start("--strict")
    assert started.returncode == 2
    lines = started.stderr.splitlines()
    assert any("ProtectSystem='sometimes'" in line for line in lines), started.stderr
    assert lines[-1] == "activator: error: --strict: not serving, the units have errors"
    assert not setup.pidfile.exists()
    # The log file has the same story.
    assert any("--strict" in str(e.get("message")) for e in setup.events())


def test_a_pidfile_without_daemon_mode_is_a_usage_error(setup: Setup) -> None:
    done = subprocess.run(
        activator_command("serve", "--config", str(setup.config), "--pidfile", "/tmp/x.pid"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=CHECKOUT,
        check=False,
    )
    assert (done.returncode, done.stderr) == (2, "activator: --pidfile needs --daemon\n")


def test_a_stale_pidfile_from_a_killed_daemon_does_not_block_the_next_start(
    leaves_nothing: None, setup: Setup
) -> None:
    setup.pidfile.parent.mkdir()
    setup.pidfile.write_text("999999\n", encoding="ascii")  # unlocked: nobody holds it
    assert setup.start().returncode == 0
    pid = setup.pid()
    assert pid is not None
    assert pid != 999999
    os.kill(pid, signal.SIGTERM)
    wait_gone(pid)
    assert not setup.pidfile.exists()


def test_a_daemon_not_ready_in_time_is_reported_and_the_command_exits_1(tmp_path: Path) -> None:
    """The command never waits for ever: a daemon that is not ready after the ready timeout is
    named, and goes on (here, one that never gets ready: detach.start under a script)."""
    pidfile = tmp_path / "run" / "slow.pid"
    code = (
        "import sys, time\n"
        "from activator import detach\n"
        "started = detach.start(sys.argv[1], [], ready_timeout=1.0)\n"
        "if isinstance(started, int):\n"
        "    sys.exit(started)\n"
        "with started:\n"
        "    time.sleep(60)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(pidfile)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=CHECKOUT,
        check=False,
    )
    pid = int(pidfile.read_text(encoding="ascii"))
    try:
        assert done.returncode == 1, done.stderr
        assert done.stderr == (
            f"activator: daemon PID {pid} not ready after 1 s (it goes on starting; its log "
            "says what it does)\n"
        )
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)


def connect_when_listening(address: tuple[str, int], timeout: float = TIMEOUT) -> Client:
    """A connection to ``address`` once something listens there (refused until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(address)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"nothing listens on {address} after {timeout} s"
            time.sleep(0.05)


def test_systemd_socket_activate_hands_its_socket_over_on_the_first_connection(
    leaves_nothing: None, server: Callable[..., Server]
) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate is not installed (Debian package systemd)")
        pytest.skip("systemd-socket-activate is not installed")
    port = free_port()
    # It passes only the -E variables on; its own info lines would not be JSON.
    wrapper = [tool, "-l", f"127.0.0.1:{port}", "--fdname=echo.socket", "-E", "PATH"]
    running = server(
        {k: v.format(port=port) for k, v in ECHO.items()},
        POOL,
        strict=True,  # activator cannot bind the port itself: without the handover, no start
        wrapper=wrapper,
        env={"SYSTEMD_LOG_LEVEL": "warning"},
        wait=False,
    )
    # The connection waits in the backlog of the socket systemd-socket-activate made while it
    # starts activator, which then accepts it on that very socket.
    with connect_when_listening(("127.0.0.1", port)) as client:
        printed_uid(client.line())
        client.send(b"handed over\n")
        assert client.line() == "handed over"
    running.wait_for(lambda e: e.get("event") == "invocation")
    assert running.stop() == 0
    assert leases_left() == []
