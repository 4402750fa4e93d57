"""Which unit an ``activator enable NAME`` means (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator.catalog import Catalog, build_catalog
from activator.instances import InstanceError, resolve
from activator.units import UnitDirectory, UnitName

SERVICE = b"[Service]\nExecStart=/bin/true\nDynamicUser=yes\n"
SOCKET = b"[Socket]\nListenStream=/run/x/%i.sock\nAccept=yes\n"


def catalog(**files: bytes) -> Catalog:
    directory = UnitDirectory("/u", frozenset(files))
    return build_catalog([directory], {f"/u/{name}": data for name, data in files.items()})


WITH_SOCKET = catalog(**{"gitd@.socket": SOCKET, "gitd@.service": SERVICE})
SERVICE_ONLY = catalog(**{"job@.service": SERVICE})


def test_a_name_without_type_is_the_socket_when_a_socket_template_exists() -> None:
    assert resolve("gitd@alice", WITH_SOCKET).name == "gitd@alice.socket"
    assert resolve("gitd@alice.service", WITH_SOCKET).name == "gitd@alice.service"
    assert resolve("job@nightly", SERVICE_ONLY).name == "job@nightly.service"
    # Once the template is gone, an enabled socket is still found by its name (to disable it).
    assert resolve("gitd@alice", None, known=["gitd@alice.socket"]).name == "gitd@alice.socket"
    assert resolve("gitd@alice", None).name == "gitd@alice.service"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("gitd", "not an instance of a template"),
        ("gitd@.socket", "not an instance of a template"),
        ("echo.socket", "not an instance of a template"),
        ("gitd@alice.timer", "only .socket and .service units"),
        ("gitd@a/b", "gitd@a/b: "),
        ("", ": "),
    ],
)
def test_names_that_cannot_be_enabled_are_refused_naming_them(text: str, reason: str) -> None:
    with pytest.raises(InstanceError, match=reason) as error:
        resolve(text, WITH_SOCKET)
    assert str(error.value).startswith(f"{text}: ")


@given(st.text(max_size=40))
def test_any_text_resolves_to_an_instance_or_a_clear_refusal(text: str) -> None:
    outcome: object
    try:
        outcome = resolve(text, WITH_SOCKET)
    except InstanceError as error:
        outcome = error
    if isinstance(outcome, InstanceError):
        assert str(outcome).startswith(f"{text}: ")
    else:
        assert isinstance(outcome, UnitName)
        assert outcome.is_instance
        assert outcome.suffix in ("socket", "service")
