"""Listening sockets: make them from a socket unit, recognise inherited ones, read their peers.

Everything here is plain blocking ``socket``/``os`` code. The manager calls it from trio, in worker
threads where a call may block (NSS lookups for ``SocketUser=``, ``mkdir``, ``chown``); nothing
here imports trio.

Rule 1: :func:`bind` returns a socket that is bound, listening (stream and seqpacket), non-blocking
and close-on-exec, or it raises :class:`ListenError` and leaves nothing half made: the socket is
closed and a socket file it created is removed. The message names the unit, the address, the step
and the reason: ``echo.socket: ListenStream=127.0.0.1:7007: bind: Address already in use``.

Rule 2: a Unix socket path is only ever replaced when what is there is a socket (a stale one from
an earlier run); a regular file, a directory or a symlink at the path is an error and stays. The
new socket file is chowned and chmodded through an ``O_PATH | O_NOFOLLOW`` descriptor checked to
be a socket, so a symlink swapped in under a world-writable directory (``/tmp``) cannot make root
chown or chmod another file. Both happen before ``listen()``: until then every ``connect()`` is
refused, so no client gets in while the owner or mode is not yet the configured one.

Rule 3: two :class:`ListenSpec` are equal exactly when the socket made for one serves the other
unchanged; a reload compares them to keep a socket's descriptor (DESIGN.md, invariant 6). So
:func:`specs_of` puts the defaults into the fields that do not apply to an address (``SocketMode=``
of a TCP socket, ``NoDelay=`` of a Unix one...): changing those keeps the socket.

Theory of operation: :func:`bind` follows systemd 252's ``socket_address_listen()``
(src/shared/socket-netlink.c), ``socket_apply_socket_options()`` and ``socket_chown()``
(src/core/socket.c): make the socket; set ``IPV6_V6ONLY`` from ``BindIPv6Only=`` unless it is
``default``, then ``SO_REUSEPORT``, ``IP_FREEBIND``/``IPV6_FREEBIND`` and the TCP options; make
the missing parents of a Unix path and remove a stale socket there; ``bind()``; give the socket
file its owner (``SocketUser=`` alone also gives the user's primary group, as systemd) and mode;
``listen()``. Two differences, both narrower: systemd sets ``SO_REUSEADDR`` on every socket, we
on stream sockets only (on UDP it lets a second socket bind the same port and take datagrams);
and after ``EADDRINUSE`` systemd unlinks whatever is at a Unix path, we only a socket (Rule 2).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import logging
import os
import pwd
import re
import resource
import socket
import stat
import struct
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Final, TypeAlias

import attrs

from activator import values as v
from activator.errors import ActivatorError
from activator.model import Listen, SocketUnit
from activator.plan import Peer
from activator.units import UnitName

logger = logging.getLogger(__name__)

# Not in Python's socket module: <linux/in.h> IP_FREEBIND and <linux/in6.h> IPV6_FREEBIND (4.15).
IP_FREEBIND: Final = 15
IPV6_FREEBIND: Final = 78

_BACKLOG_MAX: Final = 2**31 - 1  # listen() takes an int; the kernel caps it at somaxconn anyway
_SECOND: Final = 1_000_000  # model timespans are microseconds
_UCRED: Final = struct.Struct("iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_NO_ID: Final = 0xFFFFFFFF  # SO_PEERCRED's uid and gid when the peer has no credentials
_LISTEN_FDS_START: Final = 3  # SD_LISTEN_FDS_START
_DECIMAL: Final = re.compile(r"[0-9]+")

_TYPES: Final = {
    v.SocketKind.STREAM: socket.SOCK_STREAM,
    v.SocketKind.DATAGRAM: socket.SOCK_DGRAM,
    v.SocketKind.SEQPACKET: socket.SOCK_SEQPACKET,
}
_FILE_KINDS: Final = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
#: A socket unit with every default: what a field that does not apply to an address is set to.
_UNIT_DEFAULTS: Final = SocketUnit(name=UnitName("default", None, "socket"))

_SockAddr: TypeAlias = str | bytes | tuple[str, int] | tuple[str, int, int, int]


class ListenError(ActivatorError):
    """A listening socket could not be made.

    The message names the unit, the address, the step and the reason:
    ``echo.socket: ListenStream=127.0.0.1:7007: bind: Address already in use``.

    Attributes:
        unit: the socket unit's name.
        errno: the errno of the failed call, or None when no system call failed (an unknown
            ``SocketUser=``, a file in the way).
    """

    def __init__(self, message: str, *, unit: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.unit = unit
        self.errno = errno


@attrs.frozen
class ListenSpec:
    """One listening socket as configured: what a reload compares.

    Two specs are equal exactly when the socket made for one can serve the other unchanged (so a
    reload keeps its descriptor); the unit name is not compared. :func:`specs_of` fills the fields
    that do not apply to the address with their defaults (module docstring, Rule 3).

    Attributes:
        unit: the socket unit's name, for messages only.
        listen: the kind (``ListenStream=``...) and the address.
        backlog: the ``listen()`` backlog, ``Backlog=`` capped at ``2**31 - 1``; 0 for datagram
            sockets, which do not listen.
        bind_ipv6_only: ``BindIPv6Only=``, for a bare port or an IPv6 address.
        reuse_port, free_bind: ``ReusePort=``, ``FreeBind=``, for IP sockets.
        keep_alive, no_delay: ``KeepAlive=``, ``NoDelay=``, for TCP sockets.
        defer_accept_sec: ``DeferAcceptSec=`` in microseconds, for TCP sockets; the kernel takes
            whole seconds, so :func:`specs_of` rounds it up to one.
        socket_user, socket_group: ``SocketUser=``, ``SocketGroup=`` (names or numbers), for
            Unix socket paths.
        socket_mode, directory_mode: ``SocketMode=``, ``DirectoryMode=``, for Unix socket paths.
        accept: ``Accept=``; the socket is the same either way, but how it is served is not.
    """

    unit: str = attrs.field(eq=False)
    listen: Listen
    backlog: int
    bind_ipv6_only: v.BindIPv6Only
    reuse_port: bool
    free_bind: bool
    keep_alive: bool
    no_delay: bool
    defer_accept_sec: int
    socket_user: str | None
    socket_group: str | None
    socket_mode: int
    directory_mode: int
    accept: bool


def specs_of(socket: SocketUnit) -> tuple[ListenSpec, ...]:
    """The listening sockets of a socket unit, one per ``Listen*=`` line, in order."""
    return tuple(_spec_of(socket, listen) for listen in socket.listen)


def _spec_of(unit: SocketUnit, listen: Listen) -> ListenSpec:
    address = listen.address
    inet = isinstance(address, v.InetListen)
    ipv6 = isinstance(address, v.InetListen) and address.family != 4
    tcp = inet and listen.kind is v.SocketKind.STREAM
    path = isinstance(address, v.UnixListen)
    defer = -(-unit.defer_accept_sec // _SECOND) * _SECOND  # what the kernel gets: whole seconds
    return ListenSpec(
        unit=unit.name.name,
        listen=listen,
        backlog=0 if listen.kind is v.SocketKind.DATAGRAM else min(unit.backlog, _BACKLOG_MAX),
        bind_ipv6_only=unit.bind_ipv6_only if ipv6 else _UNIT_DEFAULTS.bind_ipv6_only,
        reuse_port=inet and unit.reuse_port,
        free_bind=inet and unit.free_bind,
        keep_alive=tcp and unit.keep_alive,
        no_delay=tcp and unit.no_delay,
        defer_accept_sec=defer if tcp else 0,
        socket_user=unit.socket_user if path else None,
        socket_group=unit.socket_group if path else None,
        socket_mode=unit.socket_mode if path else _UNIT_DEFAULTS.socket_mode,
        directory_mode=unit.directory_mode if path else _UNIT_DEFAULTS.directory_mode,
        accept=unit.accept,
    )


def describe(spec: ListenSpec) -> str:
    """The spec's line as systemd spells it: ``ListenStream=127.0.0.1:7007``."""
    return f"{spec.listen.kind.value}={v.render_listen(spec.listen.address)}"


# --- Making a listening socket ------------------------------------------------------------------


def _reason(error: OSError) -> str:
    """``Address already in use``: the errno's text, without Python's ``[Errno 98]``."""
    return os.strerror(error.errno) if error.errno is not None else str(error)


def _error(spec: ListenSpec, what: str, error: OSError) -> ListenError:
    message = f"{spec.unit}: {describe(spec)}: {what}: {_reason(error)}"
    return ListenError(message, unit=spec.unit, errno=error.errno)


@contextlib.contextmanager
def _step(spec: ListenSpec, what: str) -> Iterator[None]:
    """Turn an ``OSError`` of the block into a :class:`ListenError` naming ``what`` failed."""
    try:
        yield
    except OSError as e:
        raise _error(spec, what, e) from e


def bind(spec: ListenSpec) -> socket.socket:
    """Make, configure and bind the socket of ``spec``; ``listen()`` for stream and seqpacket.

    Blocking: call it from a worker thread. A bare port is ``[::]`` (``IPV6_V6ONLY`` from
    ``BindIPv6Only=``), or ``0.0.0.0`` on a host without IPv6; a Unix path gets its missing parent
    directories (``DirectoryMode=``), replaces a stale socket, and gets its owner and mode; an
    abstract name is bound with its leading NUL.

    Returns:
        The socket, bound, listening where its kind listens, non-blocking and close-on-exec.

    Raises:
        ListenError: any step failed, or a ``SocketUser=``/``SocketGroup=`` is unknown, or a
            non-socket is at the Unix path. The half-made socket is closed, and a socket file it
            made removed.
    """
    address = spec.listen.address
    owner = _owner(spec) if isinstance(address, v.UnixListen) else (-1, -1)
    sock, sockaddr = _open(spec)
    made: str | None = None
    try:
        _set_options(spec, sock)
        if isinstance(address, v.UnixListen):
            _prepare_path(spec, address.path)
        with _step(spec, "bind"):
            sock.bind(sockaddr)
        if isinstance(address, v.UnixListen):
            made = address.path
            _set_owner_and_mode(spec, address.path, owner)
        if spec.listen.kind is not v.SocketKind.DATAGRAM:
            with _step(spec, "listen"):
                sock.listen(min(spec.backlog, _BACKLOG_MAX))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        if made is not None:
            _remove_socket(made)
        raise
    return sock


def _open(spec: ListenSpec) -> tuple[socket.socket, _SockAddr]:
    """A new socket of the spec's family and type (close-on-exec, as Python makes every socket),
    and the address to bind it to."""
    address = spec.listen.address
    kind = _TYPES[spec.listen.kind]
    with _step(spec, "socket"):
        if isinstance(address, v.UnixListen):
            return socket.socket(socket.AF_UNIX, kind), address.path
        if isinstance(address, v.AbstractListen):
            return socket.socket(socket.AF_UNIX, kind), _abstract(address.name)
        if address.family == 4:
            return socket.socket(socket.AF_INET, kind), (address.host or "", address.port)
        if address.host is None:
            # A bare port: [::], or 0.0.0.0 on a host without IPv6 (socket_address_parse()).
            try:
                return socket.socket(socket.AF_INET6, kind), ("::", address.port, 0, 0)
            except OSError as e:
                if e.errno != errno.EAFNOSUPPORT:
                    raise
            return socket.socket(socket.AF_INET, kind), ("0.0.0.0", address.port)
    host, _, scope = address.host.partition("%")
    scope_id = 0
    if scope:
        try:
            scope_id = _scope_index(scope)
        except OSError:
            msg = f"{spec.unit}: {describe(spec)}: no network interface {scope!r}"
            raise ListenError(msg, unit=spec.unit) from None
    with _step(spec, "socket"):
        return socket.socket(socket.AF_INET6, kind), (host, address.port, 0, scope_id)


def _scope_index(scope: str) -> int:
    """The interface index of an IPv6 scope: a number, or a name (``OSError`` if unknown)."""
    return int(scope) if _DECIMAL.fullmatch(scope) else socket.if_nametoindex(scope)


def _abstract(name: str) -> bytes:
    return b"\0" + name.encode("utf-8", "surrogateescape")


def _set_options(spec: ListenSpec, sock: socket.socket) -> None:
    """The options that must be set before ``bind()`` (IPV6_V6ONLY, SO_REUSE*, *_FREEBIND), and
    the TCP ones, which accepted connections inherit."""

    def option(level: int, name: int, value: int, what: str) -> None:
        with _step(spec, f"setsockopt {what}"):
            sock.setsockopt(level, name, value)

    stream = spec.listen.kind is v.SocketKind.STREAM
    family = sock.family
    if family == socket.AF_INET6 and spec.bind_ipv6_only is not v.BindIPv6Only.DEFAULT:
        only = int(spec.bind_ipv6_only is v.BindIPv6Only.IPV6_ONLY)
        option(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, only, "IPV6_V6ONLY")
    if stream:
        option(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1, "SO_REUSEADDR")
    if family not in (socket.AF_INET, socket.AF_INET6):
        return
    if spec.reuse_port:
        option(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1, "SO_REUSEPORT")
    if spec.free_bind and family == socket.AF_INET6:
        option(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1, "IPV6_FREEBIND")
    elif spec.free_bind:
        option(socket.IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND")
    if not stream:
        return
    if spec.keep_alive:
        option(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1, "SO_KEEPALIVE")
    if spec.no_delay:
        option(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1, "TCP_NODELAY")
    if spec.defer_accept_sec > 0:
        seconds = min(spec.defer_accept_sec // _SECOND, _BACKLOG_MAX)  # whole: see _spec_of
        option(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, seconds, "TCP_DEFER_ACCEPT")


def _owner(spec: ListenSpec) -> tuple[int, int]:
    """``SocketUser=`` and ``SocketGroup=`` as ``(uid, gid)``, -1 for "unchanged".

    As systemd's get_user_creds(): a number must name a user too, and the user's primary group
    is the group unless ``SocketGroup=`` is set.
    """
    uid = gid = -1
    if spec.socket_user is not None:
        name = spec.socket_user
        try:
            user = pwd.getpwuid(int(name)) if _DECIMAL.fullmatch(name) else pwd.getpwnam(name)
        except (KeyError, OverflowError):
            msg = f"{spec.unit}: {describe(spec)}: SocketUser={name!r}: no such user"
            raise ListenError(msg, unit=spec.unit) from None
        uid, gid = user.pw_uid, user.pw_gid
    if spec.socket_group is not None:
        name = spec.socket_group
        try:
            group = grp.getgrgid(int(name)) if _DECIMAL.fullmatch(name) else grp.getgrnam(name)
        except (KeyError, OverflowError):
            msg = f"{spec.unit}: {describe(spec)}: SocketGroup={name!r}: no such group"
            raise ListenError(msg, unit=spec.unit) from None
        gid = group.gr_gid
    return uid, gid


def _prepare_path(spec: ListenSpec, path: str) -> None:
    """Make the missing parents of ``path`` with ``DirectoryMode=`` and remove a stale socket."""
    missing: list[str] = []
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # ends at "/" at the latest; the path is absolute
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        with _step(spec, f"mkdir {directory}"):
            try:
                os.mkdir(directory, spec.directory_mode)
            except FileExistsError:
                continue  # made by someone else meanwhile: not ours to chmod
            os.chmod(directory, spec.directory_mode)  # mkdir() applied the umask
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _error(spec, f"stat {path}", e) from e
    if not stat.S_ISSOCK(st.st_mode):
        what = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a socket")
        msg = f"{spec.unit}: {describe(spec)}: {path} exists and is {what}, not a socket"
        raise ListenError(msg, unit=spec.unit)
    with _step(spec, f"unlink stale socket {path}"), contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _set_owner_and_mode(spec: ListenSpec, path: str, owner: tuple[int, int]) -> None:
    """chown and chmod the socket file just bound, never through a symlink (Rule 2)."""
    with _step(spec, f"open {path}"):
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with _step(spec, f"stat {path}"):
            st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            msg = f"{spec.unit}: {describe(spec)}: {path} was replaced after bind"
            raise ListenError(msg, unit=spec.unit)
        # fchown() and fchmod() refuse an O_PATH descriptor; its /proc link reaches the inode.
        magic = f"/proc/self/fd/{fd}"
        if owner != (-1, -1):
            with _step(spec, f"chown {path}"):
                os.chown(magic, *owner)
        with _step(spec, f"chmod {path}"):
            os.chmod(magic, spec.socket_mode)
    finally:
        os.close(fd)


def _remove_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket; nothing otherwise; never raises."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def remove_socket_file(spec: ListenSpec) -> None:
    """``RemoveOnStop=``: unlink the Unix path if it is (still) a socket; never raises."""
    if isinstance(spec.listen.address, v.UnixListen):
        _remove_socket(spec.listen.address.path)


# --- Inherited sockets --------------------------------------------------------------------------


def matches(sock: socket.socket, spec: ListenSpec) -> bool:
    """Whether an inherited socket is the one ``spec`` describes.

    Same family, type and bound address (a bare port: ``[::]`` or ``0.0.0.0`` with that port),
    ``IPV6_V6ONLY`` as ``BindIPv6Only=`` asks unless that is ``default``, and listening for stream
    and seqpacket. Never raises: a socket of another kind, or a closed one, does not match.
    """
    try:
        return _matches(sock, spec)
    except (OSError, ValueError):
        return False


def _matches(sock: socket.socket, spec: ListenSpec) -> bool:
    kind = spec.listen.kind
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != _TYPES[kind]:
        return False
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0
    if kind is not v.SocketKind.DATAGRAM and not listening:
        return False
    family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    address = spec.listen.address
    if isinstance(address, v.UnixListen | v.AbstractListen):
        if family != socket.AF_UNIX:
            return False
        name = sock.getsockname()
        if isinstance(address, v.UnixListen):
            return isinstance(name, str) and name == address.path
        return isinstance(name, bytes) and name == _abstract(address.name)
    if family == socket.AF_INET6:
        if address.family == 4:
            return False
        if spec.bind_ipv6_only is not v.BindIPv6Only.DEFAULT:
            only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) != 0
            if only != (spec.bind_ipv6_only is v.BindIPv6Only.IPV6_ONLY):
                return False
        host, port, _flow, scope_id = sock.getsockname()
    elif family == socket.AF_INET:
        if address.family == 6:
            return False
        (host, port), scope_id = sock.getsockname(), 0
    else:
        return False
    ip = ipaddress.ip_address(host)
    if port != address.port:
        return False
    if address.host is None:
        return ip.is_unspecified
    text, _, scope = address.host.partition("%")
    if ip != ipaddress.ip_address(text):
        return False
    # The kernel keeps a scope only for addresses that need one (link-local, and multicast of
    # link or interface scope); for others it reports 0 whatever was bound.
    needs_scope = isinstance(ip, ipaddress.IPv6Address) and (
        ip.is_link_local or (ip.is_multicast and (ip.packed[1] & 0x0F) in (1, 2))
    )
    return not needs_scope or scope_id == (_scope_index(scope) if scope else 0)


def inherited_sockets(
    environ: MutableMapping[str, str], pid: int
) -> list[tuple[socket.socket, str | None]]:
    """The sockets passed to this process by socket activation, with their names.

    As systemd's ``sd_listen_fds_with_names(unset_environment=true)``: when ``LISTEN_PID`` is
    ``pid``, the ``LISTEN_FDS`` descriptors from 3 up become sockets, close-on-exec and
    non-blocking, each with its ``LISTEN_FDNAMES`` entry (None when there is none). A descriptor
    that is not a socket is closed, skipped and logged. ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` are removed from ``environ`` in every case, so no child inherits them.

    Args:
        environ: the environment to read and clean (``os.environ`` in the daemon).
        pid: this process's PID.

    Returns:
        The sockets in descriptor order, or ``[]`` when ``LISTEN_PID`` is absent or another PID.
    """
    listen_pid = environ.pop("LISTEN_PID", None)
    listen_fds = environ.pop("LISTEN_FDS", None)
    names_text = environ.pop("LISTEN_FDNAMES", None)
    if listen_pid is None or listen_fds is None:
        return []
    if not _DECIMAL.fullmatch(listen_pid) or int(listen_pid) != pid:
        logger.debug("LISTEN_PID=%s is not this process (%d): sockets ignored", listen_pid, pid)
        return []
    # No descriptor lies beyond the soft RLIMIT_NOFILE, which bounds the loop below.
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if not _DECIMAL.fullmatch(listen_fds) or int(listen_fds) > limit - _LISTEN_FDS_START:
        logger.warning("LISTEN_FDS=%r is not a count of descriptors: none taken", listen_fds)
        return []
    count = int(listen_fds)
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        logger.warning("LISTEN_FDNAMES has %d names for %d descriptors", len(names), count)
    found: list[tuple[socket.socket, str | None]] = []
    for index in range(count):
        fd = _LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] else None
        try:
            is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
        except OSError as e:
            logger.warning("inherited fd %d (%s): %s: skipped", fd, name, _reason(e))
            continue
        if not is_socket:
            logger.warning("inherited fd %d (%s) is not a socket: closed", fd, name)
            os.close(fd)
            continue
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as e:
            logger.warning("inherited fd %d (%s): %s: closed", fd, name, _reason(e))
            os.close(fd)
            continue
        sock.setblocking(False)
        found.append((sock, name))
    return found


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` to ``NOTIFY_SOCKET``, as ``sd_notify()``.

    Args:
        message: the newline-separated assignments, e.g. ``"READY=1\\nSTATUS=serving"``.
        environ: where ``NOTIFY_SOCKET`` is read: a path, or ``@name`` for an abstract socket.

    Returns:
        True when the datagram was sent; False when ``NOTIFY_SOCKET`` is unset, or the send
        failed (logged, never raised). It never blocks (the event loop calls it): a receiver
        whose queue is full loses the message, with a warning.
    """
    target = environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address: str | bytes
    if target.startswith("@"):
        address = _abstract(target[1:])
    elif target.startswith("/"):
        address = target
    else:
        logger.warning("NOTIFY_SOCKET=%r: must be an absolute path or @name", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode("utf-8", "surrogateescape"), address)
    except OSError as e:
        logger.warning("sd_notify to NOTIFY_SOCKET=%r failed: %s", target, _reason(e))
        return False
    return True


# --- Connections --------------------------------------------------------------------------------


def _or_none(call: Callable[[], Any]) -> Any:
    """``call()``, or None when the connection cannot tell any more (ENOTCONN after a reset)."""
    try:
        return call()
    except OSError:
        return None


def _unix_name(name: object) -> str | None:
    """A Unix socket address as text: the path, ``@name`` for an abstract one, None unnamed."""
    if isinstance(name, bytes) and name.startswith(b"\0"):
        return "@" + name[1:].decode("utf-8", "surrogateescape")
    if isinstance(name, bytes) and name:
        return os.fsdecode(name)
    if isinstance(name, str) and name:
        return name
    return None


def _inet_end(name: object) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    if not isinstance(name, tuple) or len(name) < 2:
        return None
    host, port = name[0], name[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return ipaddress.ip_address(host.partition("%")[0]), port


def peer_of(conn: socket.socket) -> Peer:
    """What an accepted connection tells about its two ends, for the handler's environment.

    ``TCP`` for IPv4, including an IPv4-mapped peer of a dual-stack socket (shown as the plain
    IPv4 address, as systemd's ``REMOTE_ADDR``); ``TCP6`` for IPv6; ``UNIX`` with the peer's
    ``SO_PEERCRED`` uid, gid and pid, and the socket paths (``@name`` for abstract ones).

    Never raises for a connection that already closed: what it cannot tell any more is None.

    Raises:
        ValueError: the connection is not of an IP or Unix socket.
    """
    family = conn.family
    if family == socket.AF_UNIX:
        pid = uid = gid = None
        creds = _or_none(
            lambda: conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        if isinstance(creds, bytes) and len(creds) == _UCRED.size:
            raw_pid, raw_uid, raw_gid = _UCRED.unpack(creds)
            pid = raw_pid if raw_pid > 0 else None
            uid = raw_uid if raw_uid != _NO_ID else None
            gid = raw_gid if raw_gid != _NO_ID else None
        return Peer(
            "UNIX",
            remote_addr=_unix_name(_or_none(conn.getpeername)),
            local_addr=_unix_name(_or_none(conn.getsockname)),
            uid=uid,
            gid=gid,
            pid=pid,
        )
    if family not in (socket.AF_INET, socket.AF_INET6):
        msg = f"peer_of: not an IP or Unix connection (family {family!r})"
        raise ValueError(msg)
    remote = _inet_end(_or_none(conn.getpeername))
    local = _inet_end(_or_none(conn.getsockname))
    ends = [end for end in (remote, local) if end is not None]
    mapped = any(isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped for ip, _ in ends)
    proto = "TCP" if family == socket.AF_INET or mapped else "TCP6"

    def text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ip)

    return Peer(
        proto,
        remote_addr=None if remote is None else text(remote[0]),
        remote_port=None if remote is None else remote[1],
        local_addr=None if local is None else text(local[0]),
        local_port=None if local is None else local[1],
    )


def source_of(peer: Peer) -> str | int:
    """What ``MaxConnectionsPerSource=`` counts by: the remote IP address as text, or for a
    Unix peer its UID (-1 when unknown). An IP peer whose address is unknown (the connection was
    reset before it was read) is ``""``."""
    if peer.proto == "UNIX":
        return -1 if peer.uid is None else peer.uid
    return peer.remote_addr or ""


def configure_connection(conn: socket.socket, spec: ListenSpec) -> None:
    """``KeepAlive=`` and ``NoDelay=`` on an accepted TCP connection, as systemd sets them on
    both ends (Linux copies them from the listener, but an inherited listener may lack them).

    Never raises: a failure (a connection already reset) is logged, and the handler runs anyway.
    """
    if conn.family not in (socket.AF_INET, socket.AF_INET6) or conn.type != socket.SOCK_STREAM:
        return
    for wanted, level, name, what in (
        (spec.keep_alive, socket.SOL_SOCKET, socket.SO_KEEPALIVE, "SO_KEEPALIVE"),
        (spec.no_delay, socket.IPPROTO_TCP, socket.TCP_NODELAY, "TCP_NODELAY"),
    ):
        if not wanted:
            continue
        try:
            conn.setsockopt(level, name, 1)
        except OSError as e:
            logger.warning("%s: %s: setsockopt %s: %s", spec.unit, describe(spec), what, _reason(e))
