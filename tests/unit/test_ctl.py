"""The control commands of the CLI: the renderers (pure: tables, ages, messages), then the real
``activator`` command run as a subprocess against a real :func:`serve_control` whose dispatch
answers with the result shapes the daemon sends.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from activator import control, ctl
from activator.control import ControlError, serve_control

ACTIVATOR = str(Path(sys.executable).with_name("activator"))

POOL = {"first": 61184, "last": 65519, "size": 4336, "leased": 3, "free": 4333, "waiting": 0}
SOCKET_ROW = {
    "unit": "foo@alice.socket",
    "kind": "socket",
    "state": "listening",
    "enabled": True,
    "listen": ["ListenStream=/run/foo/alice.sock"],
    "activates": "foo@alice.service",
    "accepted": 12,
    "active": 2,
    "future key": "ignored",
}
SERVICE_ROW: dict[str, object] = {
    "unit": "echo.service",
    "kind": "service",
    "state": "inactive",
    "enabled": None,
    "listen": [],
    "activates": None,
    "accepted": 0,
    "active": 0,
}
CONNECTION = {
    "invocation": "3f2a9c0de1b24c6d8e0f1a2b3c4d5e6f",
    "unit": "foo@alice.service",
    "socket": "foo@alice.socket",
    "peer": "127.0.0.1:50312",
    "uid": 61190,
    "user": "foo-alice",
    "started": 1_800_000_000.5,
    "seconds": 182.7,
}
USER = {
    "uid": 61190,
    "user": "foo-alice",
    "unit": "foo@alice.service",
    "invocation": CONNECTION["invocation"],
    "peer": None,
    "started": 1_800_000_000.5,
    "seconds": 7530.0,
    "holders": 1,
}
STATUS = {"pool": POOL, "units": [SOCKET_ROW, SERVICE_ROW], "invocations": [CONNECTION]}


# --- ages and cells -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (0.9, "0s"),
        (5, "5s"),
        (59.99, "59s"),
        (60, "1min"),
        (182, "3min 2s"),
        (3600, "1h"),
        (3602, "1h"),
        (7530, "2h 5min"),
        (86400 * 3 + 3600 * 4 + 59, "3d 4h"),
        (-3, "0s"),  # a clock that went back
        (None, "-"),
        (float("nan"), "-"),
        (True, "-"),
    ],
)
def test_ages_read_like_systemd_time_spans(seconds: object, shown: str) -> None:
    assert ctl.format_age(seconds) == shown


_UNIT_SECONDS = {"d": 86400, "h": 3600, "min": 60, "s": 1}


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_an_age_is_exact_to_its_second_unit(seconds: float) -> None:
    shown = ctl.format_age(seconds)
    parts = [re.fullmatch(r"(\d+)(d|h|min|s)", p) for p in shown.split(" ")]
    assert all(parts), shown
    assert 1 <= len(parts) <= 2, shown
    values = [(int(m[1]), _UNIT_SECONDS[m[2]]) for m in parts if m is not None]
    total = sum(n * size for n, size in values)
    units = list(_UNIT_SECONDS.values())
    largest = values[0][1]
    precision = units[min(units.index(largest) + 1, len(units) - 1)]
    assert total <= seconds < total + precision
    assert values[0][0] >= 1 or shown == "0s"


def test_cells_show_nothing_as_a_dash_and_escape_what_is_not_printable_ascii() -> None:
    nothing: tuple[object, ...] = (None, "", [], True, False, 3, 1.5)
    assert [ctl.cell(v) for v in nothing] == [
        "-",
        "-",
        "-",
        "yes",
        "no",
        "3",
        "1.5",
    ]
    assert ctl.cell(["a", "b"]) == "a,b"
    assert ctl.cell("foo@caf\u00e9.socket") == "foo@caf\\xe9.socket"
    assert ctl.cell("\x1b[2Jevil\nline\t") == "\\x1b[2Jevil\\x0aline\\x09"


cells = st.text(max_size=12)


@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.lists(cells, min_size=n, max_size=n))))
def test_every_row_of_a_table_aligns(raw: list[list[str]]) -> None:
    width = len(raw[0]) if raw else 3
    header = [f"h{i}" for i in range(width)]
    rows = [[ctl.cell(c) for c in row] for row in raw]
    text = ctl.render_table(header, rows)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert len(lines) == len(rows) + 1
    assert lines[0].split() == [h.upper() for h in header]
    starts = [lines[0].index(h.upper()) for h in header]
    for line, row in zip(lines, [[h.upper() for h in header], *rows], strict=True):
        assert line == line.rstrip()
        assert line.isascii()
        assert line.isprintable()
        for i, value in enumerate(row):
            end = starts[i + 1] if i + 1 < len(starts) else None
            if i:
                assert line[starts[i] - 2 : starts[i]] == "  "
            assert line[starts[i] : end].rstrip() == value


# --- what each command shows --------------------------------------------------------------------


def test_status_shows_the_pool_the_units_and_the_connections() -> None:
    assert ctl.render_status(STATUS) == (
        "pool: 3 of 4336 UIDs leased (0.1%), 4333 free, 0 waiting\n"
        "\n"
        "UNIT              KIND     STATE      ENABLED  LISTEN                            "
        "ACTIVE  ACCEPTED\n"
        "foo@alice.socket  socket   listening  yes      ListenStream=/run/foo/alice.sock  "
        "2       12\n"
        "echo.service      service  inactive   -        -                                 "
        "0       0\n"
        "\n"
        "INVOCATION    UNIT               PEER             UID    USER       AGE\n"
        "3f2a9c0de1b2  foo@alice.service  127.0.0.1:50312  61190  foo-alice  3min 2s\n"
    )


def test_status_without_units_or_connections_and_with_an_odd_pool() -> None:
    assert ctl.render_status({"pool": POOL, "units": [], "invocations": []}) == (
        "pool: 3 of 4336 UIDs leased (0.1%), 4333 free, 0 waiting\nno units\n"
    )
    assert ctl.render_status({}) == "pool: - of - UIDs leased, - free, - waiting\nno units\n"


def test_lists_of_connections_and_users() -> None:
    assert ctl.render_connections([]) == "no connections\n"
    assert ctl.render_users([]) == "no dynamic users\n"
    assert ctl.render_users([USER]) == (
        "UID    USER       UNIT               PEER  AGE      HOLDERS\n"
        "61190  foo-alice  foo@alice.service  -     2h 5min  1\n"
    )


@pytest.mark.parametrize(
    ("command", "args", "result", "shown"),
    [
        (
            "enable",
            {"unit": "foo@alice.socket", "now": True},
            {"enabled": ["foo@alice.socket"], "started": ["foo@alice.socket"]},
            "enabled foo@alice.socket\nstarted foo@alice.socket\n",
        ),
        (
            "enable",
            {"unit": "foo@alice", "now": False},
            {"enabled": [], "started": []},
            "foo@alice: already enabled\n",
        ),
        (
            "disable",
            {"unit": "foo@bob.socket", "now": True},
            {"disabled": [], "stopped": ["foo@bob.socket"]},
            "stopped foo@bob.socket\n",
        ),
        ("start", {"unit": "x.socket"}, {"started": []}, "x.socket: already started\n"),
        ("stop", {"unit": "x.socket"}, {"stopped": ["x.socket"]}, "stopped x.socket\n"),
        ("restart", {"unit": "x.socket"}, {"restarted": ["x.socket"]}, "restarted x.socket\n"),
        ("kill", {"target": "3f2a9c0d"}, {"killed": ["3f2a9c0de1b2"]}, "killed 3f2a9c0de1b2\n"),
    ],
)
def test_changes_print_one_line_per_unit_or_what_is_already_so(
    command: str, args: Mapping[str, object], result: object, shown: str
) -> None:
    assert ctl.render(command, args, result) == ctl.Rendered(shown)


def test_reload_lists_what_changed_and_fails_when_a_unit_failed() -> None:
    result = {
        "added": ["new.socket"],
        "removed": [],
        "changed": ["echo.service"],
        "kept": ["a.socket", "a.service"],
        "failed": [{"unit": "bad.socket", "error": "bad.socket:3: ListenStream='x': no"}],
    }
    assert ctl.render("reload", {}, result) == ctl.Rendered(
        "added new.socket\n"
        "changed echo.service\n"
        "failed bad.socket: bad.socket:3: ListenStream='x': no\n"
        "reloaded: 1 added, 0 removed, 1 changed, 2 kept, 1 failed\n",
        "reload: 1 unit failed to load",
    )
    empty: dict[str, list[str]] = {
        "added": [],
        "removed": [],
        "changed": [],
        "kept": [],
        "failed": [],
    }
    assert ctl.render("reload", {}, empty) == ctl.Rendered(
        "reloaded: 0 added, 0 removed, 0 changed, 0 kept, 0 failed\n"
    )


def test_every_command_of_the_socket_is_a_subcommand() -> None:
    assert set(control.COMMANDS) == ctl.COMMANDS


# --- the command line, end to end ---------------------------------------------------------------


RESULTS: dict[str, object] = {
    "status": STATUS,
    "list-connections": [CONNECTION],
    "list-users": [],
    "enable": {"enabled": ["foo@alice.socket"], "started": []},
    "reload": {"added": [], "removed": [], "changed": [], "kept": [], "failed": ["bad.socket"]},
}


class Dispatcher:
    """Answers with RESULTS, refuses kill, and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, object]]] = []

    async def __call__(self, command: str, args: Mapping[str, object]) -> object:
        self.asked.append((command, dict(args)))
        if command == "kill":
            msg = f"no invocation or unit matches {args['target']!r}"
            raise ControlError(msg)
        return RESULTS.get(command, {})


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Path, Dispatcher]]:
    """A control socket served under tmp_path with a :class:`Dispatcher`."""
    path = tmp_path / "control"
    dispatcher = Dispatcher()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_control, str(path), "", dispatcher))
        yield path, dispatcher
        nursery.cancel_scope.cancel()


async def activator(*argv: str) -> tuple[int, str, str]:
    """Run the real command line; its exit code, stdout and stderr."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [ACTIVATOR, *argv], capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.root  # the control socket answers root (and its group) only
async def test_status_and_lists_print_tables(served: tuple[Path, Dispatcher]) -> None:
    path, dispatcher = served
    assert await activator("status", "--control", str(path)) == (
        0,
        ctl.render_status(STATUS),
        "",
    )
    code, out, _ = await activator("status", "foo@alice.socket", "--control", str(path))
    assert code == 0
    assert out.startswith("pool: 3 of 4336 UIDs leased")
    assert await activator("list-users", "--control", str(path)) == (0, "no dynamic users\n", "")
    code, out, _ = await activator("list-connections", "--control", str(path))
    assert out.splitlines()[0].split() == ["INVOCATION", "UNIT", "PEER", "UID", "USER", "AGE"]
    assert dispatcher.asked == [
        ("status", {"unit": None}),
        ("status", {"unit": "foo@alice.socket"}),
        ("list-users", {}),
        ("list-connections", {}),
    ]


@pytest.mark.root
async def test_json_prints_the_result_as_it_came(served: tuple[Path, Dispatcher]) -> None:
    path, _ = served
    code, out, err = await activator("status", "--json", "--control", str(path))
    assert (code, err) == (0, "")
    assert json.loads(out) == STATUS
    code, out, _ = await activator("list-connections", "--control", str(path), "--json")
    assert json.loads(out) == [CONNECTION]


@pytest.mark.root
async def test_verbs_send_their_arguments(served: tuple[Path, Dispatcher]) -> None:
    path, dispatcher = served
    assert await activator("enable", "foo@alice", "--now", "--control", str(path)) == (
        0,
        "enabled foo@alice.socket\n",
        "",
    )
    assert await activator("disable", "foo@bob", "--control", str(path)) == (
        0,
        "foo@bob: already disabled\n",
        "",
    )
    for verb in ("start", "stop", "restart"):
        code, _, _ = await activator(verb, "foo@carol.socket", "--control", str(path))
        assert code == 0
    assert dispatcher.asked == [
        ("enable", {"unit": "foo@alice", "now": True}),
        ("disable", {"unit": "foo@bob", "now": False}),
        ("start", {"unit": "foo@carol.socket"}),
        ("stop", {"unit": "foo@carol.socket"}),
        ("restart", {"unit": "foo@carol.socket"}),
    ]


@pytest.mark.root
async def test_a_refusal_exits_1_with_the_reason(served: tuple[Path, Dispatcher]) -> None:
    path, _ = served
    assert await activator("kill", "deadbeef00", "--control", str(path)) == (
        1,
        "",
        "activator: no invocation or unit matches 'deadbeef00'\n",
    )
    assert await activator("kill", "deadbeef00", "--json", "--control", str(path)) == (
        1,
        "",
        "activator: no invocation or unit matches 'deadbeef00'\n",
    )
    code, out, err = await activator("reload", "--control", str(path))
    assert (code, err) == (1, "activator: reload: 1 unit failed to load\n")
    assert out.endswith("reloaded: 0 added, 0 removed, 0 changed, 0 kept, 1 failed\n")


@pytest.mark.root
async def test_the_socket_path_comes_from_the_settings(
    served: tuple[Path, Dispatcher], tmp_path: Path
) -> None:
    path, dispatcher = served
    config = tmp_path / "activator.toml"
    config.write_text(f'[control]\nsocket = "{path}"\n', encoding="utf-8")
    assert await activator("list-users", "--config", str(config)) == (0, "no dynamic users\n", "")
    assert dispatcher.asked == [("list-users", {})]


async def test_no_server_exits_1_and_says_where_it_looked(tmp_path: Path) -> None:
    path = tmp_path / "control"
    assert await activator("status", "--control", str(path)) == (
        1,
        "",
        f"activator: cannot connect to {path}: No such file or directory "
        "(is activator serve running?)\n",
    )


async def test_usage_and_settings_errors_exit_2(tmp_path: Path) -> None:
    code, out, err = await activator("enable")
    assert (code, out) == (2, "")
    assert "the following arguments are required: UNIT" in err
    config = tmp_path / "activator.toml"
    config.write_text('[control]\nsocket = "relative"\n', encoding="utf-8")
    code, out, err = await activator("status", "--config", str(config))
    assert (code, out) == (2, "")
    assert err.startswith(f"activator: {config}:2: control.socket='relative': ")
    code, _, err = await activator("status", "--config", str(tmp_path / "missing.toml"))
    assert (code, err) == (2, f"activator: {tmp_path}/missing.toml: No such file or directory\n")
