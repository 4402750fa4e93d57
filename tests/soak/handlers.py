"""The soak's handlers: one Accept=yes socket and service per behaviour, and what a client of
each must see.

Every handler is a dynamic user (``DynamicUser=yes``) and prints ``UID=N`` first (so every
client, whatever it does next, learns the pool UID it was served by); then it does its one
thing. The behaviours are the ways a handler can end, and the things it can leave behind:

- ``echo``: the inetd echo (``exec cat``): ends when the client half-closes.
- ``crash``: reads one line, then dies of SIGSEGV: a real fault (Python reads address 0 through
  ctypes), because ``kill -SEGV $$`` does nothing here: the handler is PID 1 of its PID
  namespace, and the kernel drops a signal a PID 1 sends itself without a handler for it. It has
  a state directory, which it never writes to.
- ``early``: exits without reading a byte (the client's data is still unread: a reset).
- ``hang``: sleeps until ``RuntimeMaxSec=`` (1 s) stops it.
- ``fork``: leaves two background children (one a session leader, one an orphan re-parented to
  the handler) holding the connection, writes a file into its runtime directory (one for all its
  connections: ``RuntimeDirectory=PREFIX-fork``) and echoes: the client must still see its end,
  no process may outlive the handler, and the runtime directory must be there for every
  connection and gone after the last.
- ``files``: writes to /tmp, /var/tmp and /dev/shm, then replaces the one file of its state
  directory (a temporary file, then a rename: the directory stays small however long the soak
  runs), then echoes. It prints ``files ok``, or :data:`STATE_REFUSED` when only the state
  directory refused the write: that must never happen. The state directory of a plain
  Accept=yes socket is the same for all its connections, so they all run as one dynamic user,
  the template's, as systemd's instances do (before, each connection was a fresh user that
  chowned the directory to itself, and a handler that started before it could no longer write
  there).
- ``ipc``: makes a SysV shared memory segment, message queue and semaphore set (``ipcmk``), a
  POSIX message queue and a POSIX shared memory file (``/dev/shm``), then echoes.

Every service has ``RuntimeMaxSec=`` (2 s, the hang 1 s): a client that never sends leaves a
reading handler waiting, and the limit ends it. The scripts are written with the ``:`` prefix of
``ExecStart=`` (no ``$VAR`` expansion by activator: the shell expands them), so they hold no
``%`` (a specifier), no single quote (the word's quotes) and no backslash (an escape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

#: The host's Python, for what the shell cannot do (a segfault, POSIX IPC): ``/usr/bin`` is in
#: every handler's view of the system.
PYTHON: Final = "/usr/bin/python3"

#: What every handler prints first.
PRINT_UID: Final = "echo UID=$(id -u)"

#: ``RuntimeMaxSec=`` of the reading handlers, and of the hanging one.
RUNTIME_MAX_SEC: Final = 2.0
HANG_RUNTIME_MAX_SEC: Final = 1.0

#: What the files handler prints when its state directory refused the write (it would belong to
#: another UID: the soak asserts that it never does).
STATE_REFUSED: Final = "state refused"

_SEGFAULT: Final = "import ctypes; ctypes.string_at(0)"
_POSIX_IPC: Final = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "mq = libc.mq_open(sys.argv[1].encode(), os.O_CREAT | os.O_RDWR, 0o600, None); "
    "sys.exit(os.strerror(ctypes.get_errno())) if mq < 0 else None; "
    "fd = os.open(sys.argv[2], os.O_CREAT | os.O_RDWR, 0o600); os.ftruncate(fd, 4096)"
)


@attrs.frozen
class Behaviour:
    """One handler behaviour and what its clients see.

    Attributes:
        name: the behaviour (``echo``, ``crash``, ...), part of its unit names.
        script: the handler, a ``sh -c`` script.
        markers: what the handler may print after its UID line, before echoing: the first when
            all went well, another for an outcome that is explained (``()``: nothing).
        echoes: the handler echoes all the client sends, and ends at the client's end of file.
        results: every way its invocation may end, as :func:`result` words it.
        state: the service has a ``StateDirectory=`` of its own (shared by its connections).
        runtime: the service has a ``RuntimeDirectory=`` of its own (shared by its connections),
            ``PREFIX-NAME``.
        runtime_max_sec: its ``RuntimeMaxSec=``.
    """

    name: str
    script: str
    markers: tuple[str, ...] = ()
    echoes: bool = True
    results: frozenset[str] = frozenset()
    state: bool = False
    runtime: bool = False
    runtime_max_sec: float = RUNTIME_MAX_SEC

    def __attrs_post_init__(self) -> None:
        for bad in ("%", "'", "\\"):
            assert bad not in self.script, f"{self.name}: {bad!r} in the script"

    def expected(self, uid: int) -> list[bytes]:
        """What the handler may print before it echoes (or ends), serving ``uid``: the first
        when all went well."""
        return [f"UID={uid}\n{marker}".encode() for marker in self.markers or ("",)]


#: How an echoing handler's invocation ends: at the client's end of file (0); after a client's
#: reset, cat's write fails (1: cat is PID 1, so the kernel's SIGPIPE is dropped and it sees
#: EPIPE or ECONNRESET); killed at RuntimeMaxSec= when the client never sends (cat catches no
#: SIGTERM, and a PID 1 drops what it does not catch: activator sends SIGKILL at once).
_ECHO_RESULTS: Final = frozenset({"exit 0", "exit 1", "signal SIGKILL"})

BEHAVIOURS: Final = (
    Behaviour("echo", f"{PRINT_UID}; exec cat", results=_ECHO_RESULTS),
    Behaviour(
        "crash",
        f'{PRINT_UID}; read -r line; exec {PYTHON} -Ic "{_SEGFAULT}"',
        echoes=False,
        results=frozenset({"signal SIGSEGV", "signal SIGKILL"}),
        state=True,
    ),
    Behaviour("early", PRINT_UID, echoes=False, results=frozenset({"exit 0"})),
    Behaviour(
        "hang",
        f"{PRINT_UID}; exec sleep 600",
        echoes=False,
        results=frozenset({"signal SIGKILL"}),
        runtime_max_sec=HANG_RUNTIME_MAX_SEC,
    ),
    Behaviour(
        "fork",
        f"setsid sleep 600 & (setsid sleep 601 &); {PRINT_UID}; "
        'echo soak > "$RUNTIME_DIRECTORY/fork" && echo runtime ok; exec cat',
        markers=("runtime ok\n",),
        results=_ECHO_RESULTS,
        runtime=True,
    ),
    Behaviour(
        "files",
        f"{PRINT_UID}; echo soak > /tmp/soak.$$ && echo soak > /var/tmp/soak && "
        "mkdir -p /tmp/soak.d/deeper && echo soak > /dev/shm/soak && "
        # Its connections share one user: no writer removes another's temporary file, which
        # the other is about to rename (none is refused, so none is left behind).
        'if { t=$(mktemp "$STATE_DIRECTORY/new.XXXXXX") && '
        'echo soak > "$t" && mv -f "$t" "$STATE_DIRECTORY/keep"; } 2>/dev/null; '
        f"then echo files ok; else echo {STATE_REFUSED}; fi; exec cat",
        markers=("files ok\n", f"{STATE_REFUSED}\n"),
        results=_ECHO_RESULTS,
        state=True,
    ),
    Behaviour(
        "ipc",
        f"{PRINT_UID}; ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && "
        f'ipcmk -S 1 >/dev/null && {PYTHON} -Ic "{_POSIX_IPC}" /soak /dev/shm/soak-segment && '
        "echo ipc ok; exec cat",
        markers=("ipc ok\n",),
        results=_ECHO_RESULTS,
    ),
)
BY_NAME: Final = {behaviour.name: behaviour for behaviour in BEHAVIOURS}


def units(
    prefix: str, ports: Mapping[str, int], state_directories: Mapping[str, str]
) -> dict[str, str]:
    """The unit files of every behaviour: ``PREFIX-NAME.socket`` (Accept=yes on 127.0.0.1 and
    ``ports[NAME]``) and ``PREFIX-NAME@.service``, with ``StateDirectory=`` the
    ``state_directories[NAME]`` of the behaviours with ``state``, and ``RuntimeDirectory=``
    ``PREFIX-NAME`` of those with ``runtime``."""
    out: dict[str, str] = {}
    for behaviour in BEHAVIOURS:
        name = f"{prefix}-{behaviour.name}"
        out[f"{name}.socket"] = (
            f"[Socket]\nListenStream=127.0.0.1:{ports[behaviour.name]}\nAccept=yes\n"
        )
        service = (
            f"[Service]\nExecStart=:/bin/sh -c '{behaviour.script}'\nDynamicUser=yes\n"
            "StandardInput=socket\nStandardOutput=socket\nStandardError=journal\n"
            f"RuntimeMaxSec={behaviour.runtime_max_sec:g}s\n"
        )
        if behaviour.state:
            service += f"StateDirectory={state_directories[behaviour.name]}\n"
        if behaviour.runtime:
            service += f"RuntimeDirectory={name}\n"
        out[f"{name}@.service"] = service
    return out


def behaviour_of(unit: str, prefix: str) -> str | None:
    """The behaviour whose service ``unit`` (``PREFIX-NAME@INSTANCE.service``) is an instance
    of, or None for a unit of no behaviour."""
    base = unit.split("@", 1)[0]
    if not base.startswith(f"{prefix}-"):
        return None
    name = base[len(prefix) + 1 :]
    return name if name in BY_NAME else None


def result(event: Mapping[str, object]) -> str:
    """How an ``invocation`` event says the invocation ended: ``exit N``, ``signal NAME``, or
    ``failed at STAGE``."""
    if event.get("failure") is not None:
        return f"failed at {event.get('stage')}"
    if event.get("signal") is not None:
        return f"signal {event['signal']}"
    return f"exit {event.get('exit_code')}"
