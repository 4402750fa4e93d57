"""Real things on the host for root tests: commands, and static users and groups made with
shadow-utils and removed afterwards."""

from __future__ import annotations

import contextlib
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
    """A static group of that GID, removed after; its name."""
    name = f"act-test-g{gid}"
    subprocess.run(["groupdel", name], capture_output=True, check=False)  # a crashed run's
    run("groupadd", "-g", str(gid), name)
    try:
        yield name
    finally:
        run("groupdel", name)
