"""The soak's observers: the server's log, tallied as it goes, and the host, as root sees it.

:class:`LogTally` takes the server's events off :attr:`Server.events` as it counts them, so the
log costs the test no memory per connection (a 100,000-connection run logs 100,000 invocations):
invocations by behaviour and result, every other event by level and kind (with a few samples),
and what handlers wrote to their journal stream, checked against what each behaviour may say.

The host: descriptors and memory of a process (``/proc/PID/fd``, ``VmRSS``, ``VmHWM``) and the
serve process's spawner (re-exported from the integration tests' helpers); files of pool UIDs
outside the boundary directories (``find -xdev`` over every file system a handler could write
to); the lease files, cgroups and processes of the soak's own units.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from tests.integration.conftest import (
    BOUNDARY_DIRECTORIES,
    POOL_FIRST,
    POOL_LAST,
)
from tests.integration.conftest import fd_count as fd_count
from tests.integration.conftest import memory_kib as memory_kib
from tests.integration.serving import Event, Server
from tests.integration.serving import lease_records as leases_now
from tests.integration.serving import spawner_of as spawner_of
from tests.soak.handlers import BY_NAME, behaviour_of, result

#: Samples kept of each kind of event that is not an invocation.
KEPT_SAMPLES: Final = 3

#: What a handler may write to its journal stream (StandardError=journal), by behaviour: only
#: an echoing handler whose client reset the connection, about the write (or read) that failed.
#: cat is PID 1 of its namespace, so the kernel's SIGPIPE is dropped and cat sees the error;
#: dash's builtin echo (the markers) calls any write error "I/O error".
ALLOWED_OUTPUT: Final = {
    name: (
        re.compile(r"^cat: (write error|-): (Connection reset by peer|Broken pipe)$"),
        re.compile(r"^/bin/sh: \d+: echo: echo: I/O error$"),
    )
    if behaviour.echoes
    else ()
    for name, behaviour in BY_NAME.items()
}

_T = TypeVar("_T")


class LogTally:
    """The server's log, counted; events are taken off the server's list as they are read."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: (behaviour, result) -> invocations.
        self.invocations: collections.Counter[tuple[str, str]] = collections.Counter()
        #: (level, event) -> count, for every event that is not an invocation.
        self.others: collections.Counter[tuple[str, str]] = collections.Counter()
        self.samples: dict[tuple[str, str], list[str]] = {}
        #: Lines that were not JSON (a traceback), and handler output no behaviour explains.
        self.raw: list[str] = []
        self.unexplained: list[str] = []
        #: The UIDs invocations ran as.
        self.uids: set[int] = set()

    def drain(self, server: Server) -> None:
        """Count the events logged since the last call, and drop them from ``server.events``
        (the reader thread only appends: the slice taken and the slice deleted are the same)."""
        batch = server.events[:]
        del server.events[: len(batch)]
        for event in batch:
            self._count(event)

    def _count(self, event: Event) -> None:
        if "raw" in event:
            if len(self.raw) < 50:
                self.raw.append(str(event["raw"]))
            return
        kind = str(event.get("event", "-"))
        behaviour = behaviour_of(str(event.get("unit", "")), self.prefix)
        if kind == "invocation" and behaviour is not None:
            self.invocations[behaviour, result(event)] += 1
            if isinstance(event.get("uid"), int):
                self.uids.add(event["uid"])
            return
        key = (str(event.get("level", "-")), kind)
        self.others[key] += 1
        kept = self.samples.setdefault(key, [])
        if len(kept) < KEPT_SAMPLES:
            kept.append(str(event.get("message", json.dumps(event)))[:300])
        if kind == "output":
            text = str(event.get("text", ""))
            allowed = ALLOWED_OUTPUT.get(behaviour or "", ())
            if not any(pattern.match(text) for pattern in allowed) and len(self.unexplained) < 20:
                self.unexplained.append(f"{event.get('unit')}: {text}")

    def invocation_count(self) -> int:
        """Invocations of the soak's units logged so far."""
        return sum(self.invocations.values())

    def results(self) -> dict[str, dict[str, int]]:
        """Invocations by behaviour, then by result."""
        out: dict[str, dict[str, int]] = {}
        for (behaviour, how), n in sorted(self.invocations.items()):
            out.setdefault(behaviour, {})[how] = n
        return out

    def unexpected_results(self) -> dict[str, dict[str, int]]:
        """Invocations that ended in a way their behaviour does not (a failure, a wrong exit)."""
        out: dict[str, dict[str, int]] = {}
        for (behaviour, how), n in sorted(self.invocations.items()):
            if how not in BY_NAME[behaviour].results:
                out.setdefault(behaviour, {})[how] = n
        return out

    def problems(self) -> dict[str, list[str]]:
        """Warnings and errors logged (other than handler output), with samples."""
        return {
            f"{level} {kind}": self.samples[level, kind]
            for (level, kind) in self.others
            if level in ("warning", "error", "critical") and kind != "output"
        }


# --- the host -----------------------------------------------------------------------------------

#: Where a handler could write, were its sandbox broken (the ``find`` roots are the file systems
#: holding these: ``-xdev`` stays on one file system, so each is named).
WRITABLE_PLACES: Final = (
    "/", "/tmp", "/var/tmp", "/dev/shm", "/run", "/run/lock", "/var/lib", "/var/cache",
    "/var/log", "/home", "/dev", "/dev/mqueue", "/dev/pts",
)  # fmt: skip
#: Directories whose contents may belong to a released UID: the boundary directories, and
#: /run/private (the runtime directories' boundary).
PRUNED: Final = (*BOUNDARY_DIRECTORIES, "/run/private")
_LINE: Final = "%p %U:%G\\n"
_VANISHED: Final = re.compile(r"^find: .*: No such file or directory$")


def find_roots() -> list[str]:
    """The mount points of the file systems holding :data:`WRITABLE_PLACES` (each once)."""
    roots: dict[str, None] = {}
    for place in WRITABLE_PLACES:
        if not os.path.exists(place):
            continue
        done = subprocess.run(
            ["findmnt", "--noheadings", "--first-only", "--output", "TARGET", "--target", place],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        roots[done.stdout.strip()] = None
    return list(roots)


def files_outside_boundaries(roots: Iterable[str]) -> list[str]:
    """Every file owned by a pool UID or GID on the file systems ``roots``, outside the boundary
    directories (``find ROOTS -xdev``, pruning :data:`PRUNED`), as ``PATH UID:GID``."""
    prune: list[str] = []
    for path in PRUNED:
        prune += [*(["-o"] if prune else []), "-path", path]
    owned = [
        "(", "-uid", f"+{POOL_FIRST - 1}", "-uid", f"-{POOL_LAST + 1}", "-o",
        "-gid", f"+{POOL_FIRST - 1}", "-gid", f"-{POOL_LAST + 1}", ")",
    ]  # fmt: skip
    done = subprocess.run(
        ["find", *roots, "-xdev", "(", *prune, ")", "-prune", "-o", *owned, "-printf", _LINE],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    # Files that vanish under find (other tests' temporary files) make it exit 1: no error.
    errors = [line for line in done.stderr.splitlines() if not _VANISHED.match(line)]
    assert done.returncode == 0 or (done.returncode == 1 and not errors), done.stderr
    return sorted(set(done.stdout.splitlines()))


def lease_records() -> dict[str, str]:
    """The lease files of /run/activator/uid: name -> the unit its record names (``?`` when it
    cannot be read)."""
    return {str(uid): str(record.get("unit", "?")) for uid, record in leases_now().items()}


def cgroup_of(pid: int) -> str:
    """The cgroup v2 path of process ``pid`` (the ``0::`` line), or ``""``."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as file:
            for line in file:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return ""


def describe(pid: int) -> str:
    """A process for a failure message: its command line and cgroup."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = "?"
    return f"{pid} {command!r} in {cgroup_of(pid)!r}"


def until_empty(look: Callable[[], _T], seconds: float) -> _T:
    """``look()`` again and again until it finds nothing (falsy), for at most ``seconds``:
    another test of the same run may hold a pool UID for a moment. What it finds last."""
    deadline = time.monotonic() + seconds
    while True:
        found = look()
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)
