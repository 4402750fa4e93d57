"""Real things on the host for root tests: commands, and static users and groups made with
shadow-utils and removed afterwards."""

from __future__ import annotations

import contextlib
import grp
import os
import subprocess
from collections.abc import Iterator


def run(*argv: str) -> str:
    """Run a command to its end; its stdout. CalledProcessError if it fails."""
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def static_user(uid: int) -> Iterator[str]:
    """A static user of that UID (no home, nologin), removed after; its name."""
    name = f"act-test-u{uid}"
    subprocess.run(["userdel", name], capture_output=True, check=False)  # a crashed run's
    run("useradd", "-u", str(uid), "-M", "-N", "-s", "/usr/sbin/nologin", name)
    try:
        yield name
    finally:
        run("userdel", name)


@contextlib.contextmanager
def static_group(gid: int) -> Iterator[str]:
    """A static group of that GID, removed after; its name, unique to this test run
    (``act-test-gGID-PID``, made with ``groupadd -o``): runs at the same time each have their
    own group of that GID, and none removes another's. A group a crashed run left (its PID gone)
    is removed first."""
    prefix = f"act-test-g{gid}-"
    for entry in grp.getgrall():
        pid = entry.gr_name.removeprefix(prefix)
        if entry.gr_name.startswith(prefix) and pid.isdecimal():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:  # its run is gone: a crashed run's
                subprocess.run(["groupdel", entry.gr_name], capture_output=True, check=False)
            except PermissionError:
                pass
    name = f"{prefix}{os.getpid()}"
    run("groupadd", "-o", "-g", str(gid), name)
    try:
        yield name
    finally:
        run("groupdel", name)
