"""Unit syntax: lines, names, drop-in order and specifiers (pure, no files)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from activator.errors import Severity
from activator.units import (
    UnitDirectory,
    UnitName,
    _dropin_names,
    decode_unit_bytes,
    escape_unit_name_part,
    expand_specifiers,
    is_masked,
    parse_unit_name,
    parse_unit_text,
    resolve_unit_files,
    unescape_unit_name_part,
)


def parse(text: str) -> list[tuple[str, str, str, int]]:
    result = parse_unit_text(text, "u.service", unit_type="service")
    return [(a.section, a.key, a.value, a.line) for a in result.assignments]


def problems(text: str) -> list[str]:
    return [str(p) for p in parse_unit_text(text, "u.service", unit_type="service").problems]


def test_sections_keys_comments_and_line_numbers() -> None:
    text = (
        "# comment\n; also a comment\n[Unit]\nDescription = hello world \n\n"
        "[Service]\nExecStart=/bin/true\n"
    )
    assert parse(text) == [
        ("Unit", "Description", "hello world", 4),
        ("Service", "ExecStart", "/bin/true", 7),
    ]
    assert problems(text) == []


def test_continuation_joins_with_a_space_and_skips_comment_lines() -> None:
    text = "[Service]\nExecStart=/bin/echo a \\\n# skipped\n  b\\\nc\nUser=x\n"
    # systemd replaces the backslash with a space, appends the next line as it is, and names the
    # last line of a continued line in messages.
    assert parse(text) == [
        ("Service", "ExecStart", "/bin/echo a    b c", 5),
        ("Service", "User", "x", 6),
    ]


def test_a_comment_ending_in_a_backslash_continues_nothing() -> None:
    # The next line is read on its own, as systemd does: it must not vanish into the comment.
    text = "[Service]\nExecStart=/bin/true\n# see https://example.org/doc \\\nDynamicUser=yes\n"
    assert parse(text)[-1] == ("Service", "DynamicUser", "yes", 4)


@pytest.mark.parametrize("end", ["\r", "\r\n", "\n\r", "\n"])
def test_every_line_end_of_systemds_read_line_ends_a_line(end: str) -> None:
    text = end.join(["[Service]", "# c", "DynamicUser=yes", "User=x"]) + end
    assert parse(text) == [("Service", "DynamicUser", "yes", 3), ("Service", "User", "x", 4)]


def test_byte_order_mark_is_skipped() -> None:
    assert parse("\ufeff[Service]\nUser=x\n") == [("Service", "User", "x", 2)]


def test_control_characters_in_keys_and_sections_are_refused() -> None:
    assert problems("[Ser\x1bvice]\nA=b\n[Service]\nK\x1b[31m=x\n") == [
        "u.service:1: invalid section header '[Ser\\x1bvice]'",
        "u.service:4: invalid key name 'K\\x1b[31m'",
    ]


def test_long_continued_lines_are_refused_in_linear_time() -> None:
    lines = ["[Service]", "A=" + "x\\"] + ["y" * 1000 + "\\"] * 1100 + ["end"]
    result = parse_unit_text("\n".join(lines), "u.service", unit_type="service")
    assert "line is too long" in [p.reason for p in result.problems]


def test_an_even_run_of_backslashes_does_not_continue() -> None:
    assert parse("[Service]\nA=x\\\\\nB=y\n") == [
        ("Service", "A", "x\\\\", 2),
        ("Service", "B", "y", 3),
    ]
    assert parse("[Service]\nA=x\\\\\\\nB=y\n") == [("Service", "A", "x\\\\ B=y", 3)]


def test_crlf_line_endings_are_accepted() -> None:
    assert parse("[Service]\r\nUser=x\r\n") == [("Service", "User", "x", 2)]


def test_errors_name_file_and_line() -> None:
    text = "User=early\n[Service]\nno equals sign\n=value\n[Broken\n"
    assert problems(text) == [
        "u.service:1: assignment outside of any section",
        "u.service:3: missing '=' in 'no equals sign'",
        "u.service:4: missing key name in '=value'",
        "u.service:5: invalid section header '[Broken'",
    ]


def test_unknown_section_is_a_warning_and_its_keys_are_skipped() -> None:
    result = parse_unit_text(
        "[Timer]\nOnCalendar=daily\n[X-Mine]\nA=b\n", "t.service", unit_type="service"
    )
    assert result.assignments == ()
    assert [(str(p), p.severity) for p in result.problems] == [
        ("t.service:1: Unknown section 'Timer'. Ignoring.", Severity.WARNING)
    ]


def test_socket_section_is_known_only_to_sockets() -> None:
    assert parse_unit_text("[Socket]\nAccept=yes\n", "s.socket", unit_type="socket").problems == ()
    assert parse_unit_text("[Socket]\nAccept=yes\n", "s.service", unit_type="service").problems


def test_trailing_backslash_at_end_of_file_is_reported() -> None:
    assert problems("[Service]\nUser=x\\") == ["u.service:2: file ends inside a continued line"]
    assert problems("[Service]\nUser=x\\\ny\\") == [
        "u.service:3: file ends inside a continued line"
    ]


def test_decode_refuses_nul_and_invalid_utf8_with_the_line() -> None:
    assert decode_unit_bytes(b"[Service]\n\xc3(\n", "a.service")[1] is not None
    _, problem = decode_unit_bytes(b"[Service]\nA=\xff\n", "a.service")
    assert str(problem) == "a.service:2: file is not valid UTF-8 (byte 0xff)"
    _, problem = decode_unit_bytes(b"[Service]\n\n\0", "a.service")
    assert str(problem) == "a.service:3: file contains a NUL byte"
    assert decode_unit_bytes("[Unit]\nDescription=é\n".encode(), "a.service") == (
        "[Unit]\nDescription=é\n",
        None,
    )


@given(st.text())
def test_any_text_parses_to_assignments_and_problems_without_raising(text: str) -> None:
    result = parse_unit_text(text, "f.socket", unit_type="socket")
    for a in result.assignments:
        assert a.section in ("Unit", "Socket", "Install")
        assert "\n" not in a.value
        assert a.value == a.value.strip()
    assert all(p.line is not None and p.line >= 1 for p in result.problems)


# --- names -------------------------------------------------------------------------------------


def test_unit_names_split_into_prefix_instance_and_suffix() -> None:
    assert parse_unit_name("waldo.socket") == UnitName("waldo", None, "socket")
    template = parse_unit_name("waldo@.service")
    assert template == UnitName("waldo", "", "service")
    assert template.is_template
    assert not template.is_instance
    instance = parse_unit_name("foobar@customerxyz.service")
    assert instance.is_instance
    assert instance.template.name == "foobar@.service"
    assert instance.stem == "foobar@customerxyz"
    assert instance.with_suffix("socket").name == "foobar@customerxyz.socket"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("foo.timer", "unit name must end in .service or .socket (got 'foo.timer')"),
        ("foo", "unit name must end in .service or .socket (got 'foo')"),
        ("@x.service", "unit name must have a prefix before '@' or '.' (got '@x.service')"),
        ("a b.service", "unit name prefix must not contain ' ' (got 'a b.service')"),
        ("a@b/c.service", "unit name instance must not contain '/' (got 'a@b/c.service')"),
        ("a@b c.service", "unit name instance must not contain ' ' (got 'a@b c.service')"),
        ("x" * 250 + ".service", "unit name must be at most 255 characters (got 258)"),
    ],
)
def test_invalid_unit_names_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_unit_name(text)
    assert str(e.value) == reason


@given(st.text(min_size=1, max_size=40))
def test_escaped_names_are_valid_instances_and_unescape_back(text: str) -> None:
    escaped = escape_unit_name_part(text)
    assume(len(escaped) <= 200)  # a multi-byte character escapes to up to 16 characters
    name = parse_unit_name(f"foo@{escaped}.service")
    assert unescape_unit_name_part(name.instance or "") == text


def test_an_instance_may_contain_at_signs() -> None:
    assert parse_unit_name("foo@a@b.service").instance == "a@b"


@pytest.mark.parametrize("bad", ["a\\xzzb", "a\\b", "a\\xffb", "\\x"])
def test_unescaping_refuses_bad_escapes_and_non_utf8(bad: str) -> None:
    with pytest.raises(ValueError):
        unescape_unit_name_part(bad)


def test_unescape_follows_systemd_escape() -> None:
    # systemd-escape 'a-b/c d' -> 'a\x2db-c\x20d'
    assert escape_unit_name_part("a-b/c d") == "a\\x2db-c\\x20d"
    assert unescape_unit_name_part("a\\x2db-c\\x20d") == "a-b/c d"


# --- specifiers --------------------------------------------------------------------------------


def test_every_specifier_resolves_for_an_instance() -> None:
    name = parse_unit_name("foo-bar@my-customer.service")
    assert expand_specifiers("%i|%I|%n|%N|%p|%P|%t|%S|%C|%L|%%", name) == (
        "my-customer|my/customer|foo-bar@my-customer.service|foo-bar@my-customer|foo-bar|foo/bar"
        "|/run|/var/lib|/var/cache|/var/log|%"
    )


def test_instance_specifier_of_a_plain_unit_is_empty() -> None:
    assert expand_specifiers("[%i]", parse_unit_name("plain.service")) == "[]"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("%u", "unknown specifier '%u' (known: %i %I %n %N %p %P %t %S %C %L %%)"),
        ("100%", "value ends in a lone '%' (write '%%' for a percent sign)"),
    ],
)
def test_bad_specifiers_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        expand_specifiers(text, parse_unit_name("a.service"))
    assert str(e.value) == reason


@given(st.text())
def test_doubled_percent_signs_expand_to_the_text(text: str) -> None:
    assert expand_specifiers(text.replace("%", "%%"), parse_unit_name("a@b.service")) == text


# --- which files make up a unit ---------------------------------------------------------------


def test_fragment_comes_from_the_first_directory_and_instances_fall_back_to_templates() -> None:
    etc = UnitDirectory("/etc/u", frozenset({"foo@.service", "bar.service"}))
    lib = UnitDirectory("/lib/u", frozenset({"foo@.service", "foo@x.service"}))
    dirs = [etc, lib]
    files = resolve_unit_files(parse_unit_name("foo@y.service"), dirs)
    assert files is not None
    assert files.fragment == "/etc/u/foo@.service"
    own = resolve_unit_files(parse_unit_name("foo@x.service"), dirs)
    assert own is not None
    assert own.fragment == "/lib/u/foo@x.service"
    assert resolve_unit_files(parse_unit_name("baz.service"), dirs) is None


def test_dropins_apply_sorted_by_name_and_the_more_specific_file_wins() -> None:
    etc = UnitDirectory(
        "/etc/u",
        frozenset({"foo-bar@.service"}),
        {
            "foo-bar@.service.d": frozenset({"20-b.conf", "10-a.conf"}),
            "foo-bar@x.service.d": frozenset({"20-b.conf", "30-c.conf"}),
            "service.d": frozenset({"40-d.conf"}),
        },
    )
    lib = UnitDirectory(
        "/lib/u",
        frozenset(),
        {
            "service.d": frozenset({"00-all.conf", "30-c.conf", "40-d.conf"}),
            "foo-.service.d": frozenset({"15-prefix.conf"}),
            "foo-@x.service.d": frozenset({"16-prefix-instance.conf"}),
            "foo-@.service.d": frozenset({"17-prefix-template.conf", "30-c.conf"}),
        },
    )
    files = resolve_unit_files(parse_unit_name("foo-bar@x.service"), [etc, lib])
    assert files is not None
    assert files.dropins == (
        "/lib/u/service.d/00-all.conf",
        "/etc/u/foo-bar@.service.d/10-a.conf",
        "/lib/u/foo-.service.d/15-prefix.conf",
        "/lib/u/foo-@x.service.d/16-prefix-instance.conf",
        "/lib/u/foo-@.service.d/17-prefix-template.conf",
        "/etc/u/foo-bar@x.service.d/20-b.conf",
        "/etc/u/foo-bar@x.service.d/30-c.conf",
        "/etc/u/service.d/40-d.conf",
    )


def test_a_unit_specific_dropin_beats_a_type_wide_one_of_the_same_name_anywhere() -> None:
    # systemd lists service.d after the unit-specific directories of every units directory.
    first = UnitDirectory("/d1", frozenset({"foo.service"}), {"service.d": frozenset({"x.conf"})})
    second = UnitDirectory("/d2", frozenset(), {"foo.service.d": frozenset({"x.conf"})})
    files = resolve_unit_files(parse_unit_name("foo.service"), [first, second])
    assert files is not None
    assert files.dropins == ("/d2/foo.service.d/x.conf",)


@pytest.mark.parametrize(
    ("name", "dirs"),
    [
        ("foo-bar-baz.service", ["foo-bar-baz.service.d", "foo-bar-.service.d", "foo-.service.d"]),
        ("a--b.service", ["a--b.service.d", "a--.service.d", "a-.service.d"]),
        ("-foo.service", ["-foo.service.d"]),
        (
            "foo-bar@x.service",
            [
                "foo-bar@x.service.d", "foo-bar@.service.d", "foo-.service.d", "foo-@x.service.d",
                "foo-@.service.d",
            ],
        ),
    ],
)  # fmt: skip
def test_dash_prefix_dropin_directories_follow_systemd(name: str, dirs: list[str]) -> None:
    assert _dropin_names(parse_unit_name(name)) == dirs


def test_template_itself_does_not_read_instance_dropins() -> None:
    etc = UnitDirectory(
        "/etc/u",
        frozenset({"t@.service"}),
        {"t@.service.d": frozenset({"a.conf"}), "t@i.service.d": frozenset({"b.conf"})},
    )
    files = resolve_unit_files(parse_unit_name("t@.service"), [etc])
    assert files is not None
    assert files.dropins == ("/etc/u/t@.service.d/a.conf",)


def test_masking_hides_a_unit_and_a_dropin_in_every_later_directory() -> None:
    etc = UnitDirectory(
        "/etc/u",
        frozenset({"a.service"}),
        {"a.service.d": frozenset({"x.conf"})},
        masked=frozenset({"b.service", "a.service.d/x.conf", "t@.service"}),
    )
    lib = UnitDirectory(
        "/lib/u",
        frozenset({"b.service", "t@.service"}),
        {"a.service.d": frozenset({"x.conf", "y.conf"})},
    )
    files = resolve_unit_files(parse_unit_name("a.service"), [etc, lib])
    assert files is not None
    assert files.dropins == ("/lib/u/a.service.d/y.conf",)
    assert resolve_unit_files(parse_unit_name("b.service"), [etc, lib]) is None
    assert is_masked(parse_unit_name("t@i.service"), [etc, lib])
    assert not is_masked(parse_unit_name("a.service"), [etc, lib])
    # Behind the unit file it would mask, a mask has no effect.
    assert not is_masked(parse_unit_name("b.service"), [lib, etc])
    # An instance with a file of its own is not masked by a mask of its template.
    own = UnitDirectory("/own", frozenset({"t@i.service"}))
    assert not is_masked(parse_unit_name("t@i.service"), [own, etc])
    assert resolve_unit_files(parse_unit_name("t@i.service"), [own, etc]) is not None
