"""systemd's userdb Varlink service: the live dynamic users for getent, id and ls -l, from memory.

nss-systemd (``passwd: files systemd`` in /etc/nsswitch.conf) asks every socket under
``/run/systemd/userdb/`` about every user and group the files do not know, in parallel, and waits
for each answer (up to 45 s). This module serves ``io.systemd.UserDatabase`` on
``/run/systemd/userdb/io.activator.DynamicUser`` so that a leased UID has a name exactly while its
lease lives.

Rule 1: every answer comes from memory. A lookup is one call into the caller's :class:`UserTable`
(a dict lookup there); nothing here reads a file, asks NSS or waits for a thread. A slow answer
would stall every missed NSS lookup on the host, not only those of our users.

Rule 2: one client cannot hurt another. Each connection is its own task. A message is capped
(:attr:`UserdbLimits.max_message`, the client is dropped beyond it); a complete message must arrive
within :attr:`UserdbLimits.idle_timeout` and each chunk of answer must be taken by the client
within :attr:`UserdbLimits.write_timeout`, or the connection is closed. Connections are capped in
total and per peer UID (``SO_PEERCRED``): beyond a cap a new connection is closed at once, because
a queued lookup is a stalled lookup. At the total cap, though, the oldest connection waiting for a
message, of the UID that holds the most connections, is closed to make room first: idle clients of
many UIDs (the handlers of a service are a UID each) cannot lock every lookup out. Only when
every connection is being answered is the newcomer closed.

Rule 3: malformed input gets a Varlink error (``org.varlink.service.InvalidParameter``,
``MethodNotFound``, ``ExpectedMore``) and the connection stays usable; no input crashes the
server. An error inside one connection closes that connection only.

Theory of operation: a Varlink message is one JSON object followed by a NUL byte. A call is
``{"method": ..., "parameters": {...}, "more": bool, "oneway": bool}``; a reply is
``{"parameters": {...}}``, ``{"error": name, "parameters": {...}}``, or, when the call said
``more``, a stream of replies each with ``"continues": true`` but the last. :func:`answer` turns
one call into its replies and does no I/O; :func:`serve_userdb` binds the socket and moves bytes.
The semantics follow systemd's own ``io.systemd.DynamicUser`` service in PID 1 and
docs/USER_GROUP_API.md:

* ``GetUserRecord`` / ``GetGroupRecord`` by name, by number, or by both (they must name the same
  record, else ``ConflictingRecordFound``); with neither, the call must say ``more`` and every
  record is streamed. The filters ``fuzzyNames``, ``dispositionMask``, ``uidMin``/``uidMax``
  (``gidMin``/``gidMax``) of newer clients are honoured (``NonMatchingRecordFound`` for a direct
  lookup whose record fails them).
* ``GetMemberships`` is always ``NoRecordFound``: a dynamic user is in its own group only, and
  "no memberships" is said with that error.
* A call whose ``service`` is missing or names another service gets
  ``io.systemd.UserDatabase.BadService`` (clients send the socket's file name).
* Any parameter not in the interface, or of the wrong type, gets ``InvalidParameter`` naming it.
* ``org.varlink.service.GetInfo`` names the service; as in systemd's own userdb services, there
  are no interface descriptions (``GetInterfaceDescription`` is ``MethodNotFound``).
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, NoReturn, Protocol

import attrs
import trio

from activator import __version__
from activator.errors import ActivatorError
from activator.sockfile import (
    SocketFileError,
    bind_socket_file,
    peer_credentials,
    receive_until,
    remove_socket_file,
)

logger = logging.getLogger(__name__)

#: The name of our userdb service: the socket's file name, which clients send as ``service``.
SERVICE: Final = "io.activator.DynamicUser"
#: nss-systemd looks for userdb services in this directory only.
USERDB_DIRECTORY: Final = "/run/systemd/userdb"
SOCKET_PATH: Final = f"{USERDB_DIRECTORY}/{SERVICE}"

HOME_DIRECTORY: Final = "/"
SHELL: Final = "/usr/sbin/nologin"
DISPOSITION: Final = "dynamic"

INTERFACE: Final = "io.systemd.UserDatabase"
VARLINK_SERVICE: Final = "org.varlink.service"

NO_RECORD_FOUND: Final = f"{INTERFACE}.NoRecordFound"
BAD_SERVICE: Final = f"{INTERFACE}.BadService"
CONFLICTING_RECORD_FOUND: Final = f"{INTERFACE}.ConflictingRecordFound"
NON_MATCHING_RECORD_FOUND: Final = f"{INTERFACE}.NonMatchingRecordFound"
INVALID_PARAMETER: Final = f"{VARLINK_SERVICE}.InvalidParameter"
METHOD_NOT_FOUND: Final = f"{VARLINK_SERVICE}.MethodNotFound"
EXPECTED_MORE: Final = f"{VARLINK_SERVICE}.ExpectedMore"

#: Replies are handed to the socket in chunks of about this size, each under the write timeout;
#: requests are received in pieces of at most this size.
_SEND_CHUNK: Final = 64 * 1024
_LISTEN_BACKLOG: Final = 512
#: systemd's uid_is_valid(): (uid_t) -1 and the 16-bit -1 are never a UID.
_INVALID_IDS: Final = frozenset({0xFFFFFFFF, 0xFFFF})
_ID_MAX: Final = 0xFFFFFFFF


@attrs.frozen
class UserRecord:
    """One live dynamic user: its group has the same name and number (gid == uid).

    Attributes:
        name: the user (and group) name, a valid POSIX name.
        uid: the UID (and GID).
        unit: the unit the user runs for, shown in the record's real name.
    """

    name: str
    uid: int
    unit: str


class UserTable(Protocol):
    """The live dynamic users, owned by the caller. Each method must answer from memory at once:
    the lookups are dict lookups, and :meth:`users` may be iterated on the event loop."""

    def user_by_name(self, name: str) -> UserRecord | None: ...

    def user_by_uid(self, uid: int) -> UserRecord | None: ...

    def users(self) -> Iterable[UserRecord]: ...


@attrs.frozen
class UserdbLimits:
    """What one client may cost the server; see Rule 2 of the module docstring.

    Attributes:
        max_message: the largest message accepted, in bytes; a client sending more is dropped.
        idle_timeout: seconds a connection may take to send its next complete message.
        write_timeout: seconds the client may take to read each chunk of an answer.
        max_connections: connections served at once; past it, an idle one makes room (Rule 2),
            or the newcomer is closed at once.
        max_connections_per_uid: connections of one peer UID served at once.
    """

    max_message: int = 64 * 1024
    idle_timeout: float = 30.0
    write_timeout: float = 10.0
    max_connections: int = 512
    max_connections_per_uid: int = 64


class UserdbSocketError(ActivatorError):
    """The userdb socket cannot be set up (its path is taken, or binding failed)."""


# --- records ------------------------------------------------------------------------------------


def _gecos(text: str) -> str:
    """Text that is safe in a passwd GECOS field: no ``:`` and no control characters."""
    return "".join(" " if char == ":" or not char.isprintable() else char for char in text)


def user_record_json(record: UserRecord, service: str = SERVICE) -> dict[str, object]:
    """The JSON user record of a dynamic user, with every field nss-systemd turns into a passwd
    entry (the ``record`` of a ``GetUserRecord`` reply)."""
    return {
        "userName": record.name,
        "uid": record.uid,
        "gid": record.uid,
        "realName": _gecos(f"Dynamic User for {record.unit}"),
        "homeDirectory": HOME_DIRECTORY,
        "shell": SHELL,
        "locked": True,
        "service": service,
        "disposition": DISPOSITION,
    }


def group_record_json(record: UserRecord, service: str = SERVICE) -> dict[str, object]:
    """The JSON group record of a dynamic user's own group (same name, gid == uid)."""
    return {
        "groupName": record.name,
        "gid": record.uid,
        "description": _gecos(f"Dynamic Group for {record.unit}"),
        "service": service,
        "disposition": DISPOSITION,
    }


# --- one call, its replies ----------------------------------------------------------------------


class _Fail(Exception):
    """A Varlink error reply, raised while a call is checked or looked up."""

    def __init__(self, error: str, **parameters: object) -> None:
        super().__init__(error)
        self.error = error
        self.parameters = parameters


def _bad_parameter(parameter: str) -> NoReturn:
    """Fail the call with InvalidParameter naming parameter."""
    raise _Fail(INVALID_PARAMETER, parameter=parameter)


def _encode(message: Mapping[str, object]) -> bytes:
    # ensure_ascii keeps the output ASCII and escapes a NUL inside a string: framing stays intact.
    return json.dumps(message, separators=(",", ":")).encode() + b"\0"


def _is_id(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= _ID_MAX
        and value not in _INVALID_IDS
    )


def _is_string(value: object) -> bool:
    return isinstance(value, str)


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _no_json_constant(name: str) -> object:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


@attrs.frozen
class _Call:
    method: str
    parameters: dict[str, object]
    more: bool
    oneway: bool


def _parse_call(message: bytes) -> _Call:
    try:
        call: object = json.loads(message, parse_constant=_no_json_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        # Not Varlink at all; framing by NUL survives it, so the connection stays usable.
        _bad_parameter("message")
    if not isinstance(call, dict):
        _bad_parameter("message")
    method = call.get("method")
    if not isinstance(method, str):
        _bad_parameter("method")
    parameters = call.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        _bad_parameter("parameters")
    flags = {}
    for flag in ("more", "oneway", "upgrade"):
        value = call.get(flag, False)
        if value is None:
            value = False
        if not isinstance(value, bool):
            _bad_parameter(flag)
        flags[flag] = value
    if flags["upgrade"]:  # no method of ours upgrades the connection to another protocol
        _bad_parameter("upgrade")
    return _Call(method, parameters, more=flags["more"], oneway=flags["oneway"])


def _checked(
    parameters: dict[str, object], spec: Mapping[str, Callable[[object], bool]]
) -> dict[str, object]:
    """The parameters without nulls (every parameter is nullable), each of the type spec gives;
    an unknown or ill-typed one is InvalidParameter, as systemd's strict dispatch does."""
    checked = {}
    for key, value in parameters.items():
        valid = spec.get(key)
        if valid is None:
            _bad_parameter(key)
        if value is None:
            continue
        if not valid(value):
            _bad_parameter(key)
        checked[key] = value
    return checked


def _check_service(parameters: Mapping[str, object], service: str) -> None:
    if parameters.get("service") != service:
        raise _Fail(BAD_SERVICE)


@attrs.frozen
class _RecordKind:
    id_key: str
    name_key: str
    to_json: Callable[[UserRecord, str], dict[str, object]]


_USER = _RecordKind("uid", "userName", user_record_json)
_GROUP = _RecordKind("gid", "groupName", group_record_json)


def _filter(kind: _RecordKind, parameters: Mapping[str, object]) -> Callable[[UserRecord], bool]:
    """The secondary filters of a lookup (docs/USER_GROUP_API.md) as a predicate."""
    low = parameters.get(f"{kind.id_key}Min")
    high = parameters.get(f"{kind.id_key}Max")
    dispositions = parameters.get("dispositionMask")
    fuzzy = parameters.get("fuzzyNames")
    needles = [str(name).casefold() for name in fuzzy] if isinstance(fuzzy, list) else None

    def matches(record: UserRecord) -> bool:
        if isinstance(low, int) and record.uid < low:
            return False
        if isinstance(high, int) and record.uid > high:
            return False
        if isinstance(dispositions, list) and DISPOSITION not in dispositions:
            return False
        if needles is not None:
            haystacks = (record.name.casefold(), record.unit.casefold())
            return any(needle in hay for needle in needles for hay in haystacks)
        return True

    return matches


def _get_record(
    table: UserTable, service: str, call: _Call, kind: _RecordKind
) -> Iterator[dict[str, object]]:
    spec = {
        kind.id_key: _is_id,
        kind.name_key: _is_string,
        "fuzzyNames": _is_strings,
        "dispositionMask": _is_strings,
        f"{kind.id_key}Min": _is_id,
        f"{kind.id_key}Max": _is_id,
        "service": _is_string,
    }
    parameters = _checked(call.parameters, spec)
    _check_service(parameters, service)
    number = parameters.get(kind.id_key)
    name = parameters.get(kind.name_key)
    matches = _filter(kind, parameters)
    if number is None and name is None:
        if not call.more:
            raise _Fail(EXPECTED_MORE)
        # A snapshot: the table may change while a long answer is being sent.
        records = [record for record in table.users() if matches(record)]
    else:
        if isinstance(number, int):
            found = table.user_by_uid(number)
        else:
            assert isinstance(name, str)
            found = table.user_by_name(name)
        if found is None:
            raise _Fail(NO_RECORD_FOUND)
        if (name is not None and found.name != name) or (
            number is not None and found.uid != number
        ):
            raise _Fail(CONFLICTING_RECORD_FOUND)
        if not matches(found):
            raise _Fail(NON_MATCHING_RECORD_FOUND)
        records = [found]
    return ({"record": kind.to_json(record, service), "incomplete": False} for record in records)


def _get_memberships(service: str, call: _Call) -> Iterator[dict[str, object]]:
    spec = {"userName": _is_string, "groupName": _is_string, "service": _is_string}
    _check_service(_checked(call.parameters, spec), service)
    # A dynamic user is a member of its own (primary) group only: no memberships to list.
    raise _Fail(NO_RECORD_FOUND)


#: The interfaces GetInfo lists. Like systemd's own userdb services, no interface descriptions.
_INTERFACES: Final = (INTERFACE, VARLINK_SERVICE)


def _get_info(call: _Call) -> Iterator[dict[str, object]]:
    _checked(call.parameters, {})
    info: dict[str, object] = {
        "vendor": "activator",
        "product": "activator",
        "version": __version__,
        "url": "",
        "interfaces": list(_INTERFACES),
    }
    return iter([info])


def _results(table: UserTable, service: str, call: _Call) -> Iterator[dict[str, object]]:
    """The reply parameters of a well-formed call, lazily; raises _Fail before the first one."""
    method = call.method
    if method == f"{INTERFACE}.GetUserRecord":
        return _get_record(table, service, call, _USER)
    if method == f"{INTERFACE}.GetGroupRecord":
        return _get_record(table, service, call, _GROUP)
    if method == f"{INTERFACE}.GetMemberships":
        return _get_memberships(service, call)
    if method == f"{VARLINK_SERVICE}.GetInfo":
        return _get_info(call)
    raise _Fail(METHOD_NOT_FOUND, method=method)


def answer(table: UserTable, message: bytes, service: str = SERVICE) -> Iterator[bytes]:
    """The replies to one Varlink message (without its NUL), each encoded and NUL-terminated.

    Lookups happen before the first reply is produced; an enumeration is a snapshot of the
    table taken then, encoded lazily as the replies are consumed.

    Args:
        table: the live users.
        message: one message as received, without its terminating NUL.
        service: our service name, which every userdb call must name.

    Returns:
        The replies: none for a ``oneway`` call, one for a plain call, one or more with
        ``"continues": true`` on all but the last for a ``more`` call that finds several records.
    """
    try:
        call = _parse_call(message)
    except _Fail as e:
        return iter([_encode({"error": e.error, "parameters": e.parameters})])
    try:
        results = _results(table, service, call)
    except _Fail as e:
        if call.oneway:
            return iter(())
        return iter([_encode({"error": e.error, "parameters": e.parameters})])
    if call.oneway:
        return iter(())
    return _framed(results, call.more)


def _framed(results: Iterator[dict[str, object]], more: bool) -> Iterator[bytes]:
    previous: dict[str, object] | None = None
    for result in results:
        if previous is not None:
            # Only an enumeration gives more than one result, and it required `more`.
            yield _encode({"parameters": previous, "continues": True})
        previous = result
    if previous is None:
        yield _encode({"error": NO_RECORD_FOUND, "parameters": {}})
    else:
        yield _encode({"parameters": previous})


# --- the socket ---------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Client:
    """One connection being served: its peer UID, the scope that closes it, and whether it is
    waiting for the client's next message (then it may be closed to make room)."""

    uid: int
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    waiting: bool = True
    evicted: bool = False


@attrs.define(eq=False)
class _Connections:
    """Connections being served, in total and per peer UID (an evicted one no longer counts)."""

    limits: UserdbLimits
    total: int = 0
    per_uid: dict[int, int] = attrs.Factory(dict)
    clients: dict[_Client, None] = attrs.Factory(dict)  # oldest first

    def admit(self, uid: int) -> _Client | None:
        if self.per_uid.get(uid, 0) >= self.limits.max_connections_per_uid:
            return None
        if self.total >= self.limits.max_connections and not self._evict():
            return None
        client = _Client(uid)
        self.clients[client] = None
        self.total += 1
        self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
        return client

    def _evict(self) -> bool:
        """Close the oldest connection waiting for a message, of the UID holding the most
        connections (Rule 2); False when every connection is being answered."""
        waiting = [client for client in self.clients if client.waiting and not client.evicted]
        if not waiting:
            return False
        most = max(self.per_uid[client.uid] for client in waiting)
        victim = next(client for client in waiting if self.per_uid[client.uid] == most)
        logger.debug("userdb: at the connection cap, closing an idle one of UID %d", victim.uid)
        victim.evicted = True
        victim.scope.cancel()
        self._uncount(victim.uid)
        return True

    def release(self, client: _Client) -> None:
        del self.clients[client]
        if not client.evicted:
            self._uncount(client.uid)

    def _uncount(self, uid: int) -> None:
        self.total -= 1
        left = self.per_uid[uid] - 1
        if left:
            self.per_uid[uid] = left
        else:
            del self.per_uid[uid]


def _chunks(replies: Iterator[bytes]) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    for reply in replies:
        pending.append(reply)
        size += len(reply)
        if size >= _SEND_CHUNK:
            yield b"".join(pending)
            pending.clear()
            size = 0
    if pending:
        yield b"".join(pending)


async def _converse(
    stream: trio.SocketStream,
    table: UserTable,
    service: str,
    limits: UserdbLimits,
    client: _Client,
) -> None:
    """Answer the calls of one client until it closes, sends too much or misses a deadline;
    ``client.waiting`` says meanwhile whether it waits for the client's next message."""
    buffer = bytearray()
    # One cancel scope for the connection, its deadline moved at each step: a scope per message
    # costs a tenth of the time of an answer, and missing either deadline ends the connection.
    with trio.CancelScope() as deadline:
        while True:
            end = buffer.find(0)
            if end < 0:
                deadline.deadline = trio.current_time() + limits.idle_timeout
                client.waiting = True
                end = await receive_until(stream, buffer, 0, limits.max_message)
                if end < 0:  # end of stream, or too long
                    return
            client.waiting = False
            if end > limits.max_message:
                return
            message = bytes(buffer[:end])
            del buffer[: end + 1]
            sent = False
            for chunk in _chunks(answer(table, message, service)):
                deadline.deadline = trio.current_time() + limits.write_timeout
                await stream.send_all(chunk)
                sent = True
            if not sent:  # a oneway call: yield to other connections all the same
                await trio.lowlevel.checkpoint()


async def serve_userdb(
    table: UserTable,
    path: str = SOCKET_PATH,
    *,
    limits: UserdbLimits = UserdbLimits(),  # frozen: one shared default is safe
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``io.systemd.UserDatabase`` for the users of table on path, until cancelled.

    The service name clients must send is the file name of path (:data:`SERVICE` by default).

    Resource handling: creates the socket's directory if missing (and leaves it), replaces a
    stale socket file a crash left behind, binds with mode 0666, reports readiness through
    ``task_status.started()``, and removes the socket file when cancelled (unless another server
    has replaced it meanwhile).

    Error handling: each connection is its own error boundary; nothing a client sends stops the
    server. See :class:`UserdbLimits` for what a client may cost.

    Raises:
        UserdbSocketError: path exists and is not a socket, another server answers on it, or
            binding fails.
    """
    service = posixpath.basename(path)
    try:
        sock, identity = await bind_socket_file(path, "userdb socket", backlog=_LISTEN_BACKLOG)
    except SocketFileError as e:
        raise UserdbSocketError(str(e)) from None
    connections = _Connections(limits)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            uid = peer_credentials(stream.socket).uid
        except OSError:
            await stream.aclose()
            return
        client = connections.admit(uid)
        if client is None:
            logger.debug("userdb: too many connections, closing one from UID %d", uid)
            await stream.aclose()
            return
        try:
            async with stream:
                with client.scope:  # cancelled when evicted to make room (Rule 2)
                    await _converse(stream, table, service, limits, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            logger.exception("userdb: connection from UID %d failed", uid)
        finally:
            connections.release(client)

    try:
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(handle, [listener])
    finally:
        remove_socket_file(path, identity, "userdb socket")
        sock.close()
