"""activator under a service manager: socket-activated itself (``LISTEN_FDS``), and telling the
manager ``READY=1``/``STOPPING=1`` through ``NOTIFY_SOCKET``, as systemd would see it.

The test plays systemd: it binds the listening socket itself and keeps it open, puts it on fd 3
of the activator (``LISTEN_PID`` is the activator's own PID: bash sets it and then execs; dash
cannot move a descriptor above 9), and reads the notifications from a datagram socket of its
own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import CHECKOUT, activator_command
from tests.integration.serving import Server, free_port, lease_files, write_config, write_units

pytestmark = pytest.mark.root

ECHO = {
    "echo.socket": "[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
    "echo@.service": (
        "[Service]\nExecStart=/bin/sh -c 'echo UID=$(id -u); exec cat'\n"
        "StandardInput=socket\nDynamicUser=yes\n"
    ),
}


def notifications(sock: socket.socket, until: str, timeout: float = 20.0) -> list[str]:
    """Datagrams read from ``sock`` until one holds the line ``until``."""
    sock.settimeout(timeout)
    got: list[str] = []
    while not any(until in message.splitlines() for message in got):
        got.append(sock.recv(4096).decode())
    return got


def start_activated(
    tmp_path: Path, port: int, passed: socket.socket, env: dict[str, str], names: str = ""
) -> Server:
    """``activator serve`` on the echo units at ``port``, with ``passed`` as its fd 3
    (``LISTEN_FDS=1``, ``LISTEN_PID`` its own PID, ``LISTEN_FDNAMES=names`` when given)."""
    write_units(tmp_path / "units", {name: text.format(port=port) for name, text in ECHO.items()})
    config = write_config(tmp_path)
    argv = " ".join(f"'{word}'" for word in activator_command("serve", "--config", str(config)))
    fdnames = f"LISTEN_FDNAMES={names} " if names else ""
    script = f"exec 3<&{passed.fileno()}; LISTEN_PID=$$ LISTEN_FDS=1 {fdnames}exec {argv}"
    proc = subprocess.Popen(
        ["/bin/bash", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=CHECKOUT,
        env={**os.environ, **env},
        pass_fds=(passed.fileno(),),
    )
    return Server(proc, tmp_path)


def test_activator_serves_a_socket_passed_in_and_notifies_its_manager(
    leaves_nothing: None, tmp_path: Path
) -> None:
    port = free_port()
    # Bound by "systemd" and held open: activator could not bind this port itself.
    passed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    passed.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    passed.bind(("127.0.0.1", port))
    passed.listen(16)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify")
    notify.bind(notify_path)
    server = start_activated(tmp_path, port, passed, {"NOTIFY_SOCKET": notify_path}, "echo")
    proc = server.proc
    try:
        ready = notifications(notify, "READY=1")
        assert any(m.startswith("READY=1") for m in ready)
        server.wait_for(lambda e: e.get("event") == "ready")
        # The handler's environment must not carry activator's own LISTEN_* over.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"ping\n")
            client.shutdown(socket.SHUT_WR)
            answer = client.makefile().read()
        assert answer.startswith("UID=")
        assert answer.endswith("ping\n")
        server.wait_for(lambda e: e.get("event") == "invocation")
        passed.close()  # activator holds its own copy: it still serves
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.shutdown(socket.SHUT_WR)
            assert client.makefile().read().startswith("UID=")
        server.signal(signal.SIGTERM)
        stopping = notifications(notify, "STOPPING=1")
        assert any("STOPPING=1" in m.splitlines() for m in stopping)
        assert server.stop() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        passed.close()
        notify.close()
    assert lease_files() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_passed_socket_no_unit_wants_is_closed_with_a_warning(
    leaves_nothing: None, tmp_path: Path
) -> None:
    port, stray = free_port(), free_port()
    passed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    passed.bind(("127.0.0.1", stray))
    passed.listen(4)
    server = start_activated(tmp_path, port, passed, {})
    proc = server.proc
    try:
        server.wait_for(lambda e: e.get("event") == "ready")
        warning = server.wait_for(lambda e: "matches no socket unit" in str(e.get("message")))
        assert warning[0]["level"] == "warning"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.shutdown(socket.SHUT_WR)
            assert client.makefile().read().startswith("UID=")
        assert server.stop() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        passed.close()
