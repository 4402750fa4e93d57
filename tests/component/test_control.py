"""The control socket, served for real and talked to by real clients: the blocking client of the
CLI, trio sockets, and socat (as root, and as user nobody through setpriv).

Each test serves :func:`serve_control` on a socket of its own, with a dispatch function of the
test's; nothing here needs the manager. The socket lives in a directory every user can search
(``public_dir``, under /tmp, removed after), so that a client running as nobody reaches it and is
refused by the server, not by the file system.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
import trio

from activator.control import (
    MAX_CLIENTS,
    MAX_REFUSED,
    MAX_REQUEST,
    ControlError,
    ControlSocketError,
    ControlUnavailable,
    Dispatch,
    request,
    serve_control,
)
from tests.host import static_group

pytestmark = pytest.mark.root  # the server answers root and its group only

#: How long a client waits for a reply before the test calls the server stuck.
DEADLINE = 10.0
NOBODY = 65534
#: A GID for the test's group, below the dynamic pool and unlikely to be taken.
TEST_GID = 61131


async def dispatch(command: str, args: Mapping[str, object]) -> object:
    """The test's dispatcher: echoes, refuses, fails and dawdles on demand."""
    if command == "status":
        return {"command": command, "args": dict(args)}
    if command == "kill":
        msg = f"no invocation or unit matches {args.get('target')!r}"
        raise ControlError(msg)
    if command == "reload":
        msg = "boom"
        raise RuntimeError(msg)
    if command == "list-users":
        return {"not json": {1, 2}}
    if command == "stop":
        await trio.sleep(1.0)  # longer than the idle timeout of the test that sends it
        return {"stopped": [args.get("unit")]}
    return [command]


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory under /tmp that every user may search; removed after."""
    path = Path(tempfile.mkdtemp(prefix="act-control-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@contextlib.asynccontextmanager
async def serving(
    path: Path, group: str = "", handler: Dispatch = dispatch, **options: float
) -> AsyncIterator[None]:
    """serve_control on path while the block runs; cancelled after."""
    async with trio.open_nursery() as nursery:
        serve = functools.partial(serve_control, str(path), group, handler, **options)  # type: ignore[arg-type]
        await nursery.start(serve)
        yield
        nursery.cancel_scope.cancel()


async def read_line(stream: trio.SocketStream, buffer: bytearray) -> dict[str, object]:
    """The next reply line, parsed."""
    with trio.fail_after(DEADLINE):
        while (end := buffer.find(b"\n")) < 0:
            data = await stream.receive_some()
            assert data, f"connection closed; had {bytes(buffer)!r}"
            buffer += data
    line = bytes(buffer[:end])
    del buffer[: end + 1]
    reply = json.loads(line)
    assert isinstance(reply, dict)
    return reply


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes the connection. A server closing with input of ours
    unread resets the connection (after what it sent has been read): that is an end too."""
    got = b""
    with trio.fail_after(DEADLINE), contextlib.suppress(trio.BrokenResourceError):
        while data := await stream.receive_some():
            got += data
    return got


async def ask(path: Path, command: str, args: Mapping[str, object] | None = None) -> object:
    """The blocking client of the CLI, in a thread."""
    return await trio.to_thread.run_sync(
        functools.partial(request, str(path), command, args, timeout=DEADLINE)
    )


async def socat(path: Path, data: bytes, *wrapper: str) -> subprocess.CompletedProcess[bytes]:
    """socat sends data to the socket and returns what came back (through a command such as
    setpriv, when wrapper is given)."""
    with trio.fail_after(DEADLINE):
        return await trio.run_process(
            [*wrapper, "socat", "-t", "5", "-", f"UNIX-CONNECT:{path}"],
            stdin=data,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


# --- replies ------------------------------------------------------------------------------------


async def test_a_request_gets_its_result_and_an_error_its_reason(public_dir: Path) -> None:
    path = public_dir / "control"
    async with serving(path):
        assert await ask(path, "status", {"unit": "foo@alice.socket"}) == {
            "command": "status",
            "args": {"unit": "foo@alice.socket"},
        }
        assert await ask(path, "list-connections") == ["list-connections"]
        with pytest.raises(ControlError) as caught:
            await ask(path, "kill", {"target": "deadbeef"})
        assert str(caught.value) == "no invocation or unit matches 'deadbeef'"
        assert type(caught.value) is ControlError


async def test_several_requests_on_one_connection_are_answered_in_order(public_dir: Path) -> None:
    path = public_dir / "control"
    async with serving(path):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            lines = [
                {"command": "status", "args": {"unit": "a"}},
                {"command": "kill", "args": {"target": "b"}},
                {"command": "start"},  # args may be left out
            ]
            await stream.send_all(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
            buffer = bytearray()
            assert await read_line(stream, buffer) == {
                "ok": True,
                "result": {"command": "status", "args": {"unit": "a"}},
            }
            assert await read_line(stream, buffer) == {
                "ok": False,
                "error": "no invocation or unit matches 'b'",
            }
            assert await read_line(stream, buffer) == {"ok": True, "result": ["start"]}
        # socat, the way a person at a terminal would try it: two lines, then end of input.
        done = await socat(path, b'{"command": "reload"}\n{"command": "restart", "args": {}}')
        replies = [json.loads(x) for x in done.stdout.splitlines()]
        assert replies == [
            {"ok": False, "error": "internal error: RuntimeError: boom"},
            {"ok": True, "result": ["restart"]},
        ]


async def test_malformed_requests_get_an_error_and_the_connection_goes_on(
    public_dir: Path,
) -> None:
    path = public_dir / "control"
    garbage = {
        b"hello": "malformed request: not JSON (Expecting value)",
        b"": "malformed request: not JSON (Expecting value)",
        b"\xff\xfe{}": "malformed request: not JSON",
        b"[1, 2]": "malformed request: must be a JSON object (got an array)",
        b'"status"': "malformed request: must be a JSON object (got a string)",
        b"{}": "malformed request: no 'command'",
        b'{"command": "rm -rf"}': 'unknown command "rm -rf" (known: status, list-connections, '
        "list-users, kill, reload, enable, disable, start, stop, restart)",
        b'{"command": 7}': "unknown command 7 (known: status,",
        b'{"command": "status", "args": [1]}': "malformed request: 'args' must be a JSON object "
        "(got an array)",
        b"[" * 30_000 + b"]" * 30_000: "malformed request: ",
        b"[" * 60_000: "malformed request: not JSON",
    }
    async with serving(path):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            buffer = bytearray()
            for line, error in garbage.items():
                await stream.send_all(line + b"\n")
                reply = await read_line(stream, buffer)
                assert reply["ok"] is False, line[:40]
                assert isinstance(reply["error"], str)
                assert reply["error"].startswith(error), (line[:40], reply)
            await stream.send_all(b'{"command": "status", "args": null}\n')
            assert await read_line(stream, buffer) == {
                "ok": True,
                "result": {"command": "status", "args": {}},
            }


async def test_an_over_long_line_is_refused_and_closed_and_the_server_goes_on(
    public_dir: Path,
) -> None:
    path = public_dir / "control"
    async with serving(path):
        # The longest line is served: a request padded to exactly MAX_REQUEST bytes.
        request_line = b'{"command": "status", "args": {"pad": ""}}'
        padded = request_line.replace(b'""', b'"' + b"x" * (MAX_REQUEST - len(request_line)) + b'"')
        assert len(padded) == MAX_REQUEST
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(padded + b"\n")
            reply = await read_line(stream, bytearray())
            assert reply["ok"] is True
            # One byte more is refused, and the connection closed.
            async with trio.open_nursery() as nursery:

                async def flood() -> None:
                    # More than the server will read: it stops at the limit and closes.
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(b"x" * (MAX_REQUEST + 1) + b"y" * 200_000)

                nursery.start_soon(flood)
                got = await read_to_end(stream)
            assert json.loads(got) == {"ok": False, "error": "request longer than 65536 bytes"}
        assert await ask(path, "start") == ["start"]


async def test_the_65th_client_is_refused_at_once(public_dir: Path) -> None:
    path = public_dir / "control"
    async with serving(path), contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(MAX_CLIENTS):
            stream = await stack.enter_async_context(await trio.open_unix_socket(str(path)))
            await stream.send_all(b'{"command": "start"}\n')
            assert (await read_line(stream, bytearray()))["ok"] is True  # served: counted
            clients.append(stream)
        async with await trio.open_unix_socket(str(path)) as extra:
            got = await read_to_end(extra)
        assert json.loads(got) == {"ok": False, "error": "too many control clients (64); try again"}
        # The 64 are still served; when one leaves, a new client gets its place.
        await clients[0].send_all(b'{"command": "restart"}\n')
        assert (await read_line(clients[0], bytearray()))["ok"] is True
        await clients.pop().aclose()
        assert await ask(path, "start") == ["start"]


async def test_refusals_are_bounded_in_number_and_in_log_lines(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection counts: past the clients served and the refusals being given, one more
    is closed unanswered; a flood of refusals is one log line."""
    monkeypatch.setattr("activator.control._LINGER", 60.0)  # refusals stay until we close them
    path = public_dir / "control"
    caplog.set_level(logging.INFO, logger="activator.control")
    async with serving(path, max_clients=1), contextlib.AsyncExitStack() as stack:
        served = await stack.enter_async_context(await trio.open_unix_socket(str(path)))
        await served.send_all(b'{"command": "start"}\n')
        assert (await read_line(served, bytearray()))["ok"] is True
        too_many = {"ok": False, "error": "too many control clients (1); try again"}
        for _ in range(MAX_REFUSED):  # each holds its place until it closes
            stream = await stack.enter_async_context(await trio.open_unix_socket(str(path)))
            assert await read_line(stream, bytearray()) == too_many
        async with await trio.open_unix_socket(str(path)) as extra:
            assert await read_to_end(extra) == b""  # no room even for a refusal
        await stack.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert await ask(path, "start") == ["start"]  # their places are free again
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    why = "too many control clients (1); try again"
    assert refusals == [f"control socket: refused PID {os.getpid()}: {why}"]


async def test_an_idle_client_is_closed_but_a_long_command_is_not_cut(public_dir: Path) -> None:
    path = public_dir / "control"
    async with serving(path, idle_timeout=0.5):
        async with await trio.open_unix_socket(str(path)) as idle:
            await idle.send_all(b'{"command": "sta')  # never finished
            assert await read_to_end(idle) == b""
        # The stop takes longer than the idle timeout: its client is waiting, not idle.
        assert await ask(path, "stop", {"unit": "foo@bob.socket"}) == {
            "stopped": ["foo@bob.socket"]
        }


async def test_a_dispatcher_bug_costs_that_request_only(
    public_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = public_dir / "control"
    async with serving(path):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            buffer = bytearray()
            await stream.send_all(b'{"command": "reload"}\n{"command": "list-users"}\n')
            assert await read_line(stream, buffer) == {
                "ok": False,
                "error": "internal error: RuntimeError: boom",
            }
            reply = await read_line(stream, buffer)
            assert reply["ok"] is False
            assert str(reply["error"]).startswith("internal error: TypeError: ")
            await stream.send_all(b'{"command": "start"}\n')
            assert await read_line(stream, buffer) == {"ok": True, "result": ["start"]}
    failures = [r for r in caplog.records if r.name == "activator.control"]
    assert [r.getMessage() for r in failures] == [
        "control socket: command 'reload' failed",
        "control socket: command 'list-users' failed",
    ]
    assert all(r.levelno == logging.ERROR and r.exc_info for r in failures)


# --- the socket file ----------------------------------------------------------------------------


async def test_socket_file_mode_stale_file_replaced_and_removed_at_exit(public_dir: Path) -> None:
    path = public_dir / "control"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # a crashed server's file: nobody listens on it
    with pytest.raises(ControlUnavailable) as caught:
        await ask(path, "status")
    assert str(caught.value) == (
        f"cannot connect to {path}: Connection refused (is activator serve running?)"
    )
    async with serving(path):
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o666
        assert await ask(path, "start") == ["start"]
    assert not path.exists()


async def test_the_directory_is_made_0755(public_dir: Path) -> None:
    path = public_dir / "a" / "b" / "control"
    async with serving(path):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert not path.exists()


async def test_a_live_socket_is_not_taken_over(public_dir: Path) -> None:
    path = public_dir / "control"
    async with serving(path):
        with pytest.raises(ControlSocketError) as caught:
            await serve_control(str(path), "", dispatch)
        assert str(caught.value) == f"another activator serves {path}"
        assert await ask(path, "start") == ["start"]  # the first one still serves
    other = public_dir / "file"
    other.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await serve_control(str(other), "", dispatch)
    assert other.read_text() == "not a socket"


async def test_a_replaced_socket_file_is_left_to_its_new_owner(public_dir: Path) -> None:
    path = public_dir / "control"
    async with serving(path):
        path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(str(path))
            inode = path.stat().st_ino
    assert path.stat().st_ino == inode
    path.unlink()


async def test_no_server_is_unavailable(public_dir: Path) -> None:
    path = public_dir / "control"
    with pytest.raises(ControlUnavailable) as caught:
        await ask(path, "status")
    assert str(caught.value) == (
        f"cannot connect to {path}: No such file or directory (is activator serve running?)"
    )


# --- who may talk -------------------------------------------------------------------------------


def as_nobody(*groups: int, gid: int = NOBODY) -> tuple[str, ...]:
    """setpriv's arguments to run a command as nobody, with those supplementary groups."""
    chosen = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ("setpriv", f"--reuid={NOBODY}", f"--regid={gid}", chosen, "--")


async def test_a_user_not_root_is_refused(public_dir: Path) -> None:
    path = public_dir / "control"
    async with serving(path):
        done = await socat(path, b'{"command": "status"}\n', *as_nobody())
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "ok": False,
            "error": f"permission denied: UID {NOBODY} is not root",
        }
        assert await ask(path, "start") == ["start"]  # root still is served
    code = (
        "import sys; from activator.control import request\n"
        "try: request(sys.argv[1], 'status')\n"
        "except Exception as e: print(type(e).__name__, e)\n"
    )
    with tempfile.TemporaryDirectory() as nothing:
        os.chmod(nothing, 0o700)
        hidden = Path(nothing) / "control"
        async with serving(hidden):
            with trio.fail_after(DEADLINE):
                done = await trio.run_process(
                    [*as_nobody(), ".venv/bin/python", "-c", code, str(hidden)],
                    capture_stdout=True,
                    cwd=Path(__file__).parents[2],
                )
    # A directory nobody may search: the client cannot even connect, and says so.
    assert done.stdout.decode() == (
        f"ControlUnavailable cannot connect to {hidden}: Permission denied\n"
    )


async def test_the_configured_group_is_allowed_and_others_are_not(public_dir: Path) -> None:
    path = public_dir / "control"
    with static_group(TEST_GID) as group:
        async with serving(path, group=group):
            asked = b'{"command": "status", "args": {"unit": "x"}}\n'
            allowed = {"ok": True, "result": {"command": "status", "args": {"unit": "x"}}}
            # A supplementary group (SO_PEERGROUPS: as it was at connect time) ...
            done = await socat(path, asked, *as_nobody(100, TEST_GID))
            assert json.loads(done.stdout) == allowed, done.stderr
            # ... or the primary group.
            done = await socat(path, asked, *as_nobody(gid=TEST_GID))
            assert json.loads(done.stdout) == allowed, done.stderr
            done = await socat(path, asked, *as_nobody(100))
            assert json.loads(done.stdout) == {
                "ok": False,
                "error": f"permission denied: UID {NOBODY} is not root and not in group '{group}'",
            }
