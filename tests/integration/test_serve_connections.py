"""``activator serve`` as its clients see it: real connections over loopback, real handlers.

Each test starts a real ``activator serve`` (the ``server`` fixture) on units written for it,
talks to it with real clients (socat, OpenBSD nc, git, Python sockets), and asserts what a user
sees: the bytes that come back, the UID a handler reports, the server's log lines, the lease
files and what ``getent`` says on the host, and how the server stops.

Handlers run with DynamicUser=yes, so with a private /tmp: the Python handlers and the git
repository live in a directory of tmp_path (mode 0755) bound read-only on ``/srv``, a directory
that exists on the host. Unit names start with ``c1`` so that the user names of these handlers
never meet those of other tests running at the same time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import pytest

from tests.integration.conftest import LEASE_DIRECTORY, in_pool, printed_uid
from tests.integration.serving import (
    ECHO,
    Address,
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


#: A client tool's own deadline (it must never hang the test).
TOOL_TIMEOUT: Final = 20.0

#: Its environment, between a UID= line and an END line.
SHOW_ENVIRONMENT: Final = "/bin/sh -c 'echo UID=$(id -u); env; echo END'"

#: A handler of Accept=yes that finds its connection with python-systemd (Debian's package, so
#: the system's /usr/bin/python3): one line about what it found, then the request echoed.
LISTEN_FDS_PY: Final = """\
import os
import socket

from systemd import daemon

listen_pid_is_mine = os.environ.get("LISTEN_PID") == str(os.getpid())
names = os.environ.get("LISTEN_FDNAMES")
fds = daemon.listen_fds()
stdin_is_socket = daemon.is_socket(0)
with socket.socket(fileno=fds[0]) as conn, conn.makefile("rb") as requests:
    request = requests.readline().decode()
    conn.sendall(
        f"fds={fds} names={names} listen_pid_is_mine={listen_pid_is_mine} "
        f"stream={daemon.is_socket(fds[0], socket.AF_UNSPEC, socket.SOCK_STREAM)} "
        f"stdin_is_socket={stdin_is_socket} uid={os.getuid()}\\n"
        f"echo {request}".encode()
    )
"""

#: An inetd-style handler: the connection is its stdin and stdout; it answers one line.
INETD_PY: Final = """\
import os
import stat
import sys

line = sys.stdin.readline()
sockets = [stat.S_ISSOCK(os.fstat(fd).st_mode) for fd in (0, 1)]
sys.stdout.write(f"UID={os.getuid()}\\nstdin_stdout_sockets={sockets}\\n{line.upper()}")
"""

#: An Accept=no service: takes every listening socket passed (LISTEN_FDS), accepts COUNT
#: connections itself, answers each with one line, then exits.
ACCEPT_N_PY: Final = """\
import os
import selectors
import socket
import sys

count = int(sys.argv[1])
assert os.environ["LISTEN_PID"] == str(os.getpid())
n = int(os.environ["LISTEN_FDS"])
names = os.environ["LISTEN_FDNAMES"]
selector = selectors.DefaultSelector()
for fd in range(3, 3 + n):
    selector.register(socket.socket(fileno=fd), selectors.EVENT_READ)
for served in range(1, count + 1):
    key, _ = selector.select()[0]
    conn, _ = key.fileobj.accept()
    with conn, conn.makefile("rb") as requests:
        request = requests.readline().decode().strip()
        conn.sendall(
            f"{served} of {count} uid={os.getuid()} fds={n} names={names} "
            f"request={request}\\n".encode()
        )
"""

#: A handler that reports SIGTERM on its connection and runs on: only SIGKILL ends it.
STUBBORN: Final = (
    "/bin/sh -c 'trap \"echo TERM\" TERM; echo UID=$(id -u); sleep 1000 & while :; do wait; done'"
)


# --- helpers ------------------------------------------------------------------------------------


def accept_yes(
    name: str, listen: str, exec_start: str, *service: str, socket_lines: tuple[str, ...] = ()
) -> dict[str, str]:
    """``NAME.socket`` (Accept=yes, one ListenStream=) and its template ``NAME@.service``, which
    runs ``exec_start`` as a dynamic user, with the extra ``[Service]`` lines given."""
    return {
        f"{name}.socket": "\n".join(
            ["[Socket]", f"ListenStream={listen}", "Accept=yes", *socket_lines, ""]
        ),
        f"{name}@.service": "\n".join(
            ["[Service]", f"ExecStart={exec_start}", "DynamicUser=yes", *service, ""]
        ),
    }


def inetd(
    name: str, listen: str, exec_start: str, *service: str, socket_lines: tuple[str, ...] = ()
) -> dict[str, str]:
    """:func:`accept_yes` with the connection on the handler's stdin and stdout."""
    return accept_yes(
        name,
        listen,
        exec_start,
        "StandardInput=socket",
        "StandardOutput=socket",
        *service,
        socket_lines=socket_lines,
    )


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    """A directory handlers may read (0755, files 0644), bound on /srv: the Python handlers."""
    directory = tmp_path / "srv"
    directory.mkdir()
    directory.chmod(0o755)
    for name, text in (
        ("listen_fds.py", LISTEN_FDS_PY),
        ("inetd.py", INETD_PY),
        ("accept_n.py", ACCEPT_N_PY),
    ):
        (directory / name).write_text(text, encoding="utf-8")
        (directory / name).chmod(0o644)
    return directory


def serve_cleanly(server: StartServer, units: Mapping[str, str]) -> Server:
    """A running server on ``units``, which it must load without an error or a warning."""
    running = server(units)
    problems = [e for e in running.events if e.get("event") == "problem"]
    assert not problems, f"problems with the units: {problems}"
    return running


def invocation_of(server: Server, uid: int, nth: int = 1) -> Event:
    """The ``nth`` finished invocation logged with ``uid`` (waiting for it)."""
    found = server.wait_for(
        lambda e: e.get("event") == "invocation" and e.get("uid") == uid, count=nth
    )
    return found[-1]


def assert_released(uid: int) -> None:
    """``uid`` is free again, as the host sees it: no lease file, and NSS knows no such user."""
    assert str(uid) not in lease_files(), f"the lease file {LEASE_DIRECTORY}/{uid} is left"
    looked_up = getent_passwd(uid)
    assert looked_up.returncode == 2, f"getent passwd {uid} still finds: {looked_up.stdout}"


def tool(*argv: str, request: bytes) -> bytes:
    """Run a client tool with ``request`` on its stdin; its stdout (it must succeed)."""
    done = subprocess.run(
        argv, input=request, capture_output=True, timeout=TOOL_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{argv} failed ({done.returncode}): {done.stderr!r}"
    return done.stdout


def environment(answer: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` lines a :data:`SHOW_ENVIRONMENT` handler printed, up to END."""
    lines = answer.decode().splitlines()
    assert "END" in lines, f"the handler did not finish: {answer!r}"
    return dict(line.split("=", 1) for line in lines[: lines.index("END")] if "=" in line)


# --- Accept=yes over TCP, IPv6 and Unix sockets -------------------------------------------------


def test_socat_and_nc_round_trips_over_tcp_ipv6_and_unix_each_run_as_a_released_pool_uid(
    leaves_nothing: None, server: StartServer, tmp_path: Path
) -> None:
    port4 = free_port()
    port6 = free_port(socket.AF_INET6, "::1")
    path = str(tmp_path / "echo.sock")
    running = serve_cleanly(
        server,
        {
            **inetd("c1echo4", f"127.0.0.1:{port4}", ECHO),
            **inetd("c1echo6", f"[::1]:{port6}", ECHO),
            **inetd("c1echou", path, ECHO),
        },
    )
    listening = {e["unit"]: e["address"] for e in running.events if e.get("event") == "listening"}
    assert listening == {
        "c1echo4.socket": f"ListenStream=127.0.0.1:{port4}",
        "c1echo6.socket": f"ListenStream=[::1]:{port6}",
        "c1echou.socket": f"ListenStream={path}",
    }
    socat = ("socat", "-t", "10", "-T", "10", "-")
    nc = ("nc", "-N", "-w", "10")
    clients = {
        "socat over IPv4": (*socat, f"TCP4:127.0.0.1:{port4}"),
        "nc over IPv4": (*nc, "-4", "127.0.0.1", str(port4)),
        "socat over IPv6": (*socat, f"TCP6:[::1]:{port6}"),
        "nc over IPv6": (*nc, "-6", "::1", str(port6)),
        "socat over a Unix socket": (*socat, f"UNIX-CONNECT:{path}"),
        "nc over a Unix socket": (*nc, "-U", path),
    }
    seen: dict[int, int] = {}
    for label, argv in clients.items():
        request = f"hello from {label}\nand a second line\n".encode()
        answer = tool(*argv, request=request).decode()
        uid = printed_uid(answer)
        assert answer == f"UID={uid}\n{request.decode()}", label
        seen[uid] = seen.get(uid, 0) + 1
        done = invocation_of(running, uid, seen[uid])
        assert (done["exit_code"], done["signal"], done["failure"]) == (0, None, None), done
        assert_released(uid)
    assert running.stop() == 0


def test_concurrent_connections_run_as_distinct_users_that_exist_only_while_connected(
    leaves_nothing: None, server: StartServer, tmp_path: Path
) -> None:
    port4 = free_port()
    port6 = free_port(socket.AF_INET6, "::1")
    path = str(tmp_path / "echo.sock")
    running = serve_cleanly(
        server,
        {
            **inetd("c1echo4", f"127.0.0.1:{port4}", ECHO),
            **inetd("c1echo6", f"[::1]:{port6}", ECHO),
            **inetd("c1echou", path, ECHO),
        },
    )
    addresses: list[Address] = [("127.0.0.1", port4), ("127.0.0.1", port4), ("::1", port6), path]
    clients: list[Client] = []
    try:
        for address in addresses:  # all connected at once
            clients.append(Client(address))  # noqa: PERF401 - each is closed even if one fails
        uids = [printed_uid(client.line()) for client in clients]
        assert len(set(uids)) == len(uids), f"a UID served two live connections: {uids}"
        names = {}
        for uid in uids:
            assert str(uid) in lease_files()
            looked_up = getent_passwd(uid)
            assert looked_up.returncode == 0, f"getent passwd {uid}: {looked_up.stderr}"
            name, _, *ids = looked_up.stdout.split(":")[:4]
            assert ids == [str(uid), str(uid)]
            names[uid] = name
        assert len(set(names.values())) == len(uids), f"user names shared: {names}"
        for index, client in enumerate(clients):
            client.send(f"bye {index}\n".encode())
            client.finish_sending()
            assert client.rest() == f"bye {index}\n".encode()
    finally:
        for client in clients:
            client.close()
    for uid in uids:
        done = invocation_of(running, uid)
        assert done["user"] == names[uid]
        assert done["exit_code"] == 0, done
        assert_released(uid)
    assert running.stop() == 0


def test_handlers_see_the_peer_and_local_addresses_in_their_environment(
    leaves_nothing: None, server: StartServer, tmp_path: Path
) -> None:
    port4 = free_port()
    port6 = free_port(socket.AF_INET6, "::1")
    path = str(tmp_path / "env.sock")
    running = serve_cleanly(
        server,
        {
            **inetd("c1env4", f"127.0.0.1:{port4}", SHOW_ENVIRONMENT),
            **inetd("c1env6", f"[::1]:{port6}", SHOW_ENVIRONMENT),
            **inetd("c1envu", path, SHOW_ENVIRONMENT),
        },
    )

    def ask(address: Address) -> tuple[dict[str, str], int, int | None]:
        with Client(address) as client:
            answer = client.rest()
        return environment(answer), printed_uid(answer.decode()), client.port

    def tcp(proto: str, address: str, port: int | None, local_port: int) -> dict[str, str]:
        """systemd's and UCSPI's variables of a loopback connection (both ends at ``address``)."""
        return {
            "PROTO": proto,
            "REMOTE_ADDR": address,
            "REMOTE_PORT": str(port),
            "TCPREMOTEIP": address,
            "TCPREMOTEPORT": str(port),
            "TCPLOCALIP": address,
            "TCPLOCALPORT": str(local_port),
        }

    env, uid, port = ask(("127.0.0.1", port4))
    expected = tcp("TCP", "127.0.0.1", port, port4)
    assert {k: env.get(k) for k in expected} == expected
    done = invocation_of(running, uid)
    assert (done["socket"], done["peer"]) == ("c1env4.socket", f"127.0.0.1:{port}")
    instance = re.escape(f"-127.0.0.1:{port4}-127.0.0.1:{port}.service")
    assert re.fullmatch(rf"c1env4@\d+{instance}", done["unit"]), done["unit"]

    env, uid, port = ask(("::1", port6))
    expected = tcp("TCP6", "::1", port, port6)
    assert {k: env.get(k) for k in expected} == expected
    done = invocation_of(running, uid)
    assert (done["socket"], done["peer"]) == ("c1env6.socket", f"[::1]:{port}")

    env, uid, port = ask(path)
    assert port is None
    expected = {
        "PROTO": "IPC",
        "IPCREMOTEEUID": "0",
        "IPCREMOTEEGID": "0",
        "IPCREMOTEPID": str(os.getpid()),
    }
    assert {k: env.get(k) for k in expected} == expected
    done = invocation_of(running, uid)
    assert (done["socket"], done["peer"]) == ("c1envu.socket", f"unix:uid=0,pid={os.getpid()}")
    assert running.stop() == 0


# --- handlers of every kind ---------------------------------------------------------------------


def test_python_systemd_listen_fds_finds_the_connection_on_fd_3(
    leaves_nothing: None, server: StartServer, srv: Path
) -> None:
    port = free_port()
    running = serve_cleanly(
        server,
        accept_yes(
            "c1fds",
            f"127.0.0.1:{port}",
            "/usr/bin/python3 /srv/listen_fds.py",
            f"BindReadOnlyPaths={srv}:/srv",
        ),
    )
    answer = exchange(("127.0.0.1", port), b"ping\n").decode()
    found, _, rest = answer.partition("\n")
    uid = int(found.rsplit("uid=", 1)[1])
    assert in_pool(uid)
    assert found == (
        "fds=[3] names=connection listen_pid_is_mine=True stream=True stdin_is_socket=False "
        f"uid={uid}"
    )
    assert rest == "echo ping\n"
    assert invocation_of(running, uid)["exit_code"] == 0
    assert_released(uid)
    assert running.stop() == 0


def test_the_handler_alone_holds_the_connection_so_closing_it_ends_the_connection(
    leaves_nothing: None, server: StartServer
) -> None:
    port = free_port()
    # Says hello, closes the connection (stdin, stdout and stderr: StandardError=inherit), and
    # lives on for a while.
    script = "echo hello; exec <&- >&- 2>&-; sleep 30"
    running = serve_cleanly(
        server, inetd("c1close", f"127.0.0.1:{port}", f"/bin/sh -c '{script}'", "TimeoutStopSec=1")
    )
    started = time.monotonic()
    with Client(("127.0.0.1", port)) as client:
        assert client.rest() == b"hello\n"  # EOF: activator kept no copy of the connection
    assert time.monotonic() - started < 10
    assert running.invocations() == []  # the handler still runs: its lifetime is its own
    assert running.stop() == 0


def test_what_a_handler_writes_to_its_journal_streams_is_logged_as_its_output(
    leaves_nothing: None, server: StartServer
) -> None:
    port = free_port()
    script = "echo to stdout; echo to stderr >&2; printf no-newline; exec >&-"
    running = serve_cleanly(
        server, accept_yes("c1out", f"127.0.0.1:{port}", f"/bin/sh -c '{script}'")
    )  # StandardOutput=journal, StandardError=inherit: both go to activator's log
    assert exchange(("127.0.0.1", port), b"") == b""
    lines = running.wait_for(lambda e: e.get("event") == "output", count=3)
    assert [e["text"] for e in lines] == ["to stdout", "to stderr", "no-newline"]
    (done,) = running.wait_for(lambda e: e.get("event") == "invocation")
    assert {e["invocation"] for e in lines} == {done["invocation"]}
    assert all(e["unit"] == done["unit"] for e in lines)
    assert running.stop() == 0


def test_an_inetd_style_handler_talks_over_its_stdin_and_stdout(
    leaves_nothing: None, server: StartServer, srv: Path
) -> None:
    port = free_port()
    running = serve_cleanly(
        server,
        inetd(
            "c1inetd",
            f"127.0.0.1:{port}",
            "/usr/bin/python3 /srv/inetd.py",
            f"BindReadOnlyPaths={srv}:/srv",
        ),
    )
    answer = tool("nc", "-N", "-w", "10", "127.0.0.1", str(port), request=b"shout this\n")
    uid = printed_uid(answer.decode())
    assert answer.decode() == f"UID={uid}\nstdin_stdout_sockets=[True, True]\nSHOUT THIS\n"
    assert invocation_of(running, uid)["exit_code"] == 0
    assert_released(uid)
    assert running.stop() == 0


def test_git_clone_over_git_protocol_from_git_daemon_inetd(
    leaves_nothing: None, server: StartServer, srv: Path, tmp_path: Path
) -> None:
    git_env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.org",
        "GIT_COMMITTER_NAME": "Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.org",
    }

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, env=git_env, timeout=TOOL_TIMEOUT
        )
        assert done.returncode == 0, f"git {args} failed: {done.stderr}"
        return done.stdout

    repository = srv / "repo"
    git("init", "--quiet", "--initial-branch=main", str(repository))
    (repository / "README").write_text("served by activator\n", encoding="utf-8")
    git("-C", str(repository), "add", "README")
    git("-C", str(repository), "commit", "--quiet", "--message", "first commit")

    port = free_port()
    running = serve_cleanly(
        server,
        inetd(
            "c1git",
            f"127.0.0.1:{port}",
            "/usr/bin/git daemon --inetd --export-all --base-path=/srv",
            f"BindReadOnlyPaths={srv}:/srv",
            # The repository belongs to root, the handler is a dynamic user: git's ownership
            # check (safe.directory) must let it read the repository.
            "Environment=GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0=*",
        ),
    )
    clone = tmp_path / "clone"
    git("clone", "--quiet", f"git://127.0.0.1:{port}/repo", str(clone))
    assert (clone / "README").read_text(encoding="utf-8") == "served by activator\n"
    assert git("-C", str(clone), "log", "--format=%s") == "first commit\n"

    (done,) = running.wait_for(lambda e: e.get("event") == "invocation")
    assert done["unit"].startswith("c1git@")
    assert (done["exit_code"], done["signal"], done["failure"]) == (0, None, None), done
    assert in_pool(done["uid"])
    assert_released(done["uid"])
    assert running.stop() == 0


# --- Accept=no ----------------------------------------------------------------------------------


def test_an_accept_no_service_accepts_connections_itself_and_is_started_again_after_it_exits(
    leaves_nothing: None, server: StartServer, srv: Path
) -> None:
    port4 = free_port()
    port6 = free_port(socket.AF_INET6, "::1")
    running = serve_cleanly(
        server,
        {
            "c1ctr.socket": (
                f"[Socket]\nListenStream=127.0.0.1:{port4}\nListenStream=[::1]:{port6}\n"
                "FileDescriptorName=counter\n"
            ),
            "c1ctr.service": (
                "[Service]\nExecStart=/usr/bin/python3 /srv/accept_n.py 3\nDynamicUser=yes\n"
                f"BindReadOnlyPaths={srv}:/srv\n"
            ),
        },
    )
    v4, v6 = ("127.0.0.1", port4), ("::1", port6)

    def ask(address: Address, request: str) -> tuple[str, int]:
        answer = exchange(address, f"{request}\n".encode()).decode()
        assert " uid=" in answer, f"no answer from the service to {request!r}: {answer!r}"
        head, _, uid = answer.partition(" uid=")
        uid, _, tail = uid.partition(" ")
        return f"{head} {tail}", int(uid)

    names = "fds=2 names=counter:counter"
    first_round = [ask(v4, "a"), ask(v6, "b"), ask(v4, "c")]
    # The service has answered its three and exits: the next connection starts it again, even
    # when it arrives before the first run is over.
    second_round = [ask(v6, "d"), ask(v4, "e"), ask(v6, "f")]
    assert [text for text, _ in first_round + second_round] == [
        f"1 of 3 {names} request=a\n",
        f"2 of 3 {names} request=b\n",
        f"3 of 3 {names} request=c\n",
        f"1 of 3 {names} request=d\n",
        f"2 of 3 {names} request=e\n",
        f"3 of 3 {names} request=f\n",
    ]
    uids = [uid for _, uid in first_round + second_round]
    assert len(set(uids[:3])) == len(set(uids[3:])) == 1, f"one user per run: {uids}"
    assert all(map(in_pool, uids))

    runs = running.wait_for(
        lambda e: e.get("event") == "invocation" and e.get("unit") == "c1ctr.service", count=2
    )
    for run, uid in zip(runs, (uids[0], uids[3]), strict=True):
        assert (run["socket"], run["uid"], run["exit_code"], run["signal"]) == (
            "c1ctr.socket",
            uid,
            0,
            None,
        ), run
    assert runs[0]["invocation"] != runs[1]["invocation"]
    assert_released(uids[0])
    assert_released(uids[3])
    assert running.stop() == 0


# --- stop ---------------------------------------------------------------------------------------


def test_sigterm_drains_kills_a_stubborn_handler_at_timeout_stop_sec_and_exits_0(
    leaves_nothing: None, server: StartServer, tmp_path: Path
) -> None:
    port = free_port()
    removed, kept = tmp_path / "removed.sock", tmp_path / "kept.sock"
    running = serve_cleanly(
        server,
        {
            **inetd("c1hold", f"127.0.0.1:{port}", STUBBORN, "TimeoutStopSec=2s"),
            **inetd("c1gone", str(removed), ECHO, socket_lines=("RemoveOnStop=yes",)),
            **inetd("c1kept", str(kept), ECHO),
        },
    )
    try:
        assert removed.is_socket()
        assert kept.is_socket()
        with Client(("127.0.0.1", port)) as held:
            uid = printed_uid(held.line())
            assert str(uid) in lease_files()

            sent = time.monotonic()
            running.signal(signal.SIGTERM)
            running.wait_for(lambda e: e.get("event") == "stopping")
            # A connection that arrives during the drain is not served.
            try:
                late = exchange(("127.0.0.1", port), b"too late\n")
            except ConnectionRefusedError:
                late = b""
            assert b"UID=" not in late
            # The live handler runs on (it ignores SIGTERM, when it gets one) until it is killed
            # at the time-out; then the connection ends.
            assert held.rest() in (b"", b"TERM\n")
            assert running.wait() == 0
            assert time.monotonic() - sent >= 1.9
        done = invocation_of(running, uid)
        assert done["signal"] == "SIGKILL", done
        ends = [e["event"] for e in running.events if e.get("event") in ("stopping", "stopped")]
        assert ends == ["stopping", "stopped"]
        assert str(uid) not in lease_files()
        assert not removed.exists(), "RemoveOnStop=yes left its socket"
        assert kept.is_socket(), "a socket without RemoveOnStop= was removed"
    finally:
        kept.unlink(missing_ok=True)
