"""activator reads values as systemd does: checked against systemd's own tools on this machine.

``systemd-analyze timespan`` and ``systemd-escape`` come with Debian 12's systemd package; they are
the parsers activator copies, so they are the oracle (a real program, not a table of our own).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activator import values as v
from activator.units import escape_unit_name_part, unescape_unit_name_part

# Under CI=true the tools are installed by `make test`; a skip there would hide a gap.
pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and os.environ.get("CI") != "true",
    reason="systemd-analyze is not installed (Debian package systemd)",
)

USEC_INFINITY = 2**64 - 1


def systemd_timespan(text: str) -> int | None:
    """What systemd makes of a time span: microseconds, None for infinity, -1 when refused."""
    result = subprocess.run(
        ["systemd-analyze", "timespan", text], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return -1
    usec = int(next(line for line in result.stdout.splitlines() if "μs:" in line).split()[-1])
    return None if usec == USEC_INFINITY else usec


def ours(text: str) -> int | None:
    try:
        return v.parse_timespan(text)
    except ValueError:
        return -1


@pytest.mark.parametrize(
    "text",
    [
        "0", "1", "1.5", "90", "1min 30s", "2h30m", "1d 2h 3min 4s 5ms 6us", "100ms", "1.25h",
        "3 weeks", "1y", "2M", "5msec", "7 µs", "infinity", "1min30", "bogus", "1 fortnight",
        "-1", "", "1..5s",
    ],
)  # fmt: skip
def test_time_spans_match_systemd(text: str) -> None:
    assert ours(text) == systemd_timespan(text)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**12))
def test_rendered_time_spans_read_the_same_in_systemd(usec: int) -> None:
    assert systemd_timespan(v.render_timespan(usec)) == usec


@settings(max_examples=25, deadline=None)
@given(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
)
def test_unit_name_escaping_matches_systemd_escape(text: str) -> None:
    result = subprocess.run(
        ["systemd-escape", "--", text], capture_output=True, text=True, check=True
    )
    escaped = result.stdout.removesuffix("\n")
    assert escape_unit_name_part(text) == escaped
    unescaped = subprocess.run(
        ["systemd-escape", "-u", "--", escaped], capture_output=True, text=True, check=True
    )
    assert unescape_unit_name_part(escaped) == unescaped.stdout.removesuffix("\n")
