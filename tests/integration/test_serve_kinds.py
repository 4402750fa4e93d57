"""``activator serve`` with every kind of socket beyond a plain TCP stream: UDP and Unix datagram
sockets (always Accept=no), Unix sequential-packet sockets, abstract Unix stream sockets, a Unix
socket path with an owner, a group and modes, per-UID limits of a Unix socket, and one socket unit
with several ``Listen*=`` lines.

Each test starts a real ``activator serve`` (the ``server`` fixture) on units written for it,
talks to it with real clients over loopback (Python sockets, ``socat`` run as another user by
``setpriv``), and asserts what a user sees: the bytes or datagrams that come back, the server's
log events, the socket files on the host, and that every lease is gone once the server stopped.

Handlers run with DynamicUser=yes, so with a private /tmp: the Python handlers live in a directory
of tmp_path bound read-only on ``/srv``. Sockets that a handler or another user must reach by
path (the client's address of a Unix datagram socket, a socket ``nobody`` connects to) live in a
directory ``/run/c3-XXXXXXXX`` (mode 0755) that the handler sees at the same path, removed when
the test ends. Unit names start with ``c3``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest

from tests.integration.conftest import in_pool, printed_uid
from tests.integration.serving import (
    ECHO,
    Client,
    Event,
    Server,
    StartServer,
    exchange,
    free_port,
    getent_passwd,
    lease_files,
)

pytestmark = pytest.mark.root


#: How long a client waits for a datagram, a packet or a tool to finish.
DEADLINE: Final = 15.0


#: Run a command as nobody:nogroup with no supplementary groups.
AS_NOBODY: Final = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
#: socat between stdin/stdout and an address; it waits up to 10 s for the answer after stdin ends.
SOCAT: Final = ("socat", "-t", "10", "-T", "10", "-")

#: An Accept=no datagram service: the socket passed on fd 3, COUNT datagrams each answered to
#: its sender (a UDP address, or a Unix datagram socket's path), then it exits.
DATAGRAM_PY: Final = """\
import os
import socket
import sys

count = int(sys.argv[1])
assert os.environ["LISTEN_PID"] == str(os.getpid())
assert os.environ["LISTEN_FDS"] == "1"
with socket.socket(fileno=3) as sock:
    sock.settimeout(20)  # a test that went wrong must not leave the service waiting for ever
    for number in range(1, count + 1):
        data, sender = sock.recvfrom(65536)
        head = f"{number}/{count} uid={os.getuid()} {sock.type.name}: "
        sock.sendto(head.encode() + data, sender)
"""

#: An Accept=yes handler of a sequential-packet connection on fd 3: each message back, one by
#: one, with a prefix; it ends when the client shuts its side down.
SEQPACKET_PY: Final = """\
import os
import socket

assert os.environ["LISTEN_PID"] == str(os.getpid())
assert os.environ["LISTEN_FDS"] == "1"
with socket.socket(fileno=3) as conn:
    conn.settimeout(20)
    while message := conn.recv(65536):
        conn.send(f"uid={os.getuid()} {conn.type.name} got ".encode() + message)
"""


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    """A directory handlers may read (0755, files 0644), bound on /srv: the Python handlers."""
    directory = tmp_path / "srv"
    directory.mkdir()
    directory.chmod(0o755)
    for name, text in (("datagram.py", DATAGRAM_PY), ("seqpacket.py", SEQPACKET_PY)):
        (directory / name).write_text(text, encoding="utf-8")
        (directory / name).chmod(0o644)
    return directory


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory ``/run/c3-XXXXXXXX`` (0755) that handlers and other users reach by the same
    path as the test (pytest's tmp_path is 0700, and private to handlers); removed at the end."""
    directory = Path(f"/run/c3-{secrets.token_hex(4)}")
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def inetd(name: str, *listen: str, socket_lines: tuple[str, ...] = ()) -> dict[str, str]:
    """``NAME.socket`` (Accept=yes, the ``Listen*=`` lines given) and ``NAME@.service``, the
    :data:`ECHO` handler as a dynamic user with the connection on its stdin and stdout."""
    return {
        f"{name}.socket": "\n".join(["[Socket]", *listen, "Accept=yes", *socket_lines, ""]),
        f"{name}@.service": (
            f"[Service]\nExecStart={ECHO}\nDynamicUser=yes\n"
            "StandardInput=socket\nStandardOutput=socket\n"
        ),
    }


def serve_cleanly(server: StartServer, units: Mapping[str, str]) -> Server:
    """A running server on ``units``, which it must load without an error or a warning."""
    running = server(units)
    problems = [e for e in running.events if e.get("event") == "problem"]
    assert not problems, f"problems with the units: {problems}"
    return running


def listening(running: Server) -> list[tuple[str, str]]:
    """The ``listening`` events so far, as (unit, address)."""
    return [(e["unit"], e["address"]) for e in running.events if e.get("event") == "listening"]


def invocations_of(running: Server, unit: str, count: int = 1) -> list[Event]:
    """The first ``count`` finished invocations of the service ``unit`` (waiting for them)."""
    return running.wait_for(
        lambda e: e.get("event") == "invocation" and e.get("unit") == unit, count=count
    )


def invocation_of_uid(running: Server, uid: int) -> Event:
    """The finished invocation that ran as ``uid`` (waiting for it)."""
    (found,) = running.wait_for(lambda e: e.get("event") == "invocation" and e.get("uid") == uid)
    return found


def assert_clean_exit(done: Event) -> None:
    """An invocation ran and exited 0."""
    assert (done["exit_code"], done["signal"], done["failure"]) == (0, None, None), done


def assert_released(uid: int) -> None:
    """``uid`` is free again, as the host sees it: no lease file, and NSS knows no such user."""
    assert str(uid) not in lease_files(), f"the lease of UID {uid} is left"
    looked_up = getent_passwd(uid)
    assert looked_up.returncode == 2, f"getent passwd {uid} still finds: {looked_up.stdout}"


def stop_cleanly(running: Server) -> None:
    """SIGTERM: the server exits 0, no lease left."""
    assert running.stop() == 0
    assert lease_files() == [], "leases left after the server stopped"


def datagrams(sock: socket.socket, address: str | tuple[str, int], *sent: bytes) -> list[bytes]:
    """Send each datagram of ``sent`` to ``address``, then read as many answers."""
    for data in sent:
        sock.sendto(data, address)
    answers: list[bytes] = []
    deadline = time.monotonic() + DEADLINE
    for data in sent:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no answer to {data!r} in {DEADLINE} s; got {answers!r}")
        sock.settimeout(left)
        try:
            answers.append(sock.recv(65536))
        except TimeoutError:
            pytest.fail(f"no answer to {data!r} in {DEADLINE} s; got {answers!r}")
    return answers


def uid_of_answer(answer: bytes) -> int:
    """The UID in a :data:`DATAGRAM_PY` or :data:`SEQPACKET_PY` answer (``... uid=N ...``)."""
    word = next((w for w in answer.split() if w.startswith(b"uid=")), None)
    assert word is not None, f"no uid= in {answer!r}"
    uid = int(word[len(b"uid=") :])
    assert in_pool(uid), f"the handler ran as {uid}, not a pool UID"
    return uid


def datagram_units(name: str, listen: str, srv: Path, count: int) -> dict[str, str]:
    """``NAME.socket`` with one ``ListenDatagram=`` and ``NAME.service``: :data:`DATAGRAM_PY`
    answering ``count`` datagrams per run, as a dynamic user."""
    return {
        f"{name}.socket": f"[Socket]\nListenDatagram={listen}\n",
        f"{name}.service": (
            f"[Service]\nExecStart=/usr/bin/python3 /srv/datagram.py {count}\n"
            f"DynamicUser=yes\nBindReadOnlyPaths={srv}:/srv\n"
        ),
    }


def check_two_datagram_runs(
    running: Server, name: str, rounds: list[list[bytes]], sent: list[list[bytes]]
) -> None:
    """Each round was answered, in order, by one run of the service ``NAME.service`` (one UID per
    run), and two runs were logged, each started by ``NAME.socket`` and with a clean exit."""
    runs = invocations_of(running, f"{name}.service", count=2)
    assert runs[0]["invocation"] != runs[1]["invocation"]
    for run, answers, requests in zip(runs, rounds, sent, strict=True):
        uid = uid_of_answer(answers[0])
        count = len(requests)
        assert answers == [
            f"{n}/{count} uid={uid} SOCK_DGRAM: ".encode() + data
            for n, data in enumerate(requests, start=1)
        ]
        assert (run["socket"], run["uid"], run["peer"]) == (f"{name}.socket", uid, None), run
        assert_clean_exit(run)
        assert_released(uid)


# --- datagram sockets: Accept=no ----------------------------------------------------------------


def test_a_udp_datagram_starts_the_service_which_answers_and_the_next_datagram_starts_it_again(
    leaves_nothing: None, server: StartServer, srv: Path
) -> None:
    port = free_udp_port()
    running = serve_cleanly(server, datagram_units("c3udp", f"127.0.0.1:{port}", srv, 3))
    assert listening(running) == [("c3udp.socket", f"ListenDatagram=127.0.0.1:{port}")]
    sent = [[b"one", b"two", b"three"], [b"four", b"five", b"six"]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        first = datagrams(client, ("127.0.0.1", port), *sent[0])
        # The service answered its three and exits; once it is gone, a datagram starts it again.
        invocations_of(running, "c3udp.service")
        second = datagrams(client, ("127.0.0.1", port), *sent[1])
    check_two_datagram_runs(running, "c3udp", [first, second], sent)
    stop_cleanly(running)


def test_a_unix_datagram_starts_the_service_which_answers_to_the_clients_bound_path(
    leaves_nothing: None, server: StartServer, srv: Path, shared: Path
) -> None:
    path = str(shared / "server.sock")
    running = serve_cleanly(server, datagram_units("c3unixdg", path, srv, 2))
    assert listening(running) == [("c3unixdg.socket", f"ListenDatagram={path}")]
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    sent = [[b"hello", b"there"], [b"and", b"again"]]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client_path = shared / "client.sock"
        client.bind(str(client_path))
        client_path.chmod(0o666)  # the service runs as a dynamic user, and sends to this path
        first = datagrams(client, path, *sent[0])
        invocations_of(running, "c3unixdg.service")
        second = datagrams(client, path, *sent[1])
    check_two_datagram_runs(running, "c3unixdg", [first, second], sent)
    stop_cleanly(running)


# --- sequential packets, abstract names ---------------------------------------------------------


def test_a_seqpacket_handler_on_fd_3_keeps_every_message_boundary(
    leaves_nothing: None, server: StartServer, srv: Path, tmp_path: Path
) -> None:
    path = str(tmp_path / "packets.sock")
    running = serve_cleanly(
        server,
        {
            "c3seq.socket": f"[Socket]\nListenSequentialPacket={path}\nAccept=yes\n",
            "c3seq@.service": (
                "[Service]\nExecStart=/usr/bin/python3 /srv/seqpacket.py\nDynamicUser=yes\n"
                f"BindReadOnlyPaths={srv}:/srv\n"
            ),
        },
    )
    assert listening(running) == [("c3seq.socket", f"ListenSequentialPacket={path}")]
    # Sent together before any is read: a stream would run them together; packets must not.
    messages = [b"one", b"two two", b"three\nlines\n", b"x" * 3000]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
        client.settimeout(DEADLINE)
        client.connect(path)
        for message in messages:
            client.send(message)
        client.shutdown(socket.SHUT_WR)
        answers = [client.recv(65536) for _ in messages]
        assert client.recv(65536) == b"", "the handler sent more than one answer per message"
    uid = uid_of_answer(answers[0])
    assert answers == [f"uid={uid} SOCK_SEQPACKET got ".encode() + m for m in messages]
    done = invocation_of_uid(running, uid)
    assert done["unit"] == f"c3seq@1-{os.getpid()}-0.service"
    assert (done["socket"], done["peer"]) == ("c3seq.socket", f"unix:uid=0,pid={os.getpid()}")
    assert_clean_exit(done)
    assert_released(uid)
    stop_cleanly(running)


def test_an_abstract_unix_stream_socket_serves_a_round_trip(
    leaves_nothing: None, server: StartServer
) -> None:
    name = f"c3abstract-{secrets.token_hex(4)}"
    running = serve_cleanly(server, inetd("c3abs", f"ListenStream=@{name}"))
    assert listening(running) == [("c3abs.socket", f"ListenStream=@{name}")]
    answer = exchange(f"\0{name}", b"hello abstract\n").decode()
    uid = printed_uid(answer)
    assert answer == f"UID={uid}\nhello abstract\n"
    done = invocation_of_uid(running, uid)
    assert (done["socket"], done["peer"]) == ("c3abs.socket", f"unix:uid=0,pid={os.getpid()}")
    assert_clean_exit(done)
    assert_released(uid)
    stop_cleanly(running)


# --- Unix socket files: owner, modes, per-UID limits ------------------------------------------


def test_a_unix_socket_in_a_new_directory_gets_its_owner_group_and_modes(
    leaves_nothing: None, server: StartServer, tmp_path: Path
) -> None:
    top = tmp_path / "made"
    path = top / "by" / "activator.sock"
    assert not top.exists()
    running = serve_cleanly(
        server,
        inetd(
            "c3perm",
            f"ListenStream={path}",
            socket_lines=(
                "SocketUser=nobody",
                "SocketGroup=nogroup",
                "SocketMode=0660",
                "DirectoryMode=0750",
            ),
        ),
    )
    sock = path.lstat()
    assert stat.S_ISSOCK(sock.st_mode)
    assert (sock.st_uid, sock.st_gid) == (65534, 65534), "not nobody:nogroup"
    assert stat.S_IMODE(sock.st_mode) == 0o660, oct(sock.st_mode)
    for directory in (top, top / "by"):
        made = directory.lstat()
        assert stat.S_ISDIR(made.st_mode)
        assert stat.S_IMODE(made.st_mode) == 0o750, f"{directory}: {oct(made.st_mode)}"
    answer = exchange(str(path), b"through the new directory\n").decode()
    assert answer == f"UID={printed_uid(answer)}\nthrough the new directory\n"
    stop_cleanly(running)


def test_max_connections_per_source_of_a_unix_socket_counts_per_peer_uid(
    leaves_nothing: None, server: StartServer, shared: Path
) -> None:
    path = str(shared / "per-uid.sock")
    running = serve_cleanly(
        server,
        inetd(
            "c3peruid",
            f"ListenStream={path}",
            socket_lines=("MaxConnectionsPerSource=1", "SocketMode=0666"),
        ),
    )
    me = f"unix:uid=0,pid={os.getpid()}"
    with Client(path) as first:
        first_uid = printed_uid(first.line())

        with Client(path) as second:  # root again: over the limit, closed at once
            assert second.rest() == b""
        (rejected,) = running.wait_for(lambda e: e.get("event") == "reject")
        assert (rejected["unit"], rejected["peer"], rejected["reason"]) == (
            "c3peruid.socket",
            me,
            "max_connections_per_source",
        )

        # Another UID is another source: served while root's connection still runs.
        nobody = subprocess.run(
            [*AS_NOBODY, *SOCAT, f"UNIX-CONNECT:{path}"],
            input=b"hello from nobody\n",
            capture_output=True,
            timeout=DEADLINE,
            check=False,
        )
        assert nobody.returncode == 0, nobody.stderr
        answer = nobody.stdout.decode()
        nobody_uid = printed_uid(answer)
        assert answer == f"UID={nobody_uid}\nhello from nobody\n"
        done = invocation_of_uid(running, nobody_uid)
        assert done["peer"].startswith("unix:uid=65534,pid="), done
        assert_clean_exit(done)

        first.send(b"root is still served\n")
        first.finish_sending()
        assert first.rest() == b"root is still served\n"
    assert_clean_exit(invocation_of_uid(running, first_uid))
    assert [e["reason"] for e in running.rejects()] == ["max_connections_per_source"]
    stop_cleanly(running)


# --- several Listen lines -----------------------------------------------------------------------


def test_a_tcp_port_and_a_unix_path_of_one_socket_unit_feed_one_service(
    leaves_nothing: None, server: StartServer, tmp_path: Path
) -> None:
    port = free_port()
    path = str(tmp_path / "multi.sock")
    running = serve_cleanly(
        server, inetd("c3multi", f"ListenStream=127.0.0.1:{port}", f"ListenStream={path}")
    )
    assert sorted(listening(running)) == [
        ("c3multi.socket", f"ListenStream={path}"),
        ("c3multi.socket", f"ListenStream=127.0.0.1:{port}"),
    ]
    with Client(("127.0.0.1", port)) as over_tcp:
        over_tcp.send(b"over TCP\n")
        over_tcp.finish_sending()
        tcp_answer = over_tcp.rest().decode()
    unix_answer = exchange(path, b"over a Unix socket\n").decode()
    tcp_uid, unix_uid = printed_uid(tcp_answer), printed_uid(unix_answer)
    assert tcp_answer == f"UID={tcp_uid}\nover TCP\n"
    assert unix_answer == f"UID={unix_uid}\nover a Unix socket\n"

    by_tcp, by_unix = invocation_of_uid(running, tcp_uid), invocation_of_uid(running, unix_uid)
    assert by_tcp["unit"] == f"c3multi@1-127.0.0.1:{port}-127.0.0.1:{over_tcp.port}.service"
    assert by_unix["unit"] == f"c3multi@2-{os.getpid()}-0.service"
    for done in (by_tcp, by_unix):
        assert done["socket"] == "c3multi.socket"
        assert_clean_exit(done)
    stop_cleanly(running)
