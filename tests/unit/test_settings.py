"""Tests of activator.settings: reading, checking, placing and writing ``activator.toml``."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from activator import settings as settings_module
from activator.errors import ConfigError, Problem, Severity
from activator.settings import (
    DEFAULT_CONFIG_PATH,
    ControlSettings,
    HostPort,
    LogFormat,
    LogSettings,
    MetricsSettings,
    OnExhausted,
    PoolSettings,
    Settings,
    UnitsSettings,
    UserdbSettings,
    _index_lines,
    _line_of,
    _toml_value,
    check_settings,
    load_settings,
    parse_settings,
    render_settings,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "activator.toml"

# The settings as the brief that specified this module spells them out.
BRIEF_EXAMPLE = """\
[pool]
first = 61184            # UID range of the dynamic users; UID and GID share the number
last = 65519
on_exhausted = "reject"  # or "wait"
wait_timeout_sec = 5.0   # > 0, only meaningful with "wait"; a float of seconds

[units]
directories = ["/etc/activator/units"]   # searched in order; earlier wins (like /etc before /usr/lib)

[metrics]
listen = "127.0.0.1:9464"   # "host:port", "[v6]:port"; "" disables

[control]
socket = "/run/activator/control"   # absolute path
group = ""                          # group allowed besides root; "" = root only; a valid group name

[userdb]
enabled = true

[log]
format = "plain"   # or "json"
"""  # noqa: E501 (the brief's text, verbatim)


def problems_of(text: str) -> tuple[Problem, ...]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "activator.toml")
    return info.value.problems


def messages_of(text: str) -> list[str]:
    return [str(p) for p in problems_of(text)]


def only_problem(text: str) -> Problem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def pool_text(first: int, last: int) -> str:
    return f"[pool]\nfirst = {first}\nlast = {last}\n"


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    s = Settings()
    assert s.pool == PoolSettings(61184, 65519, OnExhausted.REJECT, 5.0)
    assert s.units.directories == ("/etc/activator/units",)
    assert s.metrics.listen == HostPort("127.0.0.1", 9464)
    assert s.control == ControlSettings("/run/activator/control", "")
    assert s.userdb.enabled is True
    assert s.log.format is LogFormat.PLAIN
    assert DEFAULT_CONFIG_PATH == "/etc/activator/activator.toml"


@pytest.mark.parametrize(
    "text",
    ["", "# nothing\n", BRIEF_EXAMPLE, "[pool]\n[units]\n[metrics]\n[control]\n[userdb]\n[log]\n"],
)
def test_texts_that_mean_the_defaults(text: str) -> None:
    assert parse_settings(text, "activator.toml") == Settings()


def test_every_key_is_read() -> None:
    text = """\
[pool]
first = 100000
last = 100999
on_exhausted = "wait"
wait_timeout_sec = 0.25
[units]
directories = ["/a", "b"]
[metrics]
listen = "[::1]:9100"
[control]
socket = "/run/x.sock"
group = "wheel"
[userdb]
enabled = false
[log]
format = "json"
"""
    assert parse_settings(text, "activator.toml") == Settings(
        pool=PoolSettings(100000, 100999, OnExhausted.WAIT, 0.25),
        units=UnitsSettings(("/a", "b")),
        metrics=MetricsSettings(HostPort("::1", 9100)),
        control=ControlSettings("/run/x.sock", "wheel"),
        userdb=UserdbSettings(enabled=False),
        log=LogSettings(LogFormat.JSON),
    )


# --- unknown tables and keys ----------------------------------------------------------------------


def test_unknown_key_names_the_dotted_path_and_the_known_keys() -> None:
    text = "# settings\n\n[pool]\nfirst = 61184\nlast = 65519\n\nfrist = 61184\n"
    assert messages_of(text) == [
        "activator.toml:7: pool.frist: unknown key "
        "(known: first, last, on_exhausted, wait_timeout_sec, max_waiting, reuse_delay_sec)"
    ]


def test_unknown_table() -> None:
    assert messages_of("[log]\n[frob]\nx = 1\n") == [
        "activator.toml:2: frob: unknown table "
        "(known tables: pool, units, metrics, control, userdb, log)"
    ]


def test_unknown_top_level_key() -> None:
    problem = only_problem("first = 1\n")
    assert (problem.line, problem.key) == (1, "first")
    assert problem.reason.startswith("unknown key")


def test_unknown_sub_table_is_an_unknown_key() -> None:
    problem = only_problem("[pool]\nfirst = 61184\n[pool.extra]\nx = 1\n")
    assert (problem.line, problem.key) == (3, "pool.extra")


@pytest.mark.parametrize(
    ("text", "got"),
    [("pool = 5\n", "int"), ("[[pool]]\nfirst = 61184\n", "list"), ('log = "json"\n', "str")],
)
def test_a_table_that_is_not_a_table(text: str, got: str) -> None:
    problem = only_problem(text)
    assert problem.line == 1
    assert problem.reason == f"must be a table (got {got})"


# --- types ----------------------------------------------------------------------------------------


def test_wrong_type_message() -> None:
    assert messages_of('[pool]\nfirst = "61184"\n') == [
        "activator.toml:2: pool.first='61184': must be an integer (got str)"
    ]


@pytest.mark.parametrize(
    ("table", "key", "value", "reason"),
    [
        ("pool", "first", "true", "must be an integer (got bool)"),
        ("pool", "last", "65519.0", "must be an integer (got float)"),
        ("pool", "on_exhausted", "1", "must be a string (got int)"),
        ("pool", "wait_timeout_sec", '"5"', "must be a number of seconds (got str)"),
        ("pool", "wait_timeout_sec", "true", "must be a number of seconds (got bool)"),
        ("units", "directories", '"/etc/activator/units"', "must be an array of strings (got str)"),
        ("metrics", "listen", "9464", "must be a string (got int)"),
        ("control", "socket", "[]", "must be a string (got list)"),
        ("control", "group", "0", "must be a string (got int)"),
        ("userdb", "enabled", '"yes"', "must be true or false (got str)"),
        ("userdb", "enabled", "1", "must be true or false (got int)"),
        ("log", "format", "{a = 1}", "must be a string (got dict)"),
        ("log", "format", "1979-05-27", "must be a string (got date)"),
    ],
)
def test_wrong_types(table: str, key: str, value: str, reason: str) -> None:
    problem = only_problem(f"[{table}]\n{key} = {value}\n")
    assert (problem.line, problem.key, problem.reason) == (2, f"{table}.{key}", reason)
    assert problem.is_error


# --- pool -----------------------------------------------------------------------------------------


def test_uid_zero_message() -> None:
    text = "[pool]\n\nfirst = 0\n"
    assert messages_of(text) == ["activator.toml:3: pool.first='0': must not be 0: it is root"]


@pytest.mark.parametrize("key", ["first", "last"])
@pytest.mark.parametrize(
    ("uid", "why"),
    [
        (0, "root"),
        (-1, "system users"),
        (999, "system users"),
        (65534, "nobody"),
        (65535, "(uint16_t)-1"),
        (4294967295, "(uid_t)-1"),
        (2147483647, "treat uid_t as signed"),
        (2**40, "treat uid_t as signed"),
    ],
)
def test_uids_never_leased(key: str, uid: int, why: str) -> None:
    problem = only_problem(f"[pool]\n{key} = {uid}\n")
    assert (problem.line, problem.key, problem.value) == (2, f"pool.{key}", str(uid))
    assert why in problem.reason


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (1000, 1015),
        (61184, 65533),
        (65536, 65551),
        (2147483631, 2147483646),
        (61184, 65519),
    ],
)
def test_valid_ranges_without_warnings(first: int, last: int) -> None:
    settings, problems = check_settings(pool_text(first, last), "activator.toml")
    assert problems == ()
    assert settings is not None
    assert (settings.pool.first, settings.pool.last) == (first, last)


def test_first_above_last() -> None:
    assert messages_of(pool_text(62000, 61999)) == [
        "activator.toml:2: pool.first='62000': must be <= pool.last (got 61999)"
    ]


@pytest.mark.parametrize(("first", "last"), [(65000, 70000), (65533, 65536), (1000, 2147483646)])
def test_range_must_not_contain_nobody(first: int, last: int) -> None:
    problem = only_problem(pool_text(first, last))
    assert (problem.line, problem.key, problem.value) == (3, "pool", f"{first}..{last}")
    assert "65534" in problem.reason


def test_range_problem_is_placed_on_the_bound_written() -> None:
    assert messages_of("[pool]\n# the default first is 61184\nlast = 70000\n") == [
        "activator.toml:3: pool='61184..70000': "
        "must not contain 65534 (nobody) or 65535 ((uint16_t)-1)"
    ]


@pytest.mark.parametrize(
    ("first", "last", "warned"),
    [
        (524272, 524287, False),
        (524273, 524288, True),
        (1000000, 1000015, True),
        (1879048191, 1879048206, True),
        (1879048192, 1879048207, False),
        (65536, 2147483646, True),
    ],
)
def test_container_overlap_warns(first: int, last: int, warned: bool) -> None:
    settings, problems = check_settings(pool_text(first, last), "activator.toml")
    assert settings is not None
    assert [p.severity for p in problems] == ([Severity.WARNING] if warned else [])
    assert all("systemd-nspawn" in p.reason and p.line == 3 for p in problems)


@pytest.mark.parametrize(("first", "last", "warned"), [(1000, 1014, True), (1000, 1015, False)])
def test_small_pool_warns(first: int, last: int, warned: bool) -> None:
    text = pool_text(first, last)
    settings, problems = check_settings(text, "activator.toml")
    assert [(p.severity, p.key) for p in problems] == ([(Severity.WARNING, "pool")] * warned)
    # A warning is no error: parse_settings still gives the settings.
    assert parse_settings(text, "activator.toml") == settings
    assert settings is not None
    assert settings.pool.first == first


@pytest.mark.parametrize(("value", "seconds"), [("5", 5.0), ("0.001", 0.001), ("1e3", 1000.0)])
def test_wait_timeout(value: str, seconds: float) -> None:
    text = f'[pool]\non_exhausted = "wait"\nwait_timeout_sec = {value}\n'
    pool = parse_settings(text, "activator.toml").pool
    assert pool.on_exhausted is OnExhausted.WAIT
    assert pool.wait_timeout_sec == seconds
    assert type(pool.wait_timeout_sec) is float


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "nan", "inf", "1e400", str(10**400)])
def test_wait_timeout_must_be_finite_and_positive(value: str) -> None:
    problem = only_problem(f"[pool]\nwait_timeout_sec = {value}\n")
    assert problem.reason == "must be a finite number of seconds > 0"


@pytest.mark.parametrize("value", ['"WAIT"', '"block"', '""'])
def test_on_exhausted_choices(value: str) -> None:
    assert only_problem(f"[pool]\non_exhausted = {value}\n").reason == "must be 'reject' or 'wait'"


# --- units ----------------------------------------------------------------------------------------


def test_directories_keep_order_and_relative_entries() -> None:
    text = '[units]\ndirectories = ["/etc/activator/units", "units", "/usr/lib/activator/units"]\n'
    assert parse_settings(text, "activator.toml").units.directories == (
        "/etc/activator/units",
        "units",
        "/usr/lib/activator/units",
    )


def test_directories_report_every_bad_entry() -> None:
    problems = problems_of('[units]\ndirectories = ["", 1, "a\\u0000b", "/ok"]\n')
    assert [p.reason for p in problems] == [
        "entry 1 must not be empty",
        "entry 2 must be a string (got int)",
        "entry 3 must not contain a NUL byte",
    ]
    assert {(p.line, p.key) for p in problems} == {(2, "units.directories")}


def test_strings_must_be_valid_unicode() -> None:
    # Only text that did not come from a UTF-8 file can hold a lone surrogate; it is no path.
    problem = only_problem('[units]\ndirectories = ["/a\ud800"]\n')
    assert problem.reason == "entry 1 must be valid Unicode (got a lone surrogate)"


def test_directories_must_not_be_empty() -> None:
    assert only_problem("[units]\ndirectories = []\n").reason == "must list at least one directory"


# --- metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("", None),
        ("127.0.0.1:9464", HostPort("127.0.0.1", 9464)),
        ("0.0.0.0:65535", HostPort("0.0.0.0", 65535)),
        ("localhost:1", HostPort("localhost", 1)),
        ("[::1]:80", HostPort("::1", 80)),
        ("[::]:9464", HostPort("::", 9464)),
        ("[fe80::1%eth0]:9464", HostPort("fe80::1%eth0", 9464)),
        ("[::ffff:127.0.0.1]:9464", HostPort("::ffff:127.0.0.1", 9464)),
    ],
)
def test_metrics_listen_valid(listen: str, expected: HostPort | None) -> None:
    text = f'[metrics]\nlisten = "{listen}"\n'
    assert parse_settings(text, "activator.toml").metrics.listen == expected


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("127.0.0.1", "must be 'host:port'"),
        ("[::1]9464", "must be 'host:port'"),
        ("[::1", "must be 'host:port'"),
        ("127.0.0.1:0", "port must be 1..65535 (got '0')"),
        ("127.0.0.1:65536", "port must be 1..65535"),
        ("127.0.0.1:", "port must be 1..65535 (got '')"),
        ("127.0.0.1:+80", "port must be 1..65535"),
        ("127.0.0.1: 80", "port must be 1..65535"),
        ("localhost:1_0", "port must be 1..65535"),
        ("::1:9464", "must be in brackets"),
        ("example.com:80", "host must be an IPv4 address"),
        ("LOCALHOST:80", "host must be an IPv4 address"),
        ("01.2.3.4:80", "host must be an IPv4 address"),
        (":80", "host must be an IPv4 address"),
        ("[1.2.3.4]:80", "host in [] must be an IPv6 address"),
        ("[]:80", "host in [] must be an IPv6 address"),
        ("[fe80::1%a]b]:80", "must be 'host:port'"),
        ("[fe80::1%eth/0]:80", "host in [] must be an IPv6 address"),
        ("[fe80::1%eth 0]:80", "host in [] must be an IPv6 address"),
        ("[fe80::1%a:b]:80", "host in [] must be an IPv6 address"),
        ("[fe80::1%" + "x" * 16 + "]:80", "host in [] must be an IPv6 address"),
    ],
)
def test_metrics_listen_invalid(listen: str, reason: str) -> None:
    problems = problems_of(f'[metrics]\nlisten = "{listen}"\n')
    assert any(reason in p.reason for p in problems), problems
    assert {(p.line, p.key, p.value) for p in problems} == {(2, "metrics.listen", listen)}


def test_metrics_listen_reports_host_and_port() -> None:
    problems = problems_of('[metrics]\nlisten = "example.com:0"\n')
    assert len(problems) == 2


# --- control --------------------------------------------------------------------------------------


@pytest.mark.parametrize("socket", ["/run/x", "/" + "a" * 106, "/" + "é" * 53, "/run/activator/c"])
def test_control_socket_valid(socket: str) -> None:
    text = f'[control]\nsocket = "{socket}"\n'
    assert parse_settings(text, "activator.toml").control.socket == socket


@pytest.mark.parametrize(
    ("socket", "reason"),
    [
        ("run/activator/control", "must be an absolute path"),
        ("", "must be an absolute path"),
        ("/run/activator/", "must name the socket file, not a directory"),
        ("/", "must name the socket file, not a directory"),
        ("/run/\\u0000x", "must not contain a NUL byte"),
        ("/" + "a" * 107, "must be at most 107 bytes, the room in sun_path (got 108)"),
        ("/" + "é" * 54, "must be at most 107 bytes, the room in sun_path (got 109)"),
    ],
)
def test_control_socket_invalid(socket: str, reason: str) -> None:
    assert only_problem(f'[control]\nsocket = "{socket}"\n').reason == reason


@pytest.mark.parametrize("group", ["", "wheel", "_a-b_9", "a" * 31, "A"])
def test_control_group_valid(group: str) -> None:
    assert (
        parse_settings(f'[control]\ngroup = "{group}"\n', "activator.toml").control.group == group
    )


@pytest.mark.parametrize("group", ["1abc", "-a", "a" * 32, "wheel\\n", "a b", "adm$", "é"])
def test_control_group_invalid(group: str) -> None:
    assert only_problem(f'[control]\ngroup = "{group}"\n').reason.startswith("must be a group name")


# --- log ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ['"xml"', '"JSON"'])
def test_log_format_choices(fmt: str) -> None:
    assert only_problem(f"[log]\nformat = {fmt}\n").reason == "must be 'plain' or 'json'"


# --- collecting every problem ---------------------------------------------------------------------


def test_every_problem_is_reported_in_file_order() -> None:
    text = """\
[log]
format = "xml"
[pool]
first = "61184"
last = 0
on_exhausted = "block"
wait_timeout_sec = -1
frist = 3
[metrics]
listen = "::1:80"
[control]
socket = "run"
group = "1a"
[frob]
x = 1
[userdb]
enabled = "yes"
"""
    problems = problems_of(text)
    assert [(p.line, p.key) for p in problems] == [
        (2, "log.format"),
        (4, "pool.first"),
        (5, "pool.last"),
        (6, "pool.on_exhausted"),
        (7, "pool.wait_timeout_sec"),
        (8, "pool.frist"),
        (10, "metrics.listen"),
        (12, "control.socket"),
        (13, "control.group"),
        (14, "frob"),
        (17, "userdb.enabled"),
    ]
    assert all(p.path == "activator.toml" and p.is_error for p in problems)


def test_problems_are_sorted_by_line_not_by_table() -> None:
    text = "[pool]\nfirst = 0\n[log]\nformat = 1\n[pool.x]\n[units]\ndirectories = []\n"
    assert [p.line for p in problems_of(text)] == [2, 4, 5, 7]


def test_check_settings_reports_a_syntax_error_without_raising() -> None:
    settings, problems = check_settings("[pool\n", "activator.toml")
    assert settings is None
    assert [(p.line, p.reason[:13]) for p in problems] == [(1, "invalid TOML:")]


def test_check_settings_returns_errors_and_warnings() -> None:
    text = "[pool]\nfirst = 1000\nlast = 1001\n[log]\nformat = 1\n"
    settings, problems = check_settings(text, "activator.toml")
    assert settings is None
    assert [(p.line, p.severity) for p in problems] == [(3, Severity.WARNING), (5, Severity.ERROR)]
    # ConfigError carries the errors only: Problem.__str__ cannot tell a warning from an error.
    assert [p.line for p in problems_of(text)] == [5]


# --- TOML syntax ----------------------------------------------------------------------------------


def test_syntax_error_has_the_line_tomllib_reports() -> None:
    problem = only_problem("[pool]\nfirst = 61184\nlast = \n")
    assert (problem.path, problem.line, problem.key, problem.value) == (
        "activator.toml",
        3,
        None,
        None,
    )
    assert problem.reason == "invalid TOML: Invalid value (column 8)"
    assert str(problem) == "activator.toml:3: invalid TOML: Invalid value (column 8)"


def test_syntax_error_at_end_of_file() -> None:
    problem = only_problem('[log]\nformat = "plain')
    assert problem.line is None
    assert problem.reason == "invalid TOML: Unterminated string (at end of file)"


def test_duplicate_key_is_a_syntax_error() -> None:
    assert only_problem("[pool]\nfirst = 61184\nfirst = 61184\n").line == 3


@pytest.mark.parametrize("opener", ["[", "{a = "])
def test_deep_nesting_is_a_config_error(opener: str) -> None:
    assert only_problem("a = " + opener * 5000).reason == "invalid TOML: nested too deeply"


# --- line numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("# c\npool.first = 0\n", 2),
        ("[log]\n\n[pool]\n# c\n\n  first   =   0 # c\n", 6),
        ("\n\npool = { last = 61184, first = 0 }\n", 3),
        ('[pool]\n"first" = 0\n', 2),
        ("[pool]\n'first' = 0\n", 2),
        ('[pool]\n"fi\\u0072st" = 0\n', 2),
        ('["pool"]\nfirst = 0\n', 2),
        ("[ pool ] # c\nfirst = 0\n", 2),
        ("[pool]\r\nlast = 61184\r\nfirst = 0\r\n", 3),
        ("# a\u2028b\u0085c\n[pool]\nfirst = 0\n", 3),
        ('[units]\ndirectories = ["""\nfirst = 1\n[pool]"""]\n[pool]\nfirst = 0\n', 6),
        ("[units]\ndirectories = ['#', '[', '\"']\n[pool]\nfirst = 0\n", 4),
        ("[units]\ndirectories = [ # [\n  '/a', # [\n  \"]\",\n]\n[pool]\nfirst = 0\n", 7),
        ('[units]\ndirectories = ["""a\\"""\n""""]\n[pool]\nfirst = 0\n', 5),
        ("[units]\ndirectories = ['''\n''a''']\nb = '''\n'''\n[pool]\nfirst = 0\n", 7),
    ],
)
def test_problem_lines(text: str, line: int) -> None:
    problems = problems_of(text)
    assert [(p.key, p.line) for p in problems if p.key == "pool.first"] == [("pool.first", line)]


def test_a_key_not_written_has_no_line() -> None:
    index = _index_lines("[pool]\nfirst = 1\n")
    assert index == {("pool",): 1, ("pool", "first"): 2}
    assert _line_of(index, ("pool", "last")) == 1
    assert _line_of(index, ("units", "directories")) is None


def test_index_of_the_example_has_every_key() -> None:
    index = _index_lines(EXAMPLE.read_text(encoding="utf-8"))
    for table in attrs.fields(Settings):
        for field in attrs.fields(type(getattr(Settings(), table.name))):
            assert (table.name, field.name) in index


# --- rendering ------------------------------------------------------------------------------------


def test_render_defaults() -> None:
    text = render_settings(Settings())
    assert text.startswith("[pool]\nfirst = 61184\nlast = 65519\n")
    assert 'listen = "127.0.0.1:9464"\n' in text
    assert parse_settings(text, "x.toml") == Settings()


def test_render_disabled_metrics_and_awkward_strings() -> None:
    settings = Settings(
        units=UnitsSettings(('a"b', "c\\d", "e\nf", "g\x7fh\x01", "é ☃ \t")),
        metrics=MetricsSettings(None),
    )
    text = render_settings(settings)
    assert 'listen = ""\n' in text
    assert parse_settings(text, "x.toml") == settings


def test_toml_value_covers_what_tomllib_returns() -> None:
    assert _toml_value([1, 2.5, float("inf"), float("-inf"), True, {"a b": "c"}]) == (
        '[1, 2.5, inf, -inf, true, {"a b" = "c"}]'
    )
    with pytest.raises(TypeError):
        _toml_value(object())


uids = st.one_of(
    st.tuples(st.integers(1000, 65533), st.integers(1000, 65533)),
    st.tuples(st.integers(65536, 2**31 - 2), st.integers(65536, 2**31 - 2)),
).map(sorted)
texts = st.text(st.characters(exclude_categories=["Cs"]))
hosts = st.one_of(
    st.just("localhost"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.builds(
        lambda a, scope: f"{a}%{scope}",
        st.ip_addresses(v=6).map(str),
        st.from_regex(r"[A-Za-z0-9_.-]{1,15}", fullmatch=True),
    ),
)
socket_paths = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40
).map(lambda s: "/" + s + "s")
valid_settings = st.builds(
    Settings,
    pool=st.builds(
        lambda bounds, on_exhausted, timeout: PoolSettings(
            bounds[0], bounds[1], on_exhausted, timeout
        ),
        uids,
        st.sampled_from(OnExhausted),
        st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False),
    ),
    units=st.builds(
        UnitsSettings,
        st.lists(texts.filter(lambda s: s and "\0" not in s), min_size=1, max_size=4).map(tuple),
    ),
    metrics=st.builds(
        MetricsSettings,
        st.none() | st.builds(HostPort, hosts, st.integers(1, 65535)),
    ),
    control=st.builds(
        ControlSettings,
        socket_paths,
        st.just("") | st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,30}", fullmatch=True),
    ),
    userdb=st.builds(UserdbSettings, st.booleans()),
    log=st.builds(LogSettings, st.sampled_from(LogFormat)),
)


# Capped so that the file stays under 3 s with the ci profile too.
@hypothesis_settings(max_examples=150)
@given(valid_settings)
def test_render_then_parse_round_trips(settings: Settings) -> None:
    assert parse_settings(render_settings(settings), "activator.toml") == settings


def test_hostport_text() -> None:
    assert str(HostPort("::1", 1)) == "[::1]:1"
    assert str(HostPort("fe80::1%eth0", 80)) == "[fe80::1%eth0]:80"
    assert str(HostPort("localhost", 65535)) == "localhost:65535"


# --- fuzzing: only ConfigError comes out ----------------------------------------------------------


def parse_or_problems(text: str) -> Settings | tuple[Problem, ...]:
    try:
        return parse_settings(text, "fuzz.toml")
    except ConfigError as error:
        problems = error.problems
    assert problems
    assert all(p.path == "fuzz.toml" and p.is_error for p in problems)
    return problems


@given(st.text())
def test_random_text_raises_only_config_error(text: str) -> None:
    parse_or_problems(text)


@given(st.binary())
def test_random_bytes_raise_only_config_error(data: bytes) -> None:
    parse_or_problems(data.decode("utf-8", "surrogateescape"))


@given(st.lists(st.sampled_from(["[pool]", "[units]", "first = ", "= 1", '"', "'''", "[", "]"])))
def test_random_toml_fragments_raise_only_config_error(fragments: list[str]) -> None:
    parse_or_problems("\n".join(fragments))


toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    texts,
    st.dates(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
table_names = st.sampled_from(["pool", "units", "metrics", "control", "userdb", "log"]) | texts
key_names = (
    st.sampled_from(
        [
            *("first", "last", "on_exhausted", "wait_timeout_sec", "directories", "listen"),
            *("socket", "group", "enabled", "format"),
        ]
    )
    | texts
)
documents = st.dictionaries(
    table_names, st.dictionaries(key_names, toml_values, max_size=5) | toml_values, max_size=6
)


def render_document(document: dict[str, object]) -> str:
    lines = []
    for table, content in document.items():
        if isinstance(content, dict):
            lines.append(f"[{_toml_value(table)}]")
            lines.extend(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in content.items())
        else:
            lines.insert(0, f"{_toml_value(table)} = {_toml_value(content)}")
    return "\n".join(lines)


@hypothesis_settings(max_examples=50)
@given(documents)
def test_random_documents_give_settings_or_placed_problems(document: dict[str, object]) -> None:
    result = parse_or_problems(render_document(document))
    if isinstance(result, tuple):
        # Every key is on a line of its own, so every problem about a key has a line.
        assert all(p.line is not None for p in result if p.key is not None), result


# --- load_settings --------------------------------------------------------------------------------


def test_load_missing_given_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: No such file or directory"


def test_load_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: Is a directory"


def test_load_default_path_absent_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    assert load_settings(None) == Settings()
    assert load_settings(None, units_override=["/u"]) == Settings(units=UnitsSettings(("/u",)))


def test_load_default_path_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "activator.toml"
    path.write_text('[log]\nformat = "json"\n[units]\ndirectories = ["u"]\n', encoding="utf-8")
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", str(path))
    assert load_settings(None) == Settings(
        units=UnitsSettings((str(tmp_path / "u"),)), log=LogSettings(LogFormat.JSON)
    )


def test_load_resolves_relative_directories_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "activator.toml"
    path.write_text('[units]\ndirectories = ["units", "/abs", "../lib/units"]\n', encoding="utf-8")
    expected = (str(tmp_path / "etc" / "units"), "/abs", str(tmp_path / "etc" / "../lib/units"))
    assert load_settings(str(path)).units.directories == expected
    # A relative path to the file itself works the same.
    monkeypatch.chdir(tmp_path)
    assert load_settings("etc/activator.toml").units.directories == expected


def test_units_override_replaces_the_file_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "activator.toml"
    path.write_text('[units]\ndirectories = ["units"]\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    loaded = load_settings(str(path), units_override=["/x", "here"])
    assert loaded.units.directories == ("/x", os.path.join(os.getcwd(), "here"))
    assert load_settings(str(path), units_override=()).units.directories == (
        str(tmp_path / "units"),
    )


def test_units_override_must_not_be_empty(tmp_path: Path) -> None:
    path = tmp_path / "activator.toml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), units_override=["/x", ""])
    assert str(info.value) == "command line: --units='': must not be empty or contain a NUL byte"


def test_load_reports_every_error_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "activator.toml"
    path.write_text("[pool]\nfirst = 0\nlast = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    assert [(p.path, p.line) for p in info.value.problems] == [(str(path), 2), (str(path), 3)]


def test_load_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "activator.toml"
    path.write_bytes(b'[log]\nformat = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    (problem,) = info.value.problems
    assert (problem.path, problem.line) == (str(path), 2)
    assert problem.reason.startswith("not valid UTF-8")


def test_load_hands_out_warnings(tmp_path: Path) -> None:
    path = tmp_path / "activator.toml"
    path.write_text("[pool]\nfirst = 1000\nlast = 1001\n", encoding="utf-8")
    warnings: list[Problem] = []
    assert load_settings(str(path), on_warning=warnings.append).pool.last == 1001
    assert [(p.line, p.severity) for p in warnings] == [(3, Severity.WARNING)]
    # Warnings are handed out even when errors follow.
    path.write_text("[pool]\nfirst = 1000\nlast = 1001\n[log]\nformat = 1\n", encoding="utf-8")
    warnings.clear()
    with pytest.raises(ConfigError):
        load_settings(str(path), on_warning=warnings.append)
    assert len(warnings) == 1


# --- the example file -----------------------------------------------------------------------------


def test_example_parses_to_the_defaults_but_for_units() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert check_settings(text, str(EXAMPLE)) == (
        attrs.evolve(Settings(), units=UnitsSettings(("units",))),
        (),
    )


def test_example_loads_with_units_beside_it() -> None:
    expected = attrs.evolve(Settings(), units=UnitsSettings((str(EXAMPLE.parent / "units"),)))
    assert load_settings(str(EXAMPLE)) == expected


def test_range_problems_are_reported_beside_other_errors_of_the_table() -> None:
    text = "[pool]\nfirst = 65000\nlast = 70000\nfrist = 1\non_exhausted = 3\n"
    with pytest.raises(ConfigError) as e:
        parse_settings(text, "a.toml")
    assert [str(p) for p in e.value.problems] == [
        "a.toml:3: pool='65000..70000': must not contain 65534 (nobody) or 65535 ((uint16_t)-1)",
        "a.toml:4: pool.frist: unknown key (known: first, last, on_exhausted, wait_timeout_sec,"
        " max_waiting, reuse_delay_sec)",
        "a.toml:5: pool.on_exhausted='3': must be a string (got int)",
    ]


def test_a_refused_bound_is_not_judged_by_its_default() -> None:
    with pytest.raises(ConfigError) as e:
        parse_settings("[pool]\nfirst = 'x'\nlast = 70000\n", "a.toml")
    assert [p.key for p in e.value.problems] == ["pool.first"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("max_waiting = 0", "pool.max_waiting='0': must be 1..1000000"),
        ("max_waiting = true", "pool.max_waiting='true': must be an integer (got bool)"),
        (
            "reuse_delay_sec = -1",
            "pool.reuse_delay_sec='-1': must be a finite number of seconds >= 0",
        ),
        (
            "reuse_delay_sec = nan",
            "pool.reuse_delay_sec='nan': must be a finite number of seconds >= 0",
        ),
    ],
)
def test_wait_queue_bound_and_reuse_delay_are_checked(line: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings(f"[pool]\n{line}\n", "a.toml")
    assert [str(p) for p in error.value.problems] == [f"a.toml:2: {reason}"]


def test_reuse_delay_may_be_zero_or_more() -> None:
    settings = parse_settings("[pool]\nreuse_delay_sec = 0\nmax_waiting = 3\n", "a.toml")
    assert (settings.pool.reuse_delay_sec, settings.pool.max_waiting) == (0.0, 3)
