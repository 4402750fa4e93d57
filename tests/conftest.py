"""Shared test set-up: hypothesis profiles and the rule for tests that need root."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

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


#: Where :func:`figures` appends each test's figures, one JSON line per test (unset: nowhere).
FIGURES_ENV = "ACTIVATOR_FIGURES"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item (``item.report_call``), for :func:`figures`."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with the figures of its run: connections run, faults injected,
    inputs tried, what was lost, how long recovery took. They are what docs/reliability.md
    reports, so they come from the run, never from expectation.

    When ``ACTIVATOR_FIGURES`` names a file, the figures are appended to it at the end of the
    test as one JSON line: ``{"test": node id, "outcome": "passed"|"failed", "seconds": wall
    time, "at": UTC time, **figures}``. Without it they only go to the captured output.
    """
    found: dict[str, Any] = {}
    started = time.monotonic()
    yield found
    report = getattr(request.node, "report_call", None)
    line = {
        "test": request.node.nodeid,
        "outcome": getattr(report, "outcome", "not run"),
        "seconds": round(time.monotonic() - started, 1),
        "at": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        **found,
    }
    text = json.dumps(line, default=str)
    print(f"figures: {text}")
    if path := os.environ.get(FIGURES_ENV):
        with open(path, "a", encoding="utf-8") as file:
            file.write(text + "\n")


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
