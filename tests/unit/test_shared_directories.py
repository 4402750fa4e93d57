"""Directories the instances of a template share (issue 9, per-connection instances): which
ones they are, that an instance's directory never nests in another's, and what ``check`` says
of an Accept=yes socket's connections."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from activator.cli import main
from activator.errors import ConfigError
from activator.model import (
    ServiceUnit,
    SharedDirectories,
    build_service,
    every_directory,
    shared_directories,
)
from activator.units import parse_unit_name, parse_unit_text

#: The specifiers whose value is the same for every instance of a template, and those whose
#: value is the instance's own (``%I`` is left out: with a connection's instance name it holds
#: a ``/``, which directories refuse).
SAME = ["%p", "%P", "%%"]
OWN = ["%i", "%n", "%N"]


def build(name: str, text: str) -> ServiceUnit:
    unit, _ = build_service(
        parse_unit_name(name), [parse_unit_text(text, "/u/t@.service", unit_type="service")]
    )
    return unit


def connection(number: int, port: int) -> str:
    """An Accept=yes connection's instance, as the manager names it."""
    return f"{number}-127.0.0.1:7007-127.0.0.1:{port}"


component = st.lists(
    st.one_of(
        st.text(st.sampled_from("abc_-"), min_size=1, max_size=3), st.sampled_from(SAME + OWN)
    ),
    min_size=1,
    max_size=3,
).map("".join)
directory_word = st.lists(component, min_size=1, max_size=3).map("/".join)


@given(
    st.dictionaries(
        st.sampled_from(["RuntimeDirectory", "StateDirectory", "CacheDirectory", "LogsDirectory"]),
        st.lists(directory_word, min_size=1, max_size=3),
        min_size=1,
    ),
    st.integers(1, 10**6),
    st.integers(1, 65535),
)
def test_a_directory_is_shared_exactly_when_its_text_names_no_instance_specifier(
    written: dict[str, list[str]], number: int, port: int
) -> None:
    """Comparing the connection's instance with the template's sample instance gives the rule
    read from the text: shared unless ``%i``, ``%n`` or ``%N`` is in the word."""
    text = "[Service]\nExecStart=/bin/true\n" + "".join(
        f"{key}={' '.join(words)}\n" for key, words in written.items()
    )
    mine = build(f"t@{connection(number, port)}.service", text)
    sample = build("t@instance.service", text)
    shared = shared_directories(mine, sample)
    for key, field in (
        ("RuntimeDirectory", "runtime"),
        ("StateDirectory", "state"),
        ("CacheDirectory", "cache"),
        ("LogsDirectory", "logs"),
    ):
        words = written.get(key, [])
        resolved = getattr(mine, f"{field}_directory")
        expected = tuple(
            name
            for word, name in zip(words, resolved, strict=True)
            if not any(s in word.replace("%%", "") for s in OWN)
        )
        assert getattr(shared, field) == expected
    assert bool(shared) == any(
        not any(s in w.replace("%%", "") for s in OWN) for ws in written.values() for w in ws
    )


def test_shared_directories_say_which_paths_and_refuse_a_pointless_comparison() -> None:
    text = (
        "[Service]\nExecStart=/bin/true\nStateDirectory=x x/%i\nRuntimeDirectory=x %n\n"
        "LogsDirectory=%p\n"
    )
    mine = build(f"t@{connection(1, 4711)}.service", text)
    shared = shared_directories(mine, build("t@instance.service", text))
    assert shared == SharedDirectories(runtime=("x",), state=("x",), logs=("t",))
    assert shared.paths == ("/run/x", "/var/lib/x", "/var/log/t")
    assert not shared_directories(
        build("t@a.service", "[Service]\nExecStart=/bin/true\nStateDirectory=%i\n"),
        build("t@b.service", "[Service]\nExecStart=/bin/true\nStateDirectory=%i\n"),
    )
    assert every_directory(mine).state == ("x", f"x/{connection(1, 4711)}")
    with pytest.raises(ValueError, match=r"must be another instance of t@\.service"):
        shared_directories(mine, mine)
    with pytest.raises(ValueError, match="must both be instances"):
        shared_directories(mine, build("t.service", "[Service]\nExecStart=/bin/true\n"))


#: Instance names made of the pieces that unescape to slashes, dots and dashes.
_PIECES = ["a", "b", "-", ".", "..", "\\x2d", "\\x2f", "\\x2e", "_", "private"]
instance_names = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6).map("".join)


@given(instance_names, instance_names, st.sampled_from(["%i", "%I"]))
def test_no_instance_ever_gets_a_directory_inside_another_instances(
    one: str, other: str, specifier: str
) -> None:
    """Each instance is a customer with a user of its own: whatever two instances build, no
    directory of one lies inside a directory of the other (``%I`` with a ``/`` is refused)."""
    assume(one != other)
    text = (
        f"[Service]\nExecStart=/bin/true\nStateDirectory=u/{specifier}\n"
        f"RuntimeDirectory={specifier}\nCacheDirectory={specifier}/c\n"
        f"LogsDirectory=l/{specifier}/x\n"
    )
    paths = []
    for instance in (one, other):
        try:
            name = parse_unit_name(f"u@{instance}.service")
        except ValueError:
            return
        try:
            unit = build(name.name, text)
        except ConfigError:
            return
        paths.append(every_directory(unit).paths)
    mine, theirs = paths
    assert not any(b.startswith(f"{a}/") for a in mine for b in theirs)
    assert not any(a.startswith(f"{b}/") for a in mine for b in theirs)


# --- activator check ---------------------------------------------------------------------------

SOCKET = "[Socket]\nListenStream=127.0.0.1:7100\nAccept=yes\n"
SERVICE = "[Service]\nDynamicUser=yes\nExecStart=/bin/cat\n"


@pytest.mark.parametrize(
    ("directories", "says"),
    [
        (
            "StateDirectory=x\nRuntimeDirectory=x/%i\n",
            "    every connection runs as the one dynamic user 'echo', as systemd's instances do: "
            "/var/lib/x is the same for every connection (each still has its own sandbox, /tmp "
            "and cgroup)\n",
        ),
        (
            "RuntimeDirectory=x/%i x-%n\n",
            "    each connection runs as a fresh dynamic user of its own\n",
        ),
        ("", "    each connection runs as a fresh dynamic user of its own\n"),
        (
            "User=web\n",
            "    every connection runs as the dynamic user 'web' (User=), at once\n",
        ),
        (
            "StateDirectory=x/%I\n",
            "    every connection fails: {units}/echo@.service:4: StateDirectory='x/%I': %I gives "
            "'1/127.0.0.1:7007/127.0.0.1:41234': an instance's directory may not nest in "
            "another's; use %i\n",
        ),
    ],
    ids=["shared", "per-instance", "none", "user", "fails"],
)
def test_check_says_whether_connections_share_one_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], directories: str, says: str
) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "echo.socket").write_text(SOCKET)
    (units / "echo@.service").write_text(SERVICE + directories)
    assert main(["check", str(units)]) == 0
    out = capsys.readouterr().out
    assert (
        "  Accept=yes: each connection starts an instance of echo@.service (at most 64 at once)\n"
        + says.format(units=units)
    ) in out
