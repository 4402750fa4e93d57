"""Shared test set-up: hypothesis profiles and the rule for tests that need root."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100)
# CI explores more examples, in a fixed order (derandomize): a run is reproducible, and a landing
# never hangs on an example found by chance; random exploration happens in every dev run.
settings.register_profile(
    "ci",
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
    derandomize=True,
    database=None,
)
# A long hunt by hand: HYPOTHESIS_PROFILE=soak pytest tests/unit
settings.register_profile(
    "soak", max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``root`` tests skip when not root, except under CI=true, where a skip would hide a gap."""
    if item.get_closest_marker("root") is None or os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("this test needs root, and CI runs as root: a skip here would hide a gap")
    pytest.skip("needs root")


#: Directories the product makes on the host the first time it runs (boundary directories, the
#: lease directory, cgroup bases): removed after the run when the run made them and left them
#: empty, so a test run leaves the host as it found it. Deepest first.
PRODUCT_DIRECTORIES = (
    "/run/activator/uid",
    "/run/activator",
    "/run/systemd/userdb",
    "/run/private",
    "/var/lib/private",
    "/var/cache/private",
    "/var/log/private",
    *(
        f"/sys/fs/cgroup/{hierarchy}/activator"
        for hierarchy in ("unified", "pids", "memory", "cpu", "cpu,cpuacct")
    ),
    "/sys/fs/cgroup/activator",
)
_EXISTED_BEFORE: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note which product directories exist before the run."""
    _EXISTED_BEFORE.update(path for path in PRODUCT_DIRECTORIES if os.path.lexists(path))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the run's tmp_path directories (``--basetemp=.pytest-tmp``): a test run leaves no
    files behind, in the checkout or under /tmp. Then the product directories the run made, if
    empty (``rmdir`` only: what is in them was left by something, and stays to be seen)."""
    basetemp = session.config.option.basetemp
    if basetemp and os.path.basename(os.path.normpath(basetemp)) == ".pytest-tmp":
        shutil.rmtree(basetemp, ignore_errors=True)
    for path in PRODUCT_DIRECTORIES:
        if path in _EXISTED_BEFORE or not os.path.isdir(path) or os.path.islink(path):
            continue
        # cgroup bases may hold empty unit directories (removed with their last invocation,
        # but a crash test can leave one): those go first, never anything with a process.
        if path.startswith("/sys/fs/cgroup/"):
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(path)
