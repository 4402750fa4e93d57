"""The record of enabled instances: one empty file each, read back by a new reader."""

from __future__ import annotations

from pathlib import Path

from activator.instances import EnabledUnits
from activator.units import parse_unit_name


def test_enabled_units_are_one_file_each_and_survive_a_new_reader(tmp_path: Path) -> None:
    store = EnabledUnits(str(tmp_path / "enabled"))
    assert store.load() == ([], [])  # no directory yet: none enabled
    alice, bob = parse_unit_name("gitd@alice.socket"), parse_unit_name("job@bob.service")
    assert store.add(alice)
    assert not store.add(alice)  # already enabled
    assert store.add(bob)
    (tmp_path / "enabled" / "README").write_text("notes")
    (tmp_path / "enabled" / ".hidden").write_text("")
    names, warnings = EnabledUnits(str(tmp_path / "enabled")).load()
    assert names == ["gitd@alice.socket", "job@bob.service"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path}/enabled/README: not a unit name (")
    assert warnings[0].endswith("); ignored")
    assert store.remove(alice)
    assert not store.remove(alice)
    assert store.load()[0] == ["job@bob.service"]
