"""activator under a service manager: socket-activated itself (``LISTEN_FDS``), and telling the
manager ``READY=1``/``STOPPING=1`` through ``NOTIFY_SOCKET``, as systemd would see it.

The test plays systemd: it binds the listening socket itself and keeps it open, puts it on fd 3
of the activator (``LISTEN_PID`` is the activator's own PID: bash sets it and then execs; dash
cannot move a descriptor above 9), and reads the notifications from a datagram socket of its
own.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.serving import Server, StartServer, free_port, lease_files

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


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1:``port``, as a service manager would bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(16)
        yield sock


def serve_activated(
    server: StartServer, port: int, passed: socket.socket, names: str = "", **options: object
) -> Server:
    """``activator serve`` on the echo units at ``port``, with ``passed`` as its fd 3
    (``LISTEN_FDS=1``, ``LISTEN_PID`` its own PID, ``LISTEN_FDNAMES=names`` when given)."""
    fdnames = f"LISTEN_FDNAMES={names} " if names else ""
    script = f'exec 3<&{passed.fileno()}; LISTEN_PID=$$ LISTEN_FDS=1 {fdnames}exec "$@"'
    return server(
        {name: text.format(port=port) for name, text in ECHO.items()},
        wrapper=["/bin/bash", "-c", script, "bash"],
        pass_fds=(passed.fileno(),),
        **options,
    )


def echoes(port: int) -> str:
    """What the echo service answers to ``ping``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"ping\n")
        client.shutdown(socket.SHUT_WR)
        return client.makefile().read()


def test_activator_serves_a_socket_passed_in_and_notifies_its_manager(
    leaves_nothing: None, server: StartServer, tmp_path: Path
) -> None:
    port = free_port()
    notify_path = str(tmp_path / "notify")
    # Bound by "systemd" and held open: activator could not bind this port itself.
    with listening(port) as passed, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        running = serve_activated(server, port, passed, "echo", env={"NOTIFY_SOCKET": notify_path})
        ready = notifications(notify, "READY=1")
        assert any(m.startswith("READY=1") for m in ready)
        answer = echoes(port)
        assert answer.startswith("UID=")
        assert answer.endswith("ping\n")
        running.wait_for(lambda e: e.get("event") == "invocation")
        passed.close()  # activator holds its own copy: it still serves
        assert echoes(port).startswith("UID=")
        running.signal(signal.SIGTERM)
        stopping = notifications(notify, "STOPPING=1")
        assert any("STOPPING=1" in m.splitlines() for m in stopping)
        assert running.wait() == 0
    assert lease_files() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_passed_socket_no_unit_wants_is_closed_with_a_warning(
    leaves_nothing: None, server: StartServer
) -> None:
    port, stray = free_port(), free_port()
    with listening(stray) as passed:
        running = serve_activated(server, port, passed)
        warning = running.wait_for(lambda e: "matches no socket unit" in str(e.get("message")))
        assert warning[0]["level"] == "warning"
        assert echoes(port).startswith("UID=")
        assert running.stop() == 0
