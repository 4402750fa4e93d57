"""activator run's transient units, and the EnvironmentFile= parser: pure, no root."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator import values as v
from activator.errors import ConfigError
from activator.transient import COMMAND_LINE, transient_service


def test_a_command_and_properties_make_the_service_a_unit_file_would() -> None:
    service, warnings = transient_service(
        "run-1a2b.service",
        ["sh", "-c", "echo $HOME %i"],
        ["DynamicUser=yes", "StateDirectory=wuff"],
    )
    assert warnings == []
    assert service.name.name == "run-1a2b.service"
    command = service.exec_start[0]
    # Words reach the program as typed: no specifier and no $VAR expansion by activator.
    assert command.argv == ("sh", "-c", "echo $HOME %i")
    assert not command.expand_environment
    # DynamicUser=yes brings systemd's implications, as in a unit file.
    assert service.dynamic_user
    assert service.protect_system is v.ProtectSystem.STRICT
    assert service.private_tmp
    assert service.state_directory == ("wuff",)


@given(st.lists(st.text(st.characters(blacklist_characters="\0"), min_size=0), min_size=1))
def test_any_argv_without_nul_reaches_the_program_unchanged(argv: list[str]) -> None:
    argv = ["/bin/echo", *argv]
    service, _ = transient_service("run-x.service", argv, [])
    assert service.exec_start[0].argv == tuple(argv)


def test_property_errors_name_the_property_by_its_position() -> None:
    with pytest.raises(ConfigError) as error:
        transient_service("run-x.service", ["true"], ["Nice=5", "PrivateTmp=maybe", "Nice=99"])
    assert [str(p) for p in error.value.problems] == [
        f"{COMMAND_LINE}:2: PrivateTmp='maybe': must be a boolean like 'yes' or 'no' (got 'maybe')",
        f"{COMMAND_LINE}:3: Nice='99': must be -20..19 (got 99)",
    ]


@pytest.mark.parametrize(
    ("name", "command", "properties", "reason"),
    [
        ("run-x.service", [], [], "no command given"),
        ("run-x.service", ["true"], ["NoEquals"], "must be Directive=value on one line"),
        ("run-x.service", ["true"], ["A=b\nC=d"], "must be Directive=value on one line"),
        ("foo@.service", ["true"], [], "must name a service (NAME.service), not a template"),
        ("run-x.socket", ["true"], [], "must name a service (NAME.service), not a template"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    name: str, command: list[str], properties: list[str], reason: str
) -> None:
    with pytest.raises(ConfigError) as error:
        transient_service(name, command, properties)
    assert reason in str(error.value.problems[0])


def test_an_unknown_directive_is_a_warning_as_in_a_unit_file() -> None:
    _, warnings = transient_service("run-x.service", ["true"], ["Frobnicate=yes"])
    assert [p.line for p in warnings] == [1]
    assert "Frobnicate" in str(warnings[0])


# --- EnvironmentFile= ------------------------------------------------------------------------


def test_environment_file_syntax_as_systemd_reads_it() -> None:
    text = (
        "# a comment\n"
        "; another\n"
        "\n"
        "A=1\n"
        "  B = two words  \n"
        'C="q \\" \\$x \\n"\n'
        "D='lit \\ '\n"
        "E=a\\\n"
        "b\n"
        "F=\n"
        'G=x"y z"w\n'
    )
    assert v.parse_environment_file(text) == [
        ("A", "1"),
        ("B", "two words"),
        ("C", 'q " $x \\n'),
        ("D", "lit \\ "),
        ("E", "ab"),
        ("F", ""),
        ("G", "xy zw"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A=1\nnoequals\n", "line 2: expected KEY=VALUE"),
        ("A='open\n", "line 1: unterminated ' quote"),
        ("1A=x\n", "line 1: "),
    ],
)
def test_environment_file_errors_name_the_line(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        v.parse_environment_file(text)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
            st.text(st.characters(blacklist_characters="\0\n'", blacklist_categories=["Cs"])),
        ),
        max_size=5,
    )
)
def test_single_quoted_values_come_back_verbatim(pairs: list[tuple[str, str]]) -> None:
    text = "".join(f"{key}='{value}'\n" for key, value in pairs)
    assert v.parse_environment_file(text) == pairs
