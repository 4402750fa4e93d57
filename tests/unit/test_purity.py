"""The pure modules import nothing that reaches the outside world (STYLE.md, "Pure cores")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import activator

PURE_MODULES = ["errors", "units", "values", "model", "catalog"]

#: What a pure module may import: data and algorithms, never files, clocks, processes or sockets.
ALLOWED = {
    "__future__",
    "attrs",
    "collections.abc",
    "enum",
    "functools",
    "ipaddress",
    "math",
    "posixpath",
    "re",
    "signal",
    "typing",
}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_only_the_allow_list(module: str) -> None:
    path = Path(activator.__file__).parent / f"{module}.py"
    outside = {
        name
        for name in imports_of(path)
        if name not in ALLOWED and not name.startswith("activator")
    }
    assert outside == set(), f"activator/{module}.py imports {sorted(outside)}"
    impure = {f"activator.{m}" for m in ("loader", "cli", "settings")}
    assert not (imports_of(path) & impure), f"activator/{module}.py imports an effect module"
