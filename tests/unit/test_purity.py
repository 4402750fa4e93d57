"""The pure modules import nothing that reaches the outside world (STYLE.md, "Pure cores")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import activator

#: Modules and subpackages (every .py file of a subpackage is checked) that must be pure.
#: ``settings`` itself is not: its ``__init__`` holds load_settings, which reads a file.
PURE_MODULES = [
    "errors", "units", "values", "model", "catalog", "settings._model",
    "sandbox", "plan", "uidpool", "transient", "admission", "manager._rules",
]  # fmt: skip

#: What a pure module may import: data and algorithms, never files, clocks, processes or sockets.
ALLOWED = {
    "__future__",
    "attrs",
    "collections.abc",
    "enum",
    "functools",
    "hashlib",
    "ipaddress",
    "math",
    "posixpath",
    "re",
    "signal",
    "typing",
}

PACKAGE_DIR = Path(activator.__file__).parent


def source_files(module: str) -> list[Path]:
    """The file of a module, or every .py file of a subpackage, given a dotted name."""
    path = PACKAGE_DIR.joinpath(*module.split("."))
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")]


PURE_FILES = [path for module in PURE_MODULES for path in source_files(module)]


def imports_of(path: Path) -> set[str]:
    """The absolute names of the modules path imports; relative imports are resolved."""
    # The package a relative import starts from: activator for activator/x.py, activator.values
    # for activator/values/_x.py and for activator/values/__init__.py alike.
    package = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1])
            if node.module:
                found.add(f"{base}.{node.module}")
            else:  # from . import x: x may be a module
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(
    "path", PURE_FILES, ids=[str(p.relative_to(PACKAGE_DIR)) for p in PURE_FILES]
)
def test_pure_module_imports_only_the_allow_list(path: Path) -> None:
    shown = f"activator/{path.relative_to(PACKAGE_DIR)}"
    outside = {
        name
        for name in imports_of(path)
        if name not in ALLOWED and not name.startswith("activator")
    }
    assert outside == set(), f"{shown} imports {sorted(outside)}"
    impure = {f"activator.{m}" for m in ("loader", "cli", "settings")}
    assert not (imports_of(path) & impure), f"{shown} imports an effect module"


def test_relative_imports_are_resolved() -> None:
    imports = imports_of(PACKAGE_DIR / "values" / "_net.py")
    assert {"activator.values._common", "activator.values._paths"} <= imports
