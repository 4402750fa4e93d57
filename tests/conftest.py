"""Shared test set-up: hypothesis profiles and the rule for tests that need root."""

from __future__ import annotations

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


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the run's tmp_path directories (``--basetemp=.pytest-tmp``): a test run leaves no
    files behind, in the checkout or under /tmp."""
    basetemp = session.config.option.basetemp
    if basetemp and os.path.basename(os.path.normpath(basetemp)) == ".pytest-tmp":
        shutil.rmtree(basetemp, ignore_errors=True)
