"""The control channel between the activator and its spawner: framing shared by both ends.

Rule 1: one message is one datagram of a ``SOCK_SEQPACKET`` socketpair holding one JSON object
(UTF-8); descriptors travel beside it as ``SCM_RIGHTS``. Neither end ever sends an empty
datagram, so an empty read is the peer's end.

Rule 2: this module imports only the standard library: both the trio side and the small spawner
process load it.

Requests (activator -> spawner)::

    {"op": "spawn", "id": N, "plan": <sandbox.plan_to_wire(plan)>}  + the plan's descriptors
    {"op": "kill", "id": N, "signal": S}
    {"op": "clear_keyrings", "id": N, "uid": U, "gid": G}   clear U's user keyrings (U, G > 0)

Replies (spawner -> activator), in order for one ``id``: either one ``failed``, or ``started``
then ``exited`` (for ``clear_keyrings``: one ``failed`` or one ``exited``, no ``started``)::

    {"event": "ready", "pid": P}                  once, when the spawner is up
    {"event": "fatal", "message": "..."}          instead of ready: the spawner cannot work
    {"id": N, "event": "started", "pid": P}       + the handler's pidfd: it has exec'd
    {"id": N, "event": "failed", "stage": "mount", "errno": 13,
     "message": "mount /var/lib/private: Permission denied"}   the child is gone (reaped)
    {"id": N, "event": "exited", "pid": P, "code": C}  or  "signal": S   (reaped)
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from typing import Final

#: The largest datagram either end sends or reads. A plan is a few kilobytes; the kernel refuses
#: a datagram larger than the socket's send buffer (212992 bytes by default) with EMSGSIZE.
MAX_MESSAGE: Final = 192 * 1024
#: The most descriptors one spawn request may carry (the kernel's SCM_MAX_FD).
MAX_FDS: Final = 253


def encode(message: dict[str, object]) -> bytes:
    """One message as the bytes of its datagram."""
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, object]:
    """One datagram as a message; :class:`ValueError` when it is not a JSON object."""
    message = json.loads(data)
    if not isinstance(message, dict):
        msg = f"a control message must be a JSON object (got {type(message).__name__})"
        raise ValueError(msg)
    return message


def fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors of the ``SCM_RIGHTS`` items of a recvmsg's ancillary data."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return fds.tolist()


def rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """Ancillary data passing ``fds`` (nothing for none)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def ancillary_space(count: int) -> int:
    """The ancillary buffer size recvmsg needs for ``count`` descriptors."""
    return socket.CMSG_SPACE(count * array.array("i").itemsize)


def close_all(fds: list[int]) -> None:
    """Close every descriptor of ``fds``, ignoring those already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
