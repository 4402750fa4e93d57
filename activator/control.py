"""The control socket: JSON lines over a Unix stream socket, between the CLI and the daemon.

``activator status``, ``kill``, ``enable`` and the other control commands send one request per
line, ``{"command": "status", "args": {...}}``, and read one reply per line, ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "one line"}``. Several requests may follow on one
connection; each is answered in order. :func:`serve_control` is the server (on trio, inside
``activator serve``); :func:`request` is the blocking client the CLI uses. What a command does is
the caller's ``dispatch`` function; this module only moves requests and replies.

Rule 1: only root and members of the configured group may talk to the server. The check is made
once per connection, at accept, on the event loop, on what the kernel recorded at connect time:
the peer's UID and GID (``SO_PEERCRED``) and its supplementary groups (``SO_PEERGROUPS``), never
``/proc`` (a PID can be reused by then). The group's GID is looked up once, when the server
starts. Anyone else gets one reply line saying why, and the connection is closed. The socket
file is mode 0666 so that the refusal can be read.

Rule 2: nothing a client sends hurts the server or another client. A malformed request gets an
error reply and the connection stays usable; a request line longer than :data:`MAX_REQUEST` bytes
gets an error reply and the connection is closed (the server never holds more than that of a
client's input). A client idle for ``idle_timeout`` seconds (no complete request, or a reply it
does not take) is closed; a command that takes long is not idleness. Every accepted connection
counts: at most ``max_clients`` are served at once, and at most :data:`MAX_REFUSED` more are
being refused (one more gets an error line and is closed at once); past both, a connection is
closed unanswered, unread. A refusal is logged once per :data:`REFUSAL_LOG_INTERVAL` seconds at
most, with the number of those not logged: anyone may connect, and no one may flood the log. A
reply before a close is the client's to read: the server shuts its side down and discards the
client's input for a moment first (a Unix socket closed with input unread resets the
connection, and a client still writing, such as socat, would lose the reply).

Rule 3: each request is its own error boundary. A :class:`ControlError` from ``dispatch`` is an
error reply with its text; any other exception is the reply ``internal error: ...`` and a logged
traceback. The connection and the server go on.

Rule 4: the socket file is ours only while we serve. At start a file nobody answers on is
replaced (a crash left it); one a server answers on is refused ("another activator serves
PATH"). At stop the file is removed if it is still the one we bound.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, NoReturn

import attrs
import trio

from activator.errors import ActivatorError
from activator.sockfile import (
    PeerCredentials,
    SocketFileInUse,
    bind_socket_file,
    peer_credentials,
    peer_groups,
    receive_until,
    remove_socket_file,
)

logger = logging.getLogger(__name__)

#: The longest request line, newline not counted.
MAX_REQUEST: Final = 64 * 1024
#: How many clients are served at once.
MAX_CLIENTS: Final = 64
#: Seconds a client may stay idle (no complete request, or a reply not taken) before it is closed.
IDLE_TIMEOUT: Final = 60.0
#: How many connections are given their refusal at once (each for up to a second); past that,
#: and past ``max_clients``, a connection is closed unanswered.
MAX_REFUSED: Final = 8
#: Refusals are logged once per this many seconds at most.
REFUSAL_LOG_INTERVAL: Final = 10.0

#: The commands the CLI sends, each with the ``args`` keys it carries (docs: activator/ctl.py).
COMMANDS: Final = (
    "status",
    "list-connections",
    "list-users",
    "kill",
    "reload",
    "enable",
    "disable",
    "start",
    "stop",
    "restart",
)

_LISTEN_BACKLOG: Final = 64
#: How long, and how much of its input, a refused client is given to read its refusal.
_LINGER: Final = 1.0
_LINGER_BYTES: Final = 1 << 20
_WHAT: Final = "control socket"
_NEWLINE: Final = 0x0A


class ControlError(ActivatorError):
    """A control request failed; ``str()`` is the one-line reason.

    ``dispatch`` raises it to make an error reply; :func:`request` raises it when the server
    replies ``ok: false`` (the reason is the server's).
    """


class ControlUnavailable(ControlError):
    """The client cannot reach the server (no server, no permission on the path): the message
    names the path and the errno text."""


class ControlSocketError(ControlError):
    """The server cannot bind its socket: another server answers on it, the path is not a
    socket, or bind failed."""


#: Answers one request: the command (one of :data:`COMMANDS`) and its args; returns the result
#: (anything :func:`json.dumps` takes), or raises :class:`ControlError` for an error reply.
Dispatch = Callable[[str, Mapping[str, object]], Awaitable[object]]


# --- the wire ---------------------------------------------------------------------------------


def encode_reply(ok: bool, payload: object) -> bytes:
    """One reply line: ``{"ok": true, "result": payload}`` or ``{"ok": false, "error": payload}``.

    Raises:
        TypeError, ValueError: the result is not JSON (a bug of the dispatcher).
    """
    doc = {"ok": True, "result": payload} if ok else {"ok": False, "error": payload}
    return json.dumps(doc, ensure_ascii=False, allow_nan=False).encode() + b"\n"


def _error_line(reason: str) -> bytes:
    return encode_reply(False, " ".join(reason.split()))  # one line, whatever the reason holds


def parse_request(line: bytes) -> tuple[str, dict[str, object]]:
    """The command and args of one request line (without its newline).

    Raises:
        ControlError: the line is not JSON, not an object, has no known ``command``, or its
            ``args`` is not an object.
    """
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e) or type(e).__name__
        msg = f"malformed request: not JSON ({reason})"
        raise ControlError(msg) from None
    if not isinstance(doc, dict):
        msg = f"malformed request: must be a JSON object (got {_json_type(doc)})"
        raise ControlError(msg)
    command = doc.get("command")
    if command is None:
        msg = "malformed request: no 'command'"
        raise ControlError(msg)
    if command not in COMMANDS:
        shown = json.dumps(command)[:80]
        msg = f"unknown command {shown} (known: {', '.join(COMMANDS)})"
        raise ControlError(msg)
    args = doc.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        msg = f"malformed request: 'args' must be a JSON object (got {_json_type(args)})"
        raise ControlError(msg)
    return command, args


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- who may talk -----------------------------------------------------------------------------


def group_id(group: str) -> int | None:
    """The GID of ``group``; None for ``""`` (root only) or a group that does not exist (logged:
    then only root may use the socket). Blocking (the group database): once, at start."""
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        logger.warning("control socket: group %r does not exist; only root may use it", group)
        return None


def refusal(
    peer: PeerCredentials, groups: frozenset[int] | None, group: str, gid: int | None
) -> str | None:
    """Why peer may not use the control socket, or None when it may (Rule 1). Pure.

    Args:
        peer: the peer's credentials (``SO_PEERCRED``).
        groups: its supplementary groups (``SO_PEERGROUPS``); None when it has too many to read.
        group: the configured group's name (``""``: root only).
        gid: that group's GID (:func:`group_id`); None when it does not exist.
    """
    if peer.uid == 0:
        return None
    if not group:
        return f"permission denied: UID {peer.uid} is not root"
    if gid is not None and (peer.gid == gid or (groups is not None and gid in groups)):
        return None
    why = f"permission denied: UID {peer.uid} is not root and not in group {group!r}"
    if groups is None and gid is not None:
        why += " (it has too many supplementary groups to check; make it the primary group)"
    return why


@attrs.define
class _RefusalLog:
    """Logs a refusal at most once per ``interval`` seconds, with how many were not logged."""

    interval: float = REFUSAL_LOG_INTERVAL
    _next: float = -math.inf
    _quiet: int = 0

    def refused(self, pid: int, why: str) -> None:
        now = trio.current_time()
        if now < self._next:
            self._quiet += 1
            return
        more = f" ({self._quiet} more refused since, not logged)" if self._quiet else ""
        logger.info("control socket: refused PID %d: %s%s", pid, why, more)
        self._next, self._quiet = now + self.interval, 0


# --- the server -------------------------------------------------------------------------------


async def _answer(dispatch: Dispatch, line: bytes) -> bytes:
    try:
        command, args = parse_request(line)
    except ControlError as e:
        return _error_line(str(e))
    try:
        return encode_reply(True, await dispatch(command, args))
    except ControlError as e:
        return _error_line(str(e))
    except Exception as e:
        logger.exception("control socket: command %r failed", command)
        return _error_line(f"internal error: {type(e).__name__}: {e}")


async def _last_word(stream: trio.SocketStream, line: bytes) -> None:
    """Send a last reply before the connection is closed, so that the client can read it.

    Closing a Unix socket with input unread resets the connection, and a client still writing
    its request (socat) fails on the write and never reads the reply. So: send, shut our side
    down, and discard what the client sends until it closes, for at most :data:`_LINGER`
    seconds and :data:`_LINGER_BYTES` bytes.
    """
    with trio.move_on_after(_LINGER):
        await stream.send_all(line)
        await stream.send_eof()
        discarded = 0
        while discarded < _LINGER_BYTES and (data := await stream.receive_some(_LINGER_BYTES)):
            discarded += len(data)


async def _converse(stream: trio.SocketStream, dispatch: Dispatch, idle_timeout: float) -> None:
    """Answer the requests of one client until it closes, sends too much or stays idle."""
    buffer = bytearray()
    with trio.CancelScope() as deadline:
        while True:
            deadline.deadline = trio.current_time() + idle_timeout
            end = await receive_until(stream, buffer, _NEWLINE, MAX_REQUEST)
            if end == -2:
                await _last_word(stream, _error_line(f"request longer than {MAX_REQUEST} bytes"))
                return
            if end == -1:  # the client is done sending; perhaps a last line without newline
                if not buffer.strip():
                    return
                line = bytes(buffer)
                buffer.clear()
            else:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
            # A command may take long (a stop waits for TimeoutStopSec=): a client waiting for
            # its reply is not idle.
            deadline.deadline = math.inf
            reply = await _answer(dispatch, line)
            deadline.deadline = trio.current_time() + idle_timeout
            await stream.send_all(reply)
            if end == -1:
                return


async def serve_control(
    path: str,
    group: str,
    dispatch: Dispatch,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
    max_clients: int = MAX_CLIENTS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the control socket at path until cancelled.

    Args:
        path: the socket file (``settings.control.socket``).
        group: the group whose members may use it besides root; ``""`` means root only.
        dispatch: answers each well-formed request of an allowed client.
        idle_timeout: seconds a client may stay idle before it is closed.
        max_clients: clients served at once; one more is refused (Rule 2).
        task_status: ``started()`` once the socket listens.

    Resource handling: creates the socket's directory (0755) if missing and leaves it, replaces a
    stale socket file, binds with mode 0666, and removes the file when cancelled if it is still
    ours (Rule 4). Each client is a task of its own.

    Error handling: see Rules 2 and 3; nothing a client sends or dispatch raises stops the server.

    Raises:
        ControlSocketError: another server answers on path ("another activator serves PATH"),
            path is not a socket, or binding fails.
    """
    gid = await trio.to_thread.run_sync(group_id, group)
    try:
        sock, identity = await bind_socket_file(path, _WHAT, backlog=_LISTEN_BACKLOG)
    except SocketFileInUse:
        msg = f"another activator serves {path}"
        raise ControlSocketError(msg) from None
    except OSError as e:
        msg = f"{_WHAT} {path}: {e.strerror}"
        raise ControlSocketError(msg) from None
    except ActivatorError as e:
        raise ControlSocketError(str(e)) from None
    clients = refused = 0
    log = _RefusalLog()

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal clients, refused
        async with stream:
            try:
                peer = peer_credentials(stream.socket)
                groups = None if peer.uid == 0 else peer_groups(stream.socket)
                why = refusal(peer, groups, group, gid)
                if why is None and clients >= max_clients:
                    why = f"too many control clients ({max_clients}); try again"
                if why is not None:
                    if refused >= MAX_REFUSED:
                        return  # closed unanswered: refusals cost nothing more than this
                    log.refused(peer.pid, why)
                    refused += 1
                    try:
                        await _last_word(stream, _error_line(why))
                    finally:
                        refused -= 1
                    return
                clients += 1
                try:
                    await _converse(stream, dispatch, idle_timeout)
                finally:
                    clients -= 1
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the client went away
            except Exception:
                logger.exception("control socket: a connection failed")

    try:
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(handle, [listener])
    finally:
        remove_socket_file(path, identity, _WHAT)
        sock.close()


# --- the client -------------------------------------------------------------------------------


def request(
    path: str,
    command: str,
    args: Mapping[str, object] | None = None,
    *,
    timeout: float = 60.0,
) -> object:
    """Send one request to the control socket and wait for its reply (blocking).

    Args:
        path: the control socket.
        command: one of :data:`COMMANDS`.
        args: the command's arguments.
        timeout: seconds for the whole exchange.

    Returns:
        The reply's result.

    Raises:
        ControlUnavailable: cannot connect (no server at path, no permission on it).
        ControlError: the server replied ``ok: false`` (the refusal of a user who may not use
            it, among others), closed the connection without a reply, sent no reply in time, or
            replied with something that is not a reply.
    """
    line = json.dumps({"command": command, "args": dict(args or {})}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except TimeoutError:
            msg = f"cannot connect to {path}: no answer within {timeout:g} s"
            raise ControlUnavailable(msg) from None
        except OSError as e:
            reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
            gone = isinstance(e, FileNotFoundError | ConnectionRefusedError)
            hint = " (is activator serve running?)" if gone else ""
            msg = f"cannot connect to {path}: {reason}{hint}"
            raise ControlUnavailable(msg) from None
        # A server that refused us may have closed already: its reason is waiting to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(line)
        reply = _receive_line(sock, path, deadline)
    return _result(reply, path)


def _receive_line(sock: socket.socket, path: str, deadline: float) -> bytes:
    received = bytearray()
    while (end := received.find(b"\n")) < 0:
        left = deadline - time.monotonic()
        if left <= 0:
            msg = f"{path}: no reply in time"
            raise ControlError(msg)
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            msg = f"{path}: no reply in time"
            raise ControlError(msg) from None
        except OSError as e:
            msg = f"{path}: {e.strerror or e}"
            raise ControlError(msg) from None
        if not data:
            msg = f"{path}: the server closed the connection without a reply"
            raise ControlError(msg)
        received += data
    return bytes(received[:end])


def _result(reply: bytes, path: str) -> object:
    try:
        doc = json.loads(reply)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        msg = f"{path}: not a control reply: {reply[:80]!r}"
        raise ControlError(msg)
    if not doc["ok"]:
        raise ControlError(str(doc.get("error", "failed, and the server did not say why")))
    return doc.get("result")
