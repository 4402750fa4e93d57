"""A served Unix socket file: bind it, know who connects, read bounded lines, remove it after.

The side doors (control socket, userdb) are Unix stream sockets at a fixed path that outlive a
crash of the process that bound them. What they share lives here.

Rule 1: a socket file is replaced only when nobody answers on it (a crash left it); a file that
is not a socket, or a socket a server answers on, is never touched.

Rule 2: a server removes its socket file when it stops only if the file is still the one it bound
(same device and inode): a second server that replaced it keeps its own.

Rule 3: reading never holds more than ``limit + 1`` bytes of a client's input beyond what the
caller has consumed, whatever the client sends.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import socket
import stat
import struct

import attrs
import trio

from activator.errors import ActivatorError

logger = logging.getLogger(__name__)

#: Input is received in pieces of at most this size.
_RECEIVE_CHUNK = 64 * 1024
_ID_MAX = 0xFFFFFFFF
#: ``SO_PEERGROUPS`` (Linux 4.13; not in the socket module): the peer's supplementary groups.
SO_PEERGROUPS = 59
#: The most groups :func:`peer_groups` reads: Python's getsockopt takes 1024 bytes at most.
PEER_GROUPS_MAX = 1024 // 4


class SocketFileError(ActivatorError):
    """The socket file cannot be bound; the message names the path and the reason."""


class SocketFileInUse(SocketFileError):
    """A server answers on the socket file already."""


@attrs.frozen
class FileIdentity:
    """The socket file a server bound, to recognise it when removing it."""

    device: int
    inode: int


@attrs.frozen
class PeerCredentials:
    """The process at the other end of a Unix stream socket, as ``SO_PEERCRED`` gives it (at
    connect time)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials:
    """The credentials of the peer of a connected Unix socket.

    Raises:
        OSError: the socket has no peer (anymore).
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(int(pid), int(uid) & _ID_MAX, int(gid) & _ID_MAX)


def peer_groups(sock: trio.socket.SocketType) -> frozenset[int] | None:
    """The supplementary groups of the peer of a connected Unix socket, as they were at connect
    time (``SO_PEERGROUPS``: no ``/proc``, no race with the peer's PID being reused); None when
    it has more than :data:`PEER_GROUPS_MAX`.

    Raises:
        OSError: the socket has no peer (anymore).
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, PEER_GROUPS_MAX * 4)
    except OSError as e:
        if e.errno == errno.ERANGE:
            return None
        raise
    return frozenset(gid & _ID_MAX for gid in struct.unpack(f"{len(raw) // 4}I", raw))


async def _clear_stale(path: str, what: str) -> bool:
    """Remove ``path`` when it is a socket nobody answers on; whether it was removed.

    Raises:
        SocketFileInUse: a server answers on it.
        SocketFileError: it is not a socket.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        msg = f"{what} {path}: {os.strerror(errno.EEXIST)}, and it is not a socket"
        raise SocketFileError(msg)
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            await probe.connect(path)
        except ConnectionRefusedError:
            pass  # nobody listens: stale
        except FileNotFoundError:
            return False
        except BlockingIOError:  # a full backlog: somebody listens
            msg = f"{what} {path}: {os.strerror(errno.EADDRINUSE)}"
            raise SocketFileInUse(msg) from None
        else:
            msg = f"{what} {path}: {os.strerror(errno.EADDRINUSE)} (a server answers on it)"
            raise SocketFileInUse(msg)
    logger.info("%s %s: removing a stale socket", what, path)
    os.unlink(path)
    return True


async def clear_stale_siblings(directory: str, prefix: str, what: str) -> list[str]:
    """Remove the stale socket files of ``directory`` whose names start with ``prefix``: those
    nobody answers on (Rule 1), left by servers killed before they could remove them (a crashed
    ``activator run``'s ``io.activator.DynamicUser.run-PID``, whose name no later run reuses).
    Anything else is left alone, silently. The paths removed."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith(prefix))
    except OSError:
        return []
    removed = []
    for name in names:
        path = posixpath.join(directory, name)
        try:
            if await _clear_stale(path, what):
                removed.append(path)
        except (SocketFileError, OSError):
            continue
    return removed


async def bind_socket_file(
    path: str, what: str, *, backlog: int, mode: int = 0o666
) -> tuple[trio.socket.SocketType, FileIdentity]:
    """Bind and listen on a Unix stream socket at path.

    Creates the directory (mode 0755) if missing and leaves it; replaces a stale socket file.

    Args:
        path: the socket file.
        what: names the socket in messages ("control socket").
        backlog: the listen backlog.
        mode: the socket file's mode; 0666 lets anyone connect, which is what a server that
            checks its peers' credentials wants (a refusal can then be read).

    Returns:
        The listening socket and the identity of its file, for :func:`remove_socket_file`.

    Raises:
        SocketFileInUse: a server answers on path.
        SocketFileError: path exists and is not a socket, or binding fails.
    """
    os.makedirs(posixpath.dirname(path) or ".", mode=0o755, exist_ok=True)
    await _clear_stale(path, what)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(path)
        except OSError as e:
            msg = f"{what} {path}: bind: {e.strerror}"
            raise SocketFileError(msg) from e
        os.chmod(path, mode)
        info = os.stat(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, FileIdentity(info.st_dev, info.st_ino)


def remove_socket_file(path: str, identity: FileIdentity, what: str) -> None:
    """Remove our socket file, unless another server has replaced it since (Rule 2)."""
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == (identity.device, identity.inode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("%s %s: cannot remove it: %s", what, path, e.strerror)


async def receive_until(
    stream: trio.abc.ReceiveStream, buffer: bytearray, separator: int, limit: int
) -> int:
    """Receive into buffer until it holds separator; the separator's index.

    Args:
        stream: where the bytes come from.
        buffer: bytes received and not consumed yet; the caller removes what it consumes.
        separator: the byte that ends a message (``0x0a``, ``0x00``).
        limit: the longest message, separator not counted.

    Returns:
        The index of the separator; -1 at the end of the stream (buffer keeps any partial
        message); -2 when the message is longer than limit (buffer then holds more than limit
        bytes, never more than ``limit + 1``).
    """
    searched = 0
    while (end := buffer.find(separator, searched)) < 0:
        searched = len(buffer)
        if searched > limit:
            return -2
        data = await stream.receive_some(min(_RECEIVE_CHUNK, limit + 1 - searched))
        if not data:
            return -1
        buffer += data
    return end if end <= limit else -2
