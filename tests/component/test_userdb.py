"""The userdb Varlink service, checked with real clients: getent, id and ls -l through nss-systemd.

The tests marked root serve on the real path, /run/systemd/userdb/io.activator.DynamicUser (the
only directory nss-systemd looks in), and leave neither the socket nor, if they created it, the
directory behind. Their users have UIDs just below the default pool (61101...), so that they never
meet the leases of other tests; each test first checks that NSS does not know them.

The other tests talk raw Varlink to a socket under tmp_path (the service name is then the socket's
file name, as for any userdb service), or call the protocol core :func:`answer` directly. The
tests of the connection caps at the total cap need clients of several UIDs, which only root can
be: there, each client names its UID in the name it binds its socket to, and the server's
``SO_PEERCRED`` lookup is replaced by a reading of that name (:func:`fake_peer`); the table of
connections itself is checked directly too, with hypothesis.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import json
import os
import select
import socket
import stat
import struct
import sys
import termios
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from activator.sockfile import PeerCredentials, clear_stale_siblings
from activator.userdb import (
    SERVICE,
    SOCKET_PATH,
    USERDB_DIRECTORY,
    UserdbLimits,
    UserdbSocketError,
    UserRecord,
    _Client,
    _Connections,
    answer,
    group_record_json,
    serve_userdb,
    user_record_json,
)

UDB = "io.systemd.UserDatabase"
ALICE = UserRecord("udbtest-alice", 61101, "echo@1.service")
BOB = UserRecord("udbtest-bob", 61102, "waldo.service")
#: How long a real client may take for one lookup before the test calls it stalled.
CLIENT_DEADLINE = 10.0


@attrs.define
class Table:
    """The caller's table of live users: dicts, as the manager keeps them."""

    by_name: dict[str, UserRecord] = attrs.Factory(dict)
    by_uid: dict[int, UserRecord] = attrs.Factory(dict)

    @classmethod
    def of(cls, *records: UserRecord) -> Table:
        table = cls()
        for record in records:
            table.add(record)
        return table

    def add(self, record: UserRecord) -> None:
        self.by_name[record.name] = record
        self.by_uid[record.uid] = record

    def remove(self, record: UserRecord) -> None:
        del self.by_name[record.name]
        del self.by_uid[record.uid]

    def user_by_name(self, name: str) -> UserRecord | None:
        return self.by_name.get(name)

    def user_by_uid(self, uid: int) -> UserRecord | None:
        return self.by_uid.get(uid)

    def users(self) -> Iterator[UserRecord]:
        return iter(self.by_name.values())


# --- the records --------------------------------------------------------------------------------


def test_user_record_has_every_field_nss_systemd_needs() -> None:
    assert user_record_json(ALICE) == {
        "userName": "udbtest-alice",
        "uid": 61101,
        "gid": 61101,
        "realName": "Dynamic User for echo@1.service",
        "homeDirectory": "/",
        "shell": "/usr/sbin/nologin",
        "locked": True,
        "service": "io.activator.DynamicUser",
        "disposition": "dynamic",
    }


def test_group_record_has_the_same_name_and_number() -> None:
    assert group_record_json(ALICE) == {
        "groupName": "udbtest-alice",
        "gid": 61101,
        "description": "Dynamic Group for echo@1.service",
        "service": "io.activator.DynamicUser",
        "disposition": "dynamic",
    }


def test_real_name_cannot_break_a_passwd_line() -> None:
    record = UserRecord("x", 61184, "odd:unit\n\tname.service")
    assert user_record_json(record)["realName"] == "Dynamic User for odd unit  name.service"
    assert group_record_json(record)["description"] == "Dynamic Group for odd unit  name.service"


# --- the protocol, without a socket -------------------------------------------------------------


def call(
    table: Table, method: str, service: str | None = SERVICE, **kwargs: object
) -> list[dict[str, object]]:
    """The decoded replies of table to one call; kwargs are parameters, more_=True sets more."""
    message: dict[str, object] = {"method": method}
    parameters = {key: value for key, value in kwargs.items() if not key.endswith("_")}
    if service is not None:
        parameters["service"] = service
    message["parameters"] = parameters
    if kwargs.get("more_"):
        message["more"] = True
    if kwargs.get("oneway_"):
        message["oneway"] = True
    return decode(b"".join(answer(table, json.dumps(message).encode())))


def decode(data: bytes) -> list[dict[str, object]]:
    """NUL-terminated JSON messages, decoded; every message must be a JSON object."""
    assert data == b"" or data.endswith(b"\0")
    messages = [json.loads(part) for part in data.split(b"\0")[:-1]]
    assert all(isinstance(message, dict) for message in messages)
    return messages


def error(name: str, **parameters: object) -> list[dict[str, object]]:
    return [{"error": name, "parameters": parameters}]


def found(record: dict[str, object]) -> list[dict[str, object]]:
    return [{"parameters": {"record": record, "incomplete": False}}]


def test_lookups_by_name_by_number_and_by_both() -> None:
    table = Table.of(ALICE, BOB)
    alice = found(user_record_json(ALICE))
    assert call(table, f"{UDB}.GetUserRecord", userName="udbtest-alice") == alice
    assert call(table, f"{UDB}.GetUserRecord", uid=61101) == alice
    assert call(table, f"{UDB}.GetUserRecord", uid=61101, userName="udbtest-alice") == alice
    group = found(group_record_json(BOB))
    assert call(table, f"{UDB}.GetGroupRecord", groupName="udbtest-bob") == group
    assert call(table, f"{UDB}.GetGroupRecord", gid=61102) == group
    assert call(table, f"{UDB}.GetGroupRecord", gid=61102, groupName="udbtest-bob") == group


def test_both_keys_must_name_the_same_record() -> None:
    table = Table.of(ALICE, BOB)
    conflict = error(f"{UDB}.ConflictingRecordFound")
    assert call(table, f"{UDB}.GetUserRecord", uid=61101, userName="udbtest-bob") == conflict
    assert call(table, f"{UDB}.GetGroupRecord", gid=61102, groupName="udbtest-alice") == conflict
    # systemd looks up by number first: an unknown number is no record, whatever the name.
    missing = error(f"{UDB}.NoRecordFound")
    assert call(table, f"{UDB}.GetUserRecord", uid=61999, userName="udbtest-bob") == missing


def test_unknown_users_and_groups_are_no_record() -> None:
    table = Table.of(ALICE)
    missing = error(f"{UDB}.NoRecordFound")
    assert call(table, f"{UDB}.GetUserRecord", userName="root") == missing
    assert call(table, f"{UDB}.GetUserRecord", uid=0) == missing
    assert call(table, f"{UDB}.GetGroupRecord", groupName="nobody") == missing
    assert call(table, f"{UDB}.GetGroupRecord", gid=65534) == missing


def test_enumeration_streams_every_record_with_continues_on_all_but_the_last() -> None:
    table = Table.of(ALICE, BOB)
    replies = call(table, f"{UDB}.GetUserRecord", more_=True)
    assert replies == [
        {"parameters": {"record": user_record_json(ALICE), "incomplete": False}, "continues": True},
        {"parameters": {"record": user_record_json(BOB), "incomplete": False}},
    ]
    groups = call(table, f"{UDB}.GetGroupRecord", more_=True)
    assert [reply["parameters"] for reply in groups] == [
        {"record": group_record_json(ALICE), "incomplete": False},
        {"record": group_record_json(BOB), "incomplete": False},
    ]
    # One record: a single reply, without "continues".
    assert call(Table.of(BOB), f"{UDB}.GetUserRecord", more_=True) == found(user_record_json(BOB))


def test_enumeration_of_nothing_is_no_record_and_needs_more() -> None:
    assert call(Table(), f"{UDB}.GetUserRecord", more_=True) == error(f"{UDB}.NoRecordFound")
    assert call(Table(), f"{UDB}.GetGroupRecord", more_=True) == error(f"{UDB}.NoRecordFound")
    expected_more = error("org.varlink.service.ExpectedMore")
    assert call(Table.of(ALICE), f"{UDB}.GetUserRecord") == expected_more


def test_no_memberships_is_said_with_no_record() -> None:
    table = Table.of(ALICE)
    missing = error(f"{UDB}.NoRecordFound")
    assert call(table, f"{UDB}.GetMemberships", userName="udbtest-alice", more_=True) == missing
    assert call(table, f"{UDB}.GetMemberships", groupName="udbtest-alice", more_=True) == missing
    assert call(table, f"{UDB}.GetMemberships", more_=True) == missing


@pytest.mark.parametrize("method", ["GetUserRecord", "GetGroupRecord", "GetMemberships"])
def test_another_service_or_none_is_bad_service(method: str) -> None:
    table = Table.of(ALICE)
    bad = error(f"{UDB}.BadService")
    assert call(table, f"{UDB}.{method}", service="io.systemd.DynamicUser", more_=True) == bad
    assert call(table, f"{UDB}.{method}", service=None, more_=True) == bad


@pytest.mark.parametrize(
    ("method", "parameters", "at_fault"),
    [
        ("GetUserRecord", {"uid": "61101"}, "uid"),
        ("GetUserRecord", {"uid": True}, "uid"),
        ("GetUserRecord", {"uid": 61101.0}, "uid"),
        ("GetUserRecord", {"uid": -1}, "uid"),
        ("GetUserRecord", {"uid": 2**32}, "uid"),
        ("GetUserRecord", {"uid": 65535}, "uid"),
        ("GetUserRecord", {"userName": 5}, "userName"),
        ("GetUserRecord", {"userName": ["a"]}, "userName"),
        ("GetUserRecord", {"gid": 61101}, "gid"),
        ("GetUserRecord", {"fuzzyNames": "alice"}, "fuzzyNames"),
        ("GetUserRecord", {"service": 7}, "service"),
        ("GetGroupRecord", {"groupName": {}}, "groupName"),
        ("GetGroupRecord", {"uid": 61101}, "uid"),
        ("GetMemberships", {"userName": 1}, "userName"),
        ("GetMemberships", {"bogus": "x"}, "bogus"),
    ],
)
def test_wrong_parameters_are_invalid_parameter(
    method: str, parameters: dict[str, object], at_fault: str
) -> None:
    message = {"method": f"{UDB}.{method}", "parameters": {"service": SERVICE, **parameters}}
    replies = decode(b"".join(answer(Table.of(ALICE), json.dumps(message).encode())))
    assert replies == error("org.varlink.service.InvalidParameter", parameter=at_fault)


@pytest.mark.parametrize(
    ("message", "at_fault"),
    [
        (b"{not json", "message"),
        (b"", "message"),
        (b"\xff\xfe", "message"),
        (b"[1, 2]", "message"),
        (b"[" * 100_000, "message"),
        (b'{"method": 5}', "method"),
        (b'{"parameters": {}}', "method"),
        (b'{"method": "io.systemd.UserDatabase.GetUserRecord", "parameters": []}', "parameters"),
        (b'{"method": "io.systemd.UserDatabase.GetUserRecord", "more": "yes"}', "more"),
        (b'{"method": "io.systemd.UserDatabase.GetUserRecord", "upgrade": true}', "upgrade"),
        (b'{"method": "x.Y", "parameters": {"uid": NaN}}', "message"),
    ],
)  # fmt: skip
def test_malformed_messages_are_invalid_parameter(message: bytes, at_fault: str) -> None:
    replies = decode(b"".join(answer(Table.of(ALICE), message)))
    assert replies == error("org.varlink.service.InvalidParameter", parameter=at_fault)


def test_unknown_methods_are_method_not_found() -> None:
    for method in [f"{UDB}.DeleteUser", "org.example.Nope", "GetUserRecord", ""]:
        assert call(Table(), method) == error("org.varlink.service.MethodNotFound", method=method)


def test_oneway_calls_get_no_reply() -> None:
    table = Table.of(ALICE)
    assert call(table, f"{UDB}.GetUserRecord", userName="udbtest-alice", oneway_=True) == []
    assert call(table, f"{UDB}.NoSuchMethod", oneway_=True) == []


def test_filters_of_newer_clients() -> None:
    table = Table.of(ALICE, BOB)

    def names(**filters: object) -> list[object]:
        message = {"method": f"{UDB}.GetUserRecord", "parameters": {**filters, "service": SERVICE}}
        replies = decode(b"".join(answer(table, encode({**message, "more": True})[:-1])))
        return [
            reply["parameters"]["record"]["userName"]  # type: ignore[index]
            for reply in replies
            if "error" not in reply
        ]

    assert names(uidMin=61102) == ["udbtest-bob"]
    assert names(uidMax=61101) == ["udbtest-alice"]
    assert names(dispositionMask=["regular", "dynamic"]) == ["udbtest-alice", "udbtest-bob"]
    assert names(dispositionMask=["regular"]) == []
    assert names(fuzzyNames=["WALDO"]) == ["udbtest-bob"]
    assert call(table, f"{UDB}.GetUserRecord", uid=61101, uidMin=61102) == error(
        f"{UDB}.NonMatchingRecordFound"
    )


def test_get_info_names_the_interfaces() -> None:
    (info,) = call(Table(), "org.varlink.service.GetInfo", service=None)
    assert info["parameters"]["interfaces"] == [UDB, "org.varlink.service"]  # type: ignore[index]
    assert info["parameters"]["product"] == "activator"  # type: ignore[index]


def test_the_wire_sample_of_nss_systemd() -> None:
    """The calls nss-systemd made in shared/userdb-wire-sample.txt, and the answers it accepted
    there (our real name names the unit; and our users have no memberships)."""
    table = Table.of(UserRecord("dyn-echo-1", 61200, "echo@1.service"))
    record = {
        "userName": "dyn-echo-1", "uid": 61200, "gid": 61200,
        "realName": "Dynamic User for echo@1.service", "homeDirectory": "/",
        "shell": "/usr/sbin/nologin", "locked": True, "service": SERVICE, "disposition": "dynamic",
    }  # fmt: skip
    group = {
        "groupName": "dyn-echo-1", "gid": 61200, "description": "Dynamic Group for echo@1.service",
        "service": SERVICE, "disposition": "dynamic",
    }  # fmt: skip

    def request(method: str, more: bool = False, **parameters: object) -> bytes:
        message: dict[str, object] = {
            "method": f"io.systemd.UserDatabase.{method}",
            "parameters": {**parameters, "service": SERVICE},
        }
        if more:
            message["more"] = True
        return json.dumps(message, separators=(",", ":")).encode()

    no_record = {"error": "io.systemd.UserDatabase.NoRecordFound", "parameters": {}}
    exchanges = [
        (
            request("GetUserRecord", userName="dyn-echo-1"),
            {"parameters": {"record": record, "incomplete": False}},
        ),
        (
            request("GetUserRecord", uid=61200),
            {"parameters": {"record": record, "incomplete": False}},
        ),
        (
            request("GetGroupRecord", gid=61200),
            {"parameters": {"record": group, "incomplete": False}},
        ),
        (request("GetMemberships", True, groupName="dyn-echo-1"), no_record),
        (request("GetMemberships", True, userName="dyn-echo-1"), no_record),
    ]
    for sent, expected in exchanges:
        assert decode(b"".join(answer(table, sent))) == [expected]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
METHODS = st.sampled_from(
    [f"{UDB}.GetUserRecord", f"{UDB}.GetGroupRecord", f"{UDB}.GetMemberships",
     "org.varlink.service.GetInfo"]
) | st.text(max_size=12)  # fmt: skip
KEYS = st.sampled_from(
    ["uid", "gid", "userName", "groupName", "service", "fuzzyNames", "dispositionMask", "uidMin",
     "uidMax", "gidMin", "gidMax"]
) | st.text(max_size=6)  # fmt: skip
VALUES = (
    JSON
    | st.sampled_from([SERVICE, "udbtest-alice", "udbtest-bob", 61101, 61102, ["dynamic"]])
    | st.integers(61100, 61103)
)
CALLS = st.fixed_dictionaries(
    {"method": METHODS},
    optional={
        "parameters": st.dictionaries(KEYS, VALUES, max_size=4) | JSON,
        "more": st.booleans() | JSON,
        "oneway": st.booleans(),
    },
).map(lambda message: json.dumps(message).encode())


@given(st.binary(max_size=64).filter(lambda data: b"\0" not in data) | CALLS)
def test_any_message_gets_well_formed_replies(message: bytes) -> None:
    replies = list(answer(Table.of(ALICE, BOB), message))
    assert all(reply.count(b"\0") == 1 and reply.endswith(b"\0") for reply in replies)
    decoded = decode(b"".join(replies))
    for reply in decoded[:-1]:
        assert reply["continues"] is True
        assert "error" not in reply
    for reply in decoded:
        assert isinstance(reply["parameters"], dict)
        assert isinstance(reply.get("error", ""), str)
    if decoded:
        assert "continues" not in decoded[-1]


# --- raw Varlink over a socket ------------------------------------------------------------------


def lexists(path: str) -> bool:
    """Whether path names a file (of any type); instant on /run and tmp_path."""
    return os.path.lexists(path)


def encode(message: Mapping[str, object]) -> bytes:
    return json.dumps(message).encode() + b"\0"


def lookup(name: str, service: str = SERVICE) -> bytes:
    return encode(
        {"method": f"{UDB}.GetUserRecord", "parameters": {"userName": name, "service": service}}
    )


async def receive(stream: trio.SocketStream, buffer: bytearray) -> dict[str, object] | None:
    """The next message, None at end of stream."""
    while (end := buffer.find(0)) < 0:
        data = await stream.receive_some()
        if not data:
            return None
        buffer += data
    message = json.loads(buffer[:end])
    del buffer[: end + 1]
    assert isinstance(message, dict)
    return message


async def roundtrip(stream: trio.SocketStream, request: bytes) -> dict[str, object] | None:
    await stream.send_all(request)
    return await receive(stream, bytearray())


@pytest.fixture
async def private_server(tmp_path: Path) -> AsyncIterator[tuple[str, Table, trio.Nursery]]:
    """A server on a socket under tmp_path (service name: the file name), with Alice and Bob."""
    path = str(tmp_path / SERVICE)
    table = Table.of(ALICE, BOB)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_userdb, table, path)
        yield path, table, nursery
        nursery.cancel_scope.cancel()
    assert not lexists(path)


async def test_socket_is_world_accessible_and_removed_on_exit(tmp_path: Path) -> None:
    path = str(tmp_path / SERVICE)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_userdb, Table(), path)
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o666
        nursery.cancel_scope.cancel()
    assert not lexists(path)


async def test_the_connection_stays_usable_after_malformed_json(
    private_server: tuple[str, Table, trio.Nursery],
) -> None:
    path, _, _ = private_server
    async with await trio.open_unix_socket(path) as stream:
        buffer = bytearray()
        await stream.send_all(b"{not json\0" + b'{"method": "nope.Nope"}\0')
        assert await receive(stream, buffer) == {
            "error": "org.varlink.service.InvalidParameter",
            "parameters": {"parameter": "message"},
        }
        assert await receive(stream, buffer) == {
            "error": "org.varlink.service.MethodNotFound",
            "parameters": {"method": "nope.Nope"},
        }
        reply = await roundtrip(stream, lookup("udbtest-alice"))
        assert reply == {"parameters": {"record": user_record_json(ALICE), "incomplete": False}}


async def test_the_service_name_is_the_socket_file_name(
    private_server: tuple[str, Table, trio.Nursery],
) -> None:
    path, _, _ = private_server
    async with await trio.open_unix_socket(path) as stream:
        reply = await roundtrip(stream, lookup("udbtest-alice", service="io.systemd.Multiplexer"))
        assert reply == {"error": f"{UDB}.BadService", "parameters": {}}


async def test_pipelined_calls_are_answered_in_order(
    private_server: tuple[str, Table, trio.Nursery],
) -> None:
    path, _, _ = private_server
    names = ["udbtest-alice", "udbtest-bob", "nobody"] * 300
    async with await trio.open_unix_socket(path) as stream:
        await stream.send_all(b"".join(lookup(name) for name in names))
        buffer = bytearray()
        for name in names:
            reply = await receive(stream, buffer)
            assert reply is not None
            if name == "nobody":
                assert reply["error"] == f"{UDB}.NoRecordFound"
            else:
                assert reply["parameters"]["record"]["userName"] == name  # type: ignore[index]


async def receive_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = bytearray()
    with trio.fail_after(CLIENT_DEADLINE):
        while True:
            try:
                chunk = await stream.receive_some()
            except trio.BrokenResourceError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk


async def test_a_huge_message_drops_its_client_only(
    private_server: tuple[str, Table, trio.Nursery],
) -> None:
    path, _, _ = private_server
    async with await trio.open_unix_socket(path) as flooder:
        with contextlib.suppress(trio.BrokenResourceError):  # closed meanwhile
            await flooder.send_all(b"x" * (1024 * 1024))
        assert await receive_until_closed(flooder) == b""
    # One message of 100 KiB, NUL included: over the 64 KiB cap too.
    async with await trio.open_unix_socket(path) as flooder:
        fat = {"method": f"{UDB}.GetUserRecord", "parameters": {"userName": "a" * 100_000}}
        with contextlib.suppress(trio.BrokenResourceError):  # closed meanwhile
            await flooder.send_all(encode(fat))
        assert await receive_until_closed(flooder) == b""
    async with await trio.open_unix_socket(path) as stream:
        assert await roundtrip(stream, lookup("udbtest-bob")) is not None


def wait_for_hangup(fd: int, timeout: float) -> bool:
    """Whether the peer of socket fd closed the connection within timeout, reading nothing."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)
    return bool(poller.poll(timeout * 1000))


async def test_a_client_that_never_reads_is_dropped_and_stalls_nobody(tmp_path: Path) -> None:
    path = str(tmp_path / SERVICE)
    many = Table.of(*(UserRecord(f"udbtest-{n}", 61300 + n, "many.service") for n in range(200)))
    limits = UserdbLimits(write_timeout=0.5)
    enumerate_all = encode(
        {"method": f"{UDB}.GetUserRecord", "parameters": {"service": SERVICE}, "more": True}
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_userdb, many, path, limits=limits))
        async with await trio.open_unix_socket(path) as sluggard:
            # 100 enumerations, about 5 MB of answers: far more than the socket buffers hold.
            await sluggard.send_all(enumerate_all * 100)
            with trio.fail_after(CLIENT_DEADLINE):
                async with await trio.open_unix_socket(path) as other:
                    reply = await roundtrip(other, lookup("udbtest-7"))
                    assert reply is not None
                    assert reply["parameters"]["record"]["uid"] == 61307  # type: ignore[index]
            fd = sluggard.socket.fileno()
            assert await trio.to_thread.run_sync(wait_for_hangup, fd, CLIENT_DEADLINE)
            received = await receive_until_closed(sluggard)
            assert 0 < len(received) < 100 * sum(len(r) for r in answer(many, enumerate_all[:-1]))
        nursery.cancel_scope.cancel()


async def test_an_idle_client_stalls_nobody_and_times_out(tmp_path: Path) -> None:
    path = str(tmp_path / SERVICE)
    limits = UserdbLimits(idle_timeout=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_userdb, Table.of(ALICE), path, limits=limits))
        async with (
            await trio.open_unix_socket(path) as idle,
            await trio.open_unix_socket(path) as half,
        ):
            await half.send_all(lookup("udbtest-alice")[:20])  # a message begun, never ended
            with trio.fail_after(CLIENT_DEADLINE):
                async with await trio.open_unix_socket(path) as stream:
                    assert await roundtrip(stream, lookup("udbtest-alice")) is not None
            assert await receive_until_closed(idle) == b""
            assert await receive_until_closed(half) == b""
        nursery.cancel_scope.cancel()


async def test_connections_are_capped_per_peer_uid(tmp_path: Path) -> None:
    path = str(tmp_path / SERVICE)
    limits = UserdbLimits(max_connections_per_uid=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_userdb, Table.of(ALICE), path, limits=limits))
        async with (
            await trio.open_unix_socket(path) as first,
            await trio.open_unix_socket(path) as second,
        ):
            # Both are being served (the server answers them), so the third is one too many.
            assert await roundtrip(first, lookup("udbtest-alice")) is not None
            assert await roundtrip(second, lookup("udbtest-alice")) is not None
            async with await trio.open_unix_socket(path) as third:
                with trio.fail_after(CLIENT_DEADLINE):
                    with contextlib.suppress(trio.BrokenResourceError):  # closed meanwhile
                        await third.send_all(lookup("udbtest-alice"))
                assert await receive_until_closed(third) == b""
        # Closed connections free their places.
        with trio.fail_after(CLIENT_DEADLINE):
            while True:
                async with await trio.open_unix_socket(path) as again:
                    try:
                        if await roundtrip(again, lookup("udbtest-alice")) is not None:
                            break
                    except trio.BrokenResourceError:
                        pass
                await trio.sleep(0.01)  # the server task of a closed connection is ending
        nursery.cancel_scope.cancel()


# --- room at the total cap ----------------------------------------------------------------------

#: The caps of the eviction tests: three connections in all, ten of one UID.
CAPPED = UserdbLimits(max_connections=3, max_connections_per_uid=10)
#: The users of the eviction tests' server, and the call that lists them all.
MANY = Table.of(*(UserRecord(f"udbtest-{n}", 61300 + n, "many.service") for n in range(200)))
ENUMERATE = encode(
    {"method": f"{UDB}.GetUserRecord", "parameters": {"service": SERVICE}, "more": True}
)
#: The size of one answer to :data:`ENUMERATE` (about 50 KB).
ENUMERATION_BYTES = sum(len(reply) for reply in answer(MANY, ENUMERATE[:-1]))
#: Enumerations enough that their answers are far more than a Unix socket buffers: the sender's
#: send buffer bounds what is queued (``net.core.wmem_default``, 208 KiB by default).
ENUMERATIONS = max(
    20, 4 * int(Path("/proc/sys/net/core/wmem_default").read_text()) // ENUMERATION_BYTES + 1
)


def fake_peer(sock: trio.socket.SocketType) -> PeerCredentials:
    """The "credentials" of a test client: the UID in the name it bound its socket to
    (``peer-UID-N``). Only root can connect as other UIDs; the caps count what this says."""
    name = os.path.basename(sock.getpeername())
    return PeerCredentials(pid=0, uid=int(name.split("-")[1]), gid=0)


@attrs.define
class Peers:
    """Clients of a userdb server at ``path`` that each say which UID they are (see
    :func:`fake_peer`), with their sockets' names under ``directory``; :meth:`aclose` closes
    them all."""

    path: str
    directory: Path
    streams: list[trio.SocketStream] = attrs.Factory(list)

    async def connect(self, uid: int) -> trio.SocketStream:
        """A new connection as UID ``uid``."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(str(self.directory / f"peer-{uid}-{len(self.streams)}"))
            await sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.streams.append(trio.SocketStream(sock))
        return self.streams[-1]

    async def aclose(self) -> None:
        for stream in self.streams:
            await stream.aclose()

    async def served(self, uid: int) -> trio.SocketStream:
        """A new connection as UID ``uid`` whose lookup was answered: admitted, and waiting for
        its next message."""
        stream = await self.connect(uid)
        assert await answered(stream)
        return stream

    async def busy(self, uid: int) -> trio.SocketStream:
        """A new connection as UID ``uid`` being answered: it asked for :data:`ENUMERATIONS`
        enumerations and reads nothing, so the server is stuck sending (until its write
        timeout, 10 s). Checked: part of the answer waits in the client's socket, not all."""
        stream = await self.connect(uid)
        await stream.send_all(ENUMERATE * ENUMERATIONS)
        await trio.testing.wait_all_tasks_blocked()  # the server blocks in its send
        queued = queued_bytes(stream)
        assert 0 < queued < ENUMERATIONS * ENUMERATION_BYTES, queued
        return stream


def queued_bytes(stream: trio.SocketStream) -> int:
    """How many bytes wait, unread, in the client's socket (``FIONREAD``)."""
    raw = fcntl.ioctl(stream.socket.fileno(), termios.FIONREAD, b"\0\0\0\0")
    count: int = struct.unpack("i", raw)[0]
    return count


async def answered(stream: trio.SocketStream) -> bool:
    """Whether a lookup on ``stream`` gets its record (False: the server closed it)."""
    with trio.fail_after(CLIENT_DEADLINE):
        try:
            reply = await roundtrip(stream, lookup("udbtest-7"))
        except trio.BrokenResourceError:
            return False
    if reply is None:
        return False
    assert reply["parameters"]["record"]["uid"] == 61307  # type: ignore[index]
    return True


async def read_everything(stream: trio.SocketStream) -> int:
    """Read the answers of a busy client to its :data:`ENUMERATIONS` enumerations; how many
    whole records came (the replies are checked as they come)."""
    buffer = bytearray()
    records = 0
    with trio.fail_after(CLIENT_DEADLINE):
        for _ in range(ENUMERATIONS * len(MANY.by_uid)):
            reply = await receive(stream, buffer)
            assert reply is not None, f"closed after {records} records"
            assert reply["parameters"]["record"]["userName"].startswith("udbtest-")  # type: ignore[index]
            records += 1
    return records


@pytest.fixture
async def capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peers]:
    """A server of :data:`MANY` under :data:`CAPPED`, whose clients say their UID."""
    monkeypatch.setattr("activator.userdb.peer_credentials", fake_peer)
    path = str(tmp_path / SERVICE)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_userdb, MANY, path, limits=CAPPED))
        peers = Peers(path, tmp_path)
        try:
            yield peers
        finally:
            await peers.aclose()
            nursery.cancel_scope.cancel()


async def test_at_the_cap_the_oldest_idle_connection_of_the_uid_holding_most_makes_room(
    capped: Peers, figures: dict[str, object]
) -> None:
    oldest = await capped.served(70001)
    first_of_two = await capped.served(70002)
    second_of_two = await capped.served(70002)
    # At the cap, a newcomer is served: the oldest waiting connection of UID 70002, which holds
    # the most, is closed for it; not the oldest of all (70001's).
    newcomer = await capped.served(70003)
    closed = [await receive_until_closed(first_of_two)]
    assert closed == [b""]
    assert await answered(oldest)
    assert await answered(second_of_two)
    # Now each UID holds one: the oldest waiting one of them all goes for the next newcomer.
    assert await answered(await capped.connect(70004))
    closed.append(await receive_until_closed(oldest))
    assert closed == [b"", b""]
    assert await answered(second_of_two)
    assert await answered(newcomer)
    figures.update(
        max_connections=CAPPED.max_connections,
        connections=len(capped.streams),
        closed_to_make_room=len(closed),
    )


async def test_at_the_cap_a_connection_being_answered_is_never_closed_to_make_room(
    capped: Peers, figures: dict[str, object]
) -> None:
    busy = [await capped.busy(70001), await capped.busy(70001)]
    idle = await capped.served(70002)
    # UID 70001 holds the most, but both of its connections are being answered: the idle one
    # of 70002 makes room.
    assert await answered(await capped.connect(70003))
    closed = await receive_until_closed(idle) == b""
    assert closed
    records = [await read_everything(stream) for stream in busy]
    assert records == [ENUMERATIONS * len(MANY.by_uid)] * len(busy)
    figures.update(
        connections=len(capped.streams),
        busy_connections=len(busy),
        busy_records_received=sum(records),
        closed_to_make_room=int(closed),
        lost=len(busy) * ENUMERATIONS * len(MANY.by_uid) - sum(records),
    )


async def test_at_the_cap_a_newcomer_is_closed_when_every_connection_is_being_answered(
    capped: Peers, figures: dict[str, object]
) -> None:
    busy = [await capped.busy(70001), await capped.busy(70001), await capped.busy(70002)]
    newcomer = await capped.connect(70003)
    with contextlib.suppress(trio.BrokenResourceError):  # closed meanwhile
        await newcomer.send_all(lookup("udbtest-7"))
    refused = await receive_until_closed(newcomer) == b""
    assert refused
    # The busy ones get their whole answers; then they wait, and make room again.
    records = [await read_everything(stream) for stream in busy]
    assert records == [ENUMERATIONS * len(MANY.by_uid)] * len(busy)
    assert await answered(await capped.connect(70003))
    figures.update(
        connections=len(capped.streams),
        busy_connections=len(busy),
        busy_records_received=sum(records),
        refused=int(refused),
        lost=len(busy) * ENUMERATIONS * len(MANY.by_uid) - sum(records),
    )


#: One step on the connection table: admit a connection of a UID, or, for the live connection
#: at an index (modulo their number), release it, or mark it busy (being answered) or waiting.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 3)),
        st.tuples(st.sampled_from(["release", "busy", "wait"]), st.integers(0, 20)),
    ),
    max_size=60,
)


@pytest.mark.slow  # half a second under the CI profile's 300 examples
@given(
    most=st.integers(1, 5),
    most_per_uid=st.integers(1, 5),
    steps=STEPS,
)
def test_the_connection_counts_hold_whatever_the_order_of_events(
    most: int, most_per_uid: int, steps: list[tuple[str, int]]
) -> None:
    table = _Connections(UserdbLimits(max_connections=most, max_connections_per_uid=most_per_uid))
    live: list[_Client] = []  # admitted, not released yet (evicted ones included, until released)
    for action, number in steps:
        counted = [client for client in live if not client.evicted]
        if action == "admit":
            waiting = [client for client in counted if client.waiting]
            holds = collections.Counter(client.uid for client in counted)
            full = holds[number] >= most_per_uid or (len(counted) >= most and not waiting)
            client = table.admit(number)
            assert (client is None) is full
            evicted = [c for c in counted if c.evicted]
            if len(counted) >= most and client is not None:
                # Exactly one made room: the oldest waiting one of the UID holding the most.
                top = max(holds[c.uid] for c in waiting)
                assert evicted == [next(c for c in waiting if holds[c.uid] == top)]
                assert evicted[0].scope.cancel_called
            else:
                assert evicted == []
            if client is not None:
                live.append(client)
        elif live:
            client = live[number % len(live)]
            if action == "release":
                table.release(client)
                live.remove(client)
            else:
                client.waiting = action == "wait"
        counted = [client for client in live if not client.evicted]
        assert table.total == sum(table.per_uid.values()) == len(counted) <= most
        assert table.per_uid == collections.Counter(client.uid for client in counted)
        assert all(0 < n <= most_per_uid for n in table.per_uid.values())
        assert list(table.clients) == live


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / SERVICE)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(path)  # a socket file nobody listens on, as a kill -9 leaves it
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_userdb, Table.of(ALICE), path)
        async with await trio.open_unix_socket(path) as stream:
            assert await roundtrip(stream, lookup("udbtest-alice")) is not None
        nursery.cancel_scope.cancel()
    assert not lexists(path)


async def test_stale_sockets_of_crashed_runs_are_removed_and_live_ones_and_files_kept(
    tmp_path: Path,
) -> None:
    prefix = f"{SERVICE}.run-"
    for pid in (101, 102):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
            crashed.bind(str(tmp_path / f"{prefix}{pid}"))  # as a kill -9 leaves it
    (tmp_path / f"{prefix}103").write_text("not a socket")
    (tmp_path / "other.run-104").write_text("")  # another name: never looked at
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(tmp_path / f"{prefix}105"))
        live.listen(1)
        removed = await clear_stale_siblings(str(tmp_path), prefix, "userdb socket")
        assert removed == [str(tmp_path / f"{prefix}{pid}") for pid in (101, 102)]
        assert sorted(os.listdir(tmp_path)) == [f"{prefix}103", f"{prefix}105", "other.run-104"]


async def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / SERVICE
    path.write_text("precious\n")
    with pytest.raises(
        UserdbSocketError, match=r"io\.activator\.DynamicUser: File exists, and it is not a socket"
    ):
        await serve_userdb(Table(), str(path))
    assert path.read_text() == "precious\n"


async def test_a_live_server_is_not_replaced(
    private_server: tuple[str, Table, trio.Nursery],
) -> None:
    path, _, _ = private_server
    with pytest.raises(UserdbSocketError, match="Address already in use"):
        await serve_userdb(Table(), path)
    async with await trio.open_unix_socket(path) as stream:
        assert await roundtrip(stream, lookup("udbtest-alice")) is not None


async def test_a_socket_replaced_by_another_server_is_not_removed(tmp_path: Path) -> None:
    path = str(tmp_path / SERVICE)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_userdb, Table(), path)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as successor:
            successor.bind(path)
            nursery.cancel_scope.cancel()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


MEASURE = r"""
import json, socket, sys, time
path, count = sys.argv[1], int(sys.argv[2])
calls = [
    json.dumps({"method": "io.systemd.UserDatabase.GetUserRecord",
                "parameters": {key: value, "service": "io.activator.DynamicUser"}}).encode() + b"\0"
    for key, value in [("userName", "udbtest-alice"), ("uid", 61102)]
]
def ask(sock, request):
    sock.sendall(request)
    data = b""
    while not data.endswith(b"\0"):
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("closed")
        data += chunk
    return json.loads(data[:-1])["parameters"]["record"]["uid"]
start = time.perf_counter()
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect(path)
    one = [ask(sock, calls[i % 2]) for i in range(count)]
middle = time.perf_counter()
new = []
for i in range(count):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        new.append(ask(sock, calls[i % 2]))
end = time.perf_counter()
print(json.dumps({"answers": one + new, "one_connection": count / (middle - start),
                  "new_connections": count / (end - middle)}))
"""


async def test_many_lookups_from_another_process(
    private_server: tuple[str, Table, trio.Nursery],
) -> None:
    """2000 lookups over one connection, then 2000 on a new connection each, from a client
    process: every one answered right. The rates are printed (pytest -s), not asserted."""
    path, _, _ = private_server
    count = 2000
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-c", MEASURE, path, str(count)], capture_stdout=True
        )
    measured = json.loads(result.stdout)
    assert measured["answers"] == [61101, 61102] * count
    print(
        f"\nuserdb lookups/s: {measured['one_connection']:.0f} over one connection, "
        f"{measured['new_connections']:.0f} with a new connection each"
    )


# --- real clients through nss-systemd (root) ----------------------------------------------------


async def run(*argv: str) -> tuple[int, str]:
    """Exit status and output of a real client, within CLIENT_DEADLINE (a stall fails)."""
    with trio.fail_after(CLIENT_DEADLINE):
        result = await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
    return result.returncode, result.stdout.decode() + result.stderr.decode()


@pytest.fixture
def userdb_directory() -> Iterator[None]:
    """/run/systemd/userdb as it was: our socket gone, the directory removed if we made it."""
    existed = os.path.isdir(USERDB_DIRECTORY)
    assert not lexists(SOCKET_PATH), f"{SOCKET_PATH} exists: is an activator running?"
    try:
        yield
    finally:
        leftover = lexists(SOCKET_PATH)
        if leftover:
            os.unlink(SOCKET_PATH)
        if not existed:
            try:
                os.rmdir(USERDB_DIRECTORY)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise
        assert not leftover, f"{SOCKET_PATH} was left behind"


@pytest.fixture
async def nss_server(userdb_directory: None) -> AsyncIterator[Table]:
    """A server on the real userdb path with Alice and Bob, unknown to NSS before it starts."""
    for record in (ALICE, BOB):
        for database, key in [("passwd", record.name), ("passwd", str(record.uid)),
                              ("group", record.name), ("group", str(record.uid))]:  # fmt: skip
            status, output = await run("getent", database, key)
            assert status == 2, f"NSS already knows {database} {key}: {output}"
    table = Table.of(ALICE, BOB)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_userdb, table)
        yield table
        nursery.cancel_scope.cancel()


PASSWD_ALICE = "udbtest-alice:x:61101:61101:Dynamic User for echo@1.service:/:/usr/sbin/nologin"
PASSWD_BOB = "udbtest-bob:x:61102:61102:Dynamic User for waldo.service:/:/usr/sbin/nologin"


@pytest.mark.root
async def test_getent_id_and_ls_see_a_live_user_and_forget_it_when_gone(
    nss_server: Table, tmp_path: Path
) -> None:
    table = nss_server
    owned = tmp_path / "owned"
    owned.touch()
    os.chown(owned, ALICE.uid, ALICE.uid)

    assert await run("getent", "passwd", "udbtest-alice") == (0, PASSWD_ALICE + "\n")
    assert await run("getent", "passwd", "61101") == (0, PASSWD_ALICE + "\n")
    assert await run("getent", "group", "udbtest-alice") == (0, "udbtest-alice:x:61101:\n")
    assert await run("getent", "group", "61101") == (0, "udbtest-alice:x:61101:\n")
    assert await run("id", "udbtest-alice") == (
        0, "uid=61101(udbtest-alice) gid=61101(udbtest-alice) groups=61101(udbtest-alice)\n"
    )  # fmt: skip
    status, listing = await run("ls", "-l", str(owned))
    assert status == 0
    assert listing.split()[2:4] == ["udbtest-alice", "udbtest-alice"]
    status, everyone = await run("getent", "passwd")
    assert status == 0
    assert PASSWD_ALICE in everyone.splitlines()
    assert PASSWD_BOB in everyone.splitlines()
    status, groups = await run("getent", "group")
    assert "udbtest-alice:x:61101:" in groups.splitlines()

    table.remove(ALICE)  # the lease is released

    assert (await run("getent", "passwd", "udbtest-alice"))[0] == 2
    assert (await run("getent", "passwd", "61101"))[0] == 2
    assert (await run("getent", "group", "udbtest-alice"))[0] == 2
    assert (await run("getent", "group", "61101"))[0] == 2
    status, output = await run("id", "udbtest-alice")
    assert status == 1
    assert "no such user" in output
    status, listing = await run("ls", "-l", str(owned))
    assert listing.split()[2:4] == ["61101", "61101"]
    status, everyone = await run("getent", "passwd")
    assert "udbtest-alice" not in everyone
    assert "udbtest-bob:x:61102:" in everyone  # the other user is still there
    assert (await run("getent", "passwd", "udbtest-bob"))[0] == 0


@pytest.mark.root
async def test_a_silent_client_does_not_stall_nss_lookups(nss_server: Table) -> None:
    async with (
        await trio.open_unix_socket(SOCKET_PATH),  # connects, never sends
        await trio.open_unix_socket(SOCKET_PATH) as half,
    ):
        await half.send_all(lookup("udbtest-alice")[:10])  # begins a message, never ends it
        # run() fails the test if a lookup takes CLIENT_DEADLINE (nss-systemd would wait 45 s).
        answers: list[tuple[int, str]] = []

        async def look_up() -> None:
            answers.append(await run("getent", "passwd", "udbtest-bob"))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(look_up)
        assert answers == [(0, PASSWD_BOB + "\n")] * 20
        assert await run("getent", "passwd", "61102") == (0, PASSWD_BOB + "\n")


@pytest.mark.root
async def test_the_real_socket_is_removed_on_exit(userdb_directory: None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_userdb, Table.of(ALICE))
        info = os.stat(SOCKET_PATH)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o666
        assert (await run("getent", "passwd", "udbtest-alice"))[0] == 0
        nursery.cancel_scope.cancel()
    assert not lexists(SOCKET_PATH)
    assert (await run("getent", "passwd", "udbtest-alice"))[0] == 2
