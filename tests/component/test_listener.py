"""Listening sockets for real: bound on loopback and in tmp_path, reached by real clients.

Every socket a test makes is closed by the ``sockets`` fixture, every socket file lives under
``tmp_path``, and abstract names carry a random token. Ports are found free by binding port 0.
Tests that chown to another user, or drop a capability, are marked ``root``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given

from activator import values as v
from activator.listener import (
    IP_FREEBIND,
    IPV6_FREEBIND,
    ListenError,
    ListenSpec,
    bind,
    configure_connection,
    describe,
    inherited_sockets,
    matches,
    notify,
    peer_of,
    remove_socket_file,
    source_of,
    specs_of,
)
from activator.model import Listen, SocketUnit
from activator.plan import Peer
from activator.units import parse_unit_name
from tests import strategies

STREAM, DATAGRAM, SEQPACKET = v.SocketKind.STREAM, v.SocketKind.DATAGRAM, v.SocketKind.SEQPACKET
TIMEOUT = 5.0  # seconds any one socket call of a test may wait
REPO = Path(__file__).resolve().parents[2]


def unit_of(*lines: tuple[v.SocketKind, str], **fields: Any) -> SocketUnit:
    """``echo.socket`` with these ``Listen*=`` lines and fields."""
    listen = tuple(Listen(kind, v.parse_listen(kind, text)) for kind, text in lines)
    unit = SocketUnit(name=parse_unit_name("echo.socket"), listen=listen)
    return attrs.evolve(unit, **fields)


def spec_of(kind: v.SocketKind, text: str, **fields: Any) -> ListenSpec:
    """The one spec of ``echo.socket`` with ``kind=text`` and these fields."""
    (spec,) = specs_of(unit_of((kind, text), **fields))
    return spec


def free_port(family: int = socket.AF_INET6) -> int:
    """A port free for TCP and UDP on every address of both families, as far as one can tell."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        port: int = probe.getsockname()[1]
    return port


def abstract_name() -> str:
    return f"activator-test-lst-{uuid.uuid4().hex}"


class Sockets:
    """Sockets a test made, closed at its end."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()

    def keep(self, sock: socket.socket) -> socket.socket:
        self.stack.enter_context(sock)
        return sock

    def bind(self, spec: ListenSpec) -> socket.socket:
        return self.keep(bind(spec))

    def client(self, family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
        sock = self.keep(socket.socket(family, kind))
        sock.settimeout(TIMEOUT)
        return sock

    def connect(self, family: int, address: Any, kind: int = socket.SOCK_STREAM) -> socket.socket:
        sock = self.client(family, kind)
        sock.connect(address)
        return sock

    def accept(self, listener: socket.socket) -> socket.socket:
        listener.settimeout(TIMEOUT)
        conn, _ = listener.accept()
        listener.setblocking(False)
        return self.keep(conn)


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    made = Sockets()
    with made.stack:
        yield made


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def round_trip(sockets: Sockets, listener: socket.socket, family: int, address: Any) -> None:
    """A client connects to ``address`` and its bytes arrive on a connection of ``listener``."""
    client = sockets.connect(family, address)
    client.sendall(b"ping")
    conn = sockets.accept(listener)
    conn.settimeout(TIMEOUT)
    assert conn.recv(4) == b"ping"


# --- ListenSpec, pure -----------------------------------------------------------------------------


@given(strategies.sockets())
def test_specs_follow_the_listen_lines(unit: SocketUnit) -> None:
    specs = specs_of(unit)
    assert [spec.listen for spec in specs] == list(unit.listen)
    for spec in specs:
        assert spec.unit == unit.name.name
        assert spec.accept == unit.accept
        kind, _, text = describe(spec).partition("=")
        assert kind == spec.listen.kind.value
        assert v.parse_listen(spec.listen.kind, text) == spec.listen.address


@given(strategies.sockets())
def test_spec_equality_is_what_shapes_the_socket(unit: SocketUnit) -> None:
    """Changing a setting that does not apply to an address keeps its spec equal (the reload keeps
    the socket); changing one that applies makes it differ."""
    before = specs_of(unit)
    renamed = specs_of(attrs.evolve(unit, name=parse_unit_name("other.socket")))
    assert renamed == before
    assert [hash(s) for s in renamed] == [hash(s) for s in before]
    toggles: dict[str, Any] = {
        "socket_mode": unit.socket_mode ^ 0o1,
        "directory_mode": unit.directory_mode ^ 0o1,
        "no_delay": not unit.no_delay,
        "keep_alive": not unit.keep_alive,
        "reuse_port": not unit.reuse_port,
        "free_bind": not unit.free_bind,
    }
    for field, value in toggles.items():
        after = specs_of(attrs.evolve(unit, **{field: value}))
        for old, new in zip(before, after, strict=True):
            address, kind = old.listen.address, old.listen.kind
            path = isinstance(address, v.UnixListen)
            inet = isinstance(address, v.InetListen)
            applies = {
                "socket_mode": path,
                "directory_mode": path,
                "no_delay": inet and kind is STREAM,
                "keep_alive": inet and kind is STREAM,
                "reuse_port": inet,
                "free_bind": inet,
            }[field]
            assert (old != new) == applies, field
    toggled = specs_of(attrs.evolve(unit, accept=not unit.accept))
    assert all(old != new for old, new in zip(before, toggled, strict=True))


def test_spec_defaults_and_rounding() -> None:
    spec = spec_of(STREAM, "127.0.0.1:7007", defer_accept_sec=1)
    assert spec.backlog == 2**31 - 1  # Backlog= defaults to UINT_MAX; listen() takes an int
    assert spec.defer_accept_sec == 1_000_000  # whole seconds, rounded up, as the kernel takes
    assert spec == spec_of(STREAM, "127.0.0.1:7007", defer_accept_sec=1_000_000)
    assert spec != spec_of(STREAM, "127.0.0.1:7007", defer_accept_sec=1_000_001)
    assert spec_of(DATAGRAM, "127.0.0.1:7007", backlog=5).backlog == 0
    ipv4 = spec_of(STREAM, "127.0.0.1:7007", bind_ipv6_only=v.BindIPv6Only.BOTH)
    assert ipv4.bind_ipv6_only is v.BindIPv6Only.DEFAULT
    bare = spec_of(STREAM, "7007", bind_ipv6_only=v.BindIPv6Only.BOTH)
    assert bare.bind_ipv6_only is v.BindIPv6Only.BOTH
    assert describe(spec_of(STREAM, "[fe80::1%lo]:80")) == "ListenStream=[fe80::1]:80%lo"


# --- bind: IP sockets -----------------------------------------------------------------------------


def check_listening(sock: socket.socket) -> None:
    """What every stream socket bind() returns shares: listening, non-blocking, close-on-exec."""
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert not sock.getblocking()
    assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_tcp_ipv4(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    sock = sockets.bind(spec_of(STREAM, f"127.0.0.1:{port}"))
    assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
    assert sock.getsockname() == ("127.0.0.1", port)
    check_listening(sock)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1  # as systemd
    round_trip(sockets, sock, socket.AF_INET, ("127.0.0.1", port))


def test_tcp_ipv6_loopback(sockets: Sockets) -> None:
    port = free_port()
    sock = sockets.bind(spec_of(STREAM, f"[::1]:{port}"))
    assert sock.family == socket.AF_INET6
    assert sock.getsockname()[:2] == ("::1", port)
    check_listening(sock)
    round_trip(sockets, sock, socket.AF_INET6, ("::1", port))


def test_bare_port_both_serves_ipv4_and_ipv6(sockets: Sockets) -> None:
    port = free_port()
    sock = sockets.bind(spec_of(STREAM, str(port), bind_ipv6_only=v.BindIPv6Only.BOTH))
    assert sock.family == socket.AF_INET6
    assert sock.getsockname()[:2] == ("::", port)
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    round_trip(sockets, sock, socket.AF_INET, ("127.0.0.1", port))
    round_trip(sockets, sock, socket.AF_INET6, ("::1", port))


def test_bare_port_ipv6_only_refuses_ipv4(sockets: Sockets) -> None:
    port = free_port()
    sock = sockets.bind(spec_of(STREAM, str(port), bind_ipv6_only=v.BindIPv6Only.IPV6_ONLY))
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    round_trip(sockets, sock, socket.AF_INET6, ("::1", port))
    with pytest.raises(ConnectionRefusedError):
        sockets.connect(socket.AF_INET, ("127.0.0.1", port))


def test_bare_port_default_keeps_the_kernel_default(sockets: Sockets) -> None:
    port = free_port()
    sock = sockets.bind(spec_of(STREAM, str(port)))
    kernel = int(Path("/proc/sys/net/ipv6/bindv6only").read_text())
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == kernel


@pytest.mark.parametrize(
    ("host", "family", "freebind"),
    [
        ("127.0.0.1", socket.AF_INET, (socket.IPPROTO_IP, IP_FREEBIND)),
        ("[::1]", socket.AF_INET6, (socket.IPPROTO_IPV6, IPV6_FREEBIND)),
    ],
)
def test_tcp_options_are_set(
    sockets: Sockets, host: str, family: int, freebind: tuple[int, int]
) -> None:
    def options(sock: socket.socket) -> list[int]:
        return [
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT),
            sock.getsockopt(*freebind),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT),
        ]

    plain = sockets.bind(spec_of(STREAM, f"{host}:{free_port(family)}"))
    assert options(plain) == [0, 0, 0, 0, 0]
    fields = {
        "reuse_port": True,
        "free_bind": True,
        "keep_alive": True,
        "no_delay": True,
        "defer_accept_sec": 500_000,  # half a second: 1 s, rounded up as systemd
    }
    tuned = sockets.bind(spec_of(STREAM, f"{host}:{free_port(family)}", **fields))
    assert options(tuned) == [1, 1, 1, 1, 1]


def test_reuse_port_lets_two_sockets_share_a_port(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    spec = spec_of(STREAM, f"127.0.0.1:{port}", reuse_port=True)
    first, second = sockets.bind(spec), sockets.bind(spec)
    assert first.getsockname() == second.getsockname() == ("127.0.0.1", port)


def test_address_in_use_names_unit_and_address(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    spec = spec_of(STREAM, f"127.0.0.1:{port}")
    sock = sockets.bind(spec)
    before = open_fds()
    with pytest.raises(ListenError) as caught:
        bind(spec)
    assert str(caught.value) == (
        f"echo.socket: ListenStream=127.0.0.1:{port}: bind: Address already in use"
    )
    assert caught.value.errno == errno.EADDRINUSE
    assert caught.value.unit == "echo.socket"
    assert open_fds() == before  # the half-made socket was closed
    round_trip(sockets, sock, socket.AF_INET, ("127.0.0.1", port))  # the first one still serves


def test_free_bind_binds_an_address_the_host_does_not_have(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    address = f"203.0.113.7:{port}"  # TEST-NET-3: on no interface here, never reached
    with pytest.raises(ListenError) as caught:
        bind(spec_of(STREAM, address))
    assert str(caught.value) == (
        f"echo.socket: ListenStream={address}: bind: Cannot assign requested address"
    )
    sock = sockets.bind(spec_of(STREAM, address, free_bind=True))
    assert sock.getsockname() == ("203.0.113.7", port)


@pytest.mark.parametrize("scope", ["lo", str(socket.if_nametoindex("lo"))])
def test_ipv6_scope_is_the_interface(sockets: Sockets, scope: str) -> None:
    port = free_port()
    # A link-local address needs its interface; fe80::1 is not on lo, so FreeBind= lets it bind.
    spec = spec_of(STREAM, f"[fe80::1]:{port}%{scope}", free_bind=True)
    sock = sockets.bind(spec)
    assert sock.getsockname() == ("fe80::1", port, 0, socket.if_nametoindex("lo"))
    assert matches(sock, spec)


def test_unknown_interface_is_named() -> None:
    spec = spec_of(STREAM, "[fe80::1]:7007%nosuchif0")
    with pytest.raises(ListenError) as caught:
        bind(spec)
    assert str(caught.value) == (
        "echo.socket: ListenStream=[fe80::1]:7007%nosuchif0: no network interface 'nosuchif0'"
    )


def test_udp_does_not_listen(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    sock = sockets.bind(spec_of(DATAGRAM, f"127.0.0.1:{port}"))
    assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_DGRAM)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0  # see the module doc
    assert not sock.getblocking()
    client = sockets.client(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto(b"datagram", ("127.0.0.1", port))
    sock.settimeout(TIMEOUT)
    data, sender = sock.recvfrom(64)
    assert (data, sender) == (b"datagram", ("127.0.0.1", client.getsockname()[1]))


# --- bind: Unix sockets ---------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize(
    ("user", "group", "owner"),
    [
        (None, None, (0, 0)),
        ("nobody", None, (65534, 65534)),  # SocketUser= alone: the user's primary group
        (None, "daemon", (0, 1)),
        ("nobody", "daemon", (65534, 1)),
        ("65534", "1", (65534, 1)),
    ],
)
def test_unix_path_owner_and_modes(
    sockets: Sockets, tmp_path: Path, user: str | None, group: str | None, owner: tuple[int, int]
) -> None:
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o700)
    os.chmod(existing, 0o700)
    path = existing / "made" / "deeper" / "echo.sock"
    fields = {"socket_user": user, "socket_group": group, "socket_mode": 0o640}
    spec = spec_of(STREAM, str(path), directory_mode=0o751, **fields)
    old_umask = os.umask(0o077)  # the modes are the configured ones whatever the umask
    try:
        sock = sockets.bind(spec)
    finally:
        os.umask(old_umask)
    assert owner_and_mode(existing) == (0, 0, 0o700)  # only the missing parents are made
    assert owner_and_mode(path.parent.parent) == (0, 0, 0o751)
    assert owner_and_mode(path.parent) == (0, 0, 0o751)
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert owner_and_mode(path) == (*owner, 0o640)
    assert sock.getsockname() == str(path)
    check_listening(sock)
    round_trip(sockets, sock, socket.AF_UNIX, str(path))
    remove_socket_file(spec)
    assert not path.exists()


@pytest.mark.parametrize(
    ("field", "name", "reason"),
    [
        ("socket_user", "lst-no-such-user", "SocketUser='lst-no-such-user': no such user"),
        ("socket_user", "4000000000", "SocketUser='4000000000': no such user"),
        ("socket_group", "lst-no-such-group", "SocketGroup='lst-no-such-group': no such group"),
    ],
)
def test_unknown_owner_is_refused_before_anything_is_made(
    tmp_path: Path, field: str, name: str, reason: str
) -> None:
    path = tmp_path / "sub" / "echo.sock"
    with pytest.raises(ListenError) as caught:
        bind(spec_of(STREAM, str(path), **{field: name}))
    assert str(caught.value) == f"echo.socket: ListenStream={path}: {reason}"
    assert not path.parent.exists()


def test_stale_socket_file_is_replaced(sockets: Sockets, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    with socket.socket(socket.AF_UNIX) as earlier:  # an earlier run that did not clean up
        earlier.bind(str(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)
    with pytest.raises(ConnectionRefusedError):
        sockets.connect(socket.AF_UNIX, str(path))
    sock = sockets.bind(spec_of(STREAM, str(path)))
    round_trip(sockets, sock, socket.AF_UNIX, str(path))


def test_non_socket_at_the_path_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    path.write_text("precious")
    before = open_fds()
    with pytest.raises(ListenError) as caught:
        bind(spec_of(STREAM, str(path)))
    assert str(caught.value) == (
        f"echo.socket: ListenStream={path}: {path} exists and is a regular file, not a socket"
    )
    assert path.read_text() == "precious"
    assert open_fds() == before
    path.unlink()
    with socket.socket(socket.AF_UNIX) as target:
        target.bind(str(tmp_path / "target.sock"))
    path.symlink_to(tmp_path / "target.sock")  # a symlink, even to a socket, is not replaced
    with pytest.raises(ListenError, match="exists and is a symbolic link, not a socket"):
        bind(spec_of(STREAM, str(path)))
    assert path.is_symlink()


@pytest.mark.root
def test_failure_after_bind_removes_the_socket_file(tmp_path: Path) -> None:
    """Root without CAP_CHOWN cannot give the socket to nobody: the file bound must go again."""
    path = tmp_path / "echo.sock"
    code = (
        "import sys\n"
        "from activator import listener, values as v\n"
        "from activator.model import Listen, SocketUnit\n"
        "from activator.units import parse_unit_name\n"
        "unit = SocketUnit(name=parse_unit_name('echo.socket'), socket_user='nobody',\n"
        "    listen=(Listen(v.SocketKind.STREAM, v.UnixListen(sys.argv[1])),))\n"
        "try:\n"
        "    listener.bind(listener.specs_of(unit)[0])\n"
        "except listener.ListenError as e:\n"
        "    print(e)\n"
    )
    drop_chown = ["setpriv", "--bounding-set=-chown", "--inh-caps=-chown"]
    result = subprocess.run(
        [*drop_chown, sys.executable, "-c", code, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == (
        f"echo.socket: ListenStream={path}: chown {path}: Operation not permitted\n"
    )
    assert not path.exists()


def test_abstract_socket(sockets: Sockets) -> None:
    name = abstract_name()
    spec = spec_of(STREAM, f"@{name}")
    sock = sockets.bind(spec)
    assert sock.family == socket.AF_UNIX
    assert sock.getsockname() == b"\0" + name.encode()
    check_listening(sock)
    round_trip(sockets, sock, socket.AF_UNIX, b"\0" + name.encode())
    remove_socket_file(spec)  # nothing to remove; must not fail


def test_unix_datagram(sockets: Sockets, tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    sock = sockets.bind(spec_of(DATAGRAM, str(path)))
    assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_DGRAM)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    assert stat.S_IMODE(path.lstat().st_mode) == 0o666  # SocketMode= default
    client = sockets.client(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.sendto(b"one message", str(path))
    sock.settimeout(TIMEOUT)
    assert sock.recv(64) == b"one message"


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_seqpacket_keeps_message_boundaries(sockets: Sockets, tmp_path: Path, where: str) -> None:
    text = str(tmp_path / "seq.sock") if where == "path" else f"@{abstract_name()}"
    address: str | bytes = text if where == "path" else b"\0" + text[1:].encode()
    sock = sockets.bind(spec_of(SEQPACKET, text))
    assert sock.type == socket.SOCK_SEQPACKET
    check_listening(sock)
    client = sockets.connect(socket.AF_UNIX, address, socket.SOCK_SEQPACKET)
    client.sendall(b"first")
    client.sendall(b"second")
    conn = sockets.accept(sock)
    conn.settimeout(TIMEOUT)
    assert [conn.recv(64), conn.recv(64)] == [b"first", b"second"]


def test_remove_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    spec = spec_of(STREAM, str(path))
    remove_socket_file(spec)  # nothing there: fine
    bind(spec).close()
    assert stat.S_ISSOCK(path.lstat().st_mode)
    remove_socket_file(spec)
    assert not path.exists()
    path.write_text("not ours")
    remove_socket_file(spec)
    assert path.read_text() == "not ours"
    remove_socket_file(spec_of(STREAM, "127.0.0.1:7007"))  # not a file socket: nothing happens


# --- matches --------------------------------------------------------------------------------------


def kinds_to_match(tmp_path: Path) -> list[ListenSpec]:
    """One spec of every kind of socket, on free ports and fresh names."""
    v4, v6, bare, udp = (free_port() for _ in range(4))
    return [
        spec_of(STREAM, f"127.0.0.1:{v4}"),
        spec_of(STREAM, f"[::1]:{v6}"),
        spec_of(STREAM, str(bare), bind_ipv6_only=v.BindIPv6Only.BOTH),
        spec_of(DATAGRAM, f"127.0.0.1:{udp}"),
        spec_of(STREAM, str(tmp_path / "stream.sock")),
        spec_of(DATAGRAM, str(tmp_path / "dgram.sock")),
        spec_of(SEQPACKET, str(tmp_path / "seq.sock")),
        spec_of(STREAM, f"@{abstract_name()}"),
        spec_of(SEQPACKET, f"@{abstract_name()}"),
    ]


def test_matches_its_own_socket_and_no_other(sockets: Sockets, tmp_path: Path) -> None:
    specs = kinds_to_match(tmp_path)
    bound = [sockets.bind(spec) for spec in specs]
    for i, spec in enumerate(specs):
        for j, sock in enumerate(bound):
            assert matches(sock, spec) == (i == j), (describe(spec), sock)


def test_matches_compares_the_details(sockets: Sockets, tmp_path: Path) -> None:
    port = free_port()
    both = spec_of(STREAM, str(port), bind_ipv6_only=v.BindIPv6Only.BOTH)
    dual = sockets.bind(both)
    assert matches(dual, spec_of(STREAM, str(port)))  # default: whatever IPV6_V6ONLY is
    assert not matches(dual, spec_of(STREAM, str(port), bind_ipv6_only=v.BindIPv6Only.IPV6_ONLY))
    assert not matches(dual, spec_of(STREAM, str(port + 1 if port < 65535 else port - 1)))
    assert not matches(dual, spec_of(STREAM, f"[::1]:{port}"))
    assert not matches(dual, spec_of(DATAGRAM, str(port)))
    assert not matches(dual, spec_of(STREAM, f"127.0.0.1:{port}"))
    # A bare port matches 0.0.0.0 too: a host without IPv6 binds that.
    v4_port = free_port(socket.AF_INET)
    anywhere = sockets.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    anywhere.bind(("0.0.0.0", v4_port))
    assert not matches(anywhere, spec_of(STREAM, str(v4_port)))  # not listening yet
    anywhere.listen()
    assert matches(anywhere, spec_of(STREAM, str(v4_port)))
    assert not matches(anywhere, spec_of(STREAM, f"127.0.0.1:{v4_port}"))
    # Unix: another path, another name, a stream socket for a seqpacket spec.
    path = tmp_path / "a.sock"
    unix = sockets.bind(spec_of(STREAM, str(path)))
    assert not matches(unix, spec_of(STREAM, str(tmp_path / "b.sock")))
    assert not matches(unix, spec_of(SEQPACKET, str(path)))
    assert not matches(unix, spec_of(STREAM, f"@{abstract_name()}"))
    # Sockets of another kind, or closed, never match and never raise.
    left, right = socket.socketpair()
    with left, right:
        assert not matches(left, spec_of(STREAM, str(path)))
    netlink = sockets.keep(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
    assert not matches(netlink, both)
    closed = bind(spec_of(STREAM, f"127.0.0.1:{free_port(socket.AF_INET)}"))
    closed.close()
    assert not matches(closed, both)


# --- inherited_sockets ----------------------------------------------------------------------------

CHILD = r"""
import json, logging, os, sys
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")
from activator.listener import inherited_sockets
environ = dict(os.environ)
found = inherited_sockets(environ, os.getpid())
report = {"left": sorted(k for k in environ if k.startswith("LISTEN_")), "sockets": []}
for sock, name in found:
    entry = {"fd": sock.fileno(), "name": name, "type": int(sock.type),
             "inheritable": sock.get_inheritable(), "blocking": sock.getblocking()}
    if sock.type == 1 and sock.family == 2:  # the TCP listener: serve the waiting client
        sock.settimeout(5)
        conn, _ = sock.accept()
        conn.sendall(name.encode())
        conn.close()
    report["sockets"].append(entry)
    sock.close()
try:
    os.fstat(4)
    report["fd4"] = "open"
except OSError:
    report["fd4"] = "closed"
print(json.dumps(report))
"""


def test_inherited_sockets_in_a_socket_activated_child(sockets: Sockets, tmp_path: Path) -> None:
    """A real child gets a TCP listener, a pipe and a Unix datagram socket as fds 3, 4, 5 with
    ``LISTEN_PID`` set to its own PID by the shell that execs it, as a service manager does."""
    port = free_port(socket.AF_INET)
    tcp = sockets.bind(spec_of(STREAM, f"127.0.0.1:{port}"))
    dgram = sockets.bind(spec_of(DATAGRAM, str(tmp_path / "dgram.sock")))
    read_end, write_end = os.pipe()
    # Far above 3..5, so the shell's moves cannot overwrite one another (bash: dash takes
    # single-digit descriptors only).
    high: list[int] = []
    try:
        high.extend(
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
            for fd in (tcp.fileno(), read_end, dgram.fileno())
        )
        client = sockets.connect(socket.AF_INET, ("127.0.0.1", port))  # waits in the backlog
        shell = (
            'eval "exec 3<&$1 4<&$2 5<&$3 $1<&- $2<&- $3<&-"; '
            'LISTEN_PID=$$; export LISTEN_PID; exec "$4" -c "$5"'
        )
        env = {**os.environ, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:junk:"}
        env.pop("LISTEN_PID", None)
        result = subprocess.run(
            ["bash", "-c", shell, "bash", *map(str, high), sys.executable, CHILD],
            pass_fds=high,
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        for fd in (*high, read_end, write_end):
            os.close(fd)
    report = json.loads(result.stdout)
    assert report == {
        "left": [],
        "sockets": [
            {"fd": 3, "name": "web", "type": 1, "inheritable": False, "blocking": False},
            {"fd": 5, "name": None, "type": 2, "inheritable": False, "blocking": False},
        ],
        "fd4": "closed",
    }
    assert "WARNING inherited fd 4 (junk) is not a socket: closed" in result.stderr
    assert client.recv(16) == b"web"


@pytest.mark.parametrize(
    "environ",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"},
        {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"},
        {"LISTEN_PID": "{pid}"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "99999999999"},
        {"LISTEN_PID": " {pid}", "LISTEN_FDS": "1"},
    ],
)
def test_inherited_sockets_takes_nothing_not_meant_for_us(environ: dict[str, str]) -> None:
    environ = {k: text.format(pid=os.getpid()) for k, text in environ.items()}
    environ["HOME"] = "/root"
    before = open_fds()
    assert inherited_sockets(environ, os.getpid()) == []
    assert environ == {"HOME": "/root"}  # the LISTEN_ variables are gone in every case
    assert open_fds() == before


# --- notify ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["path", "abstract"])
def test_notify_sends_one_datagram(sockets: Sockets, tmp_path: Path, where: str) -> None:
    receiver = sockets.keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    if where == "path":
        target = str(tmp_path / "notify")
        receiver.bind(target)
    else:
        name = abstract_name()
        target = f"@{name}"
        receiver.bind(b"\0" + name.encode())
    assert notify("READY=1\nSTATUS=serving 3 sockets", {"NOTIFY_SOCKET": target})
    receiver.settimeout(TIMEOUT)
    assert receiver.recv(256) == b"READY=1\nSTATUS=serving 3 sockets"


def test_notify_without_a_socket(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": ""})
    caplog.set_level(logging.WARNING, logger="activator.listener")
    missing = str(tmp_path / "gone")
    assert not notify("READY=1", {"NOTIFY_SOCKET": missing})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})
    assert [r.getMessage() for r in caplog.records] == [
        f"sd_notify to NOTIFY_SOCKET={missing!r} failed: No such file or directory",
        "NOTIFY_SOCKET='relative/path': must be an absolute path or @name",
    ]


# --- peer_of, source_of, configure_connection -----------------------------------------------------


def test_peer_of_ipv4(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    listener = sockets.bind(spec_of(STREAM, f"127.0.0.1:{port}"))
    client = sockets.connect(socket.AF_INET, ("127.0.0.1", port))
    peer = peer_of(sockets.accept(listener))
    assert peer == Peer("TCP", "127.0.0.1", client.getsockname()[1], "127.0.0.1", port)
    assert source_of(peer) == "127.0.0.1"


def test_peer_of_ipv6(sockets: Sockets) -> None:
    port = free_port()
    listener = sockets.bind(spec_of(STREAM, f"[::1]:{port}"))
    client = sockets.connect(socket.AF_INET6, ("::1", port))
    peer = peer_of(sockets.accept(listener))
    assert peer == Peer("TCP6", "::1", client.getsockname()[1], "::1", port)
    assert source_of(peer) == "::1"


def test_peer_of_ipv4_on_a_dual_stack_socket(sockets: Sockets) -> None:
    port = free_port()
    listener = sockets.bind(spec_of(STREAM, str(port), bind_ipv6_only=v.BindIPv6Only.BOTH))
    client = sockets.connect(socket.AF_INET, ("127.0.0.1", port))
    conn = sockets.accept(listener)
    assert conn.getpeername()[0] == "::ffff:127.0.0.1"  # what the kernel says...
    peer = peer_of(conn)  # ...and what the handler sees
    assert peer == Peer("TCP", "127.0.0.1", client.getsockname()[1], "127.0.0.1", port)
    assert source_of(peer) == "127.0.0.1"


def test_peer_of_unix(sockets: Sockets, tmp_path: Path) -> None:
    path = tmp_path / "server.sock"
    listener = sockets.bind(spec_of(STREAM, str(path)))
    sockets.connect(socket.AF_UNIX, str(path))  # an unnamed client first
    named = sockets.client(socket.AF_UNIX)
    named.bind(str(tmp_path / "client.sock"))
    named.connect(str(path))
    us = Peer("UNIX", uid=os.getuid(), gid=os.getgid(), pid=os.getpid())  # SO_PEERCRED
    first = peer_of(sockets.accept(listener))
    assert first == attrs.evolve(us, remote_addr=None, local_addr=str(path))
    second = peer_of(sockets.accept(listener))
    assert second == attrs.evolve(
        us, remote_addr=str(tmp_path / "client.sock"), local_addr=str(path)
    )
    assert source_of(first) == os.getuid()
    name = abstract_name()
    abstract = sockets.bind(spec_of(STREAM, f"@{name}"))
    sockets.connect(socket.AF_UNIX, b"\0" + name.encode())
    assert peer_of(sockets.accept(abstract)) == attrs.evolve(us, local_addr=f"@{name}")


def test_peer_of_a_connection_already_reset(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    listener = sockets.bind(spec_of(STREAM, f"127.0.0.1:{port}"))
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # linger 0: a reset, not a FIN
    conn = sockets.accept(listener)
    conn.settimeout(TIMEOUT)
    with pytest.raises(ConnectionResetError):
        conn.recv(1)
    peer = peer_of(conn)
    assert (peer.proto, peer.remote_addr, peer.remote_port) == ("TCP", None, None)
    assert source_of(peer) == ""


def test_source_of() -> None:
    assert source_of(Peer("TCP6", remote_addr="2001:db8::1")) == "2001:db8::1"
    assert source_of(Peer("UNIX", uid=61184)) == 61184
    assert source_of(Peer("UNIX")) == -1


def test_configure_connection_sets_keepalive_and_nodelay(sockets: Sockets) -> None:
    port = free_port(socket.AF_INET)
    plain = spec_of(STREAM, f"127.0.0.1:{port}")
    listener = sockets.bind(plain)  # an inherited listener may lack the options
    sockets.connect(socket.AF_INET, ("127.0.0.1", port))
    sockets.connect(socket.AF_INET, ("127.0.0.1", port))
    first, second = sockets.accept(listener), sockets.accept(listener)

    def options(conn: socket.socket) -> tuple[int, int]:
        return (
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        )

    configure_connection(first, plain)
    assert options(first) == (0, 0)
    configure_connection(second, attrs.evolve(plain, keep_alive=True, no_delay=True))
    assert options(second) == (1, 1)
    left, right = socket.socketpair()
    with left, right:  # not TCP: nothing to set, nothing raised
        configure_connection(left, attrs.evolve(plain, keep_alive=True, no_delay=True))
