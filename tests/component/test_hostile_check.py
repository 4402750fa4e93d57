"""Hostile units and settings through the real command line and the control socket's ``enable``.

The fuzzer (``tests/component/test_hostile_units.py``) runs ``activator check`` in-process; here the
real ``python -m activator check`` runs as a subprocess on a hand-made hostile tree and on a few
mutated ones, as a user would see it: exit code 2, no traceback, every problem on stderr as
``activator: FILE:LINE: ...``. Then the control socket's ``enable`` (the real
:class:`~activator.commands.Commands`, over a stand-in manager that holds a real catalog) gets
the hostile instance names, and the instances it accepts get their directories made for real
under a temporary root, where every path must stay below its base.
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from activator.catalog import Catalog
from activator.commands import Commands
from activator.control import ControlError
from activator.directories import prepare_directories
from activator.instances import EnabledUnits, build_instance, resolve
from activator.leases import LeaseService
from activator.loader import load_catalog
from activator.manager import Manager
from activator.model import ServiceUnit
from activator.units import LONG_LINE_MAX
from tests.component.test_hostile_units import (
    HOSTILE_LINES,
    INSTANCE_OUTCOMES,
    SETTINGS_SEEDS,
    SNIPPETS,
    TEMPLATES,
    UNIT_SEEDS,
    Op,
    apply_op,
    write_units,
)

REPO = Path(__file__).resolve().parents[2]

#: One problem line of ``check``: ``activator: [warning: ]PATH[:LINE]: MESSAGE``.
PROBLEM_LINE = re.compile(r"activator: (?:warning: )?(?P<path>/[^:]*)(?::(?P<line>\d+))?: \S.*")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m activator check ARGS`` with a bounded time and address space."""

    def limit_memory() -> None:  # a read that never ends fails instead of filling memory
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "activator", "check", *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=60,
        check=False,
        cwd=REPO,
        preexec_fn=limit_memory,
    )


def problem_lines(stderr: str) -> list[tuple[str, int | None]]:
    """Each stderr line as (path, line); fails on a line that is not a placed problem."""
    assert "Traceback" not in stderr, stderr
    found = []
    for text in stderr.splitlines():
        match = PROBLEM_LINE.fullmatch(text)
        assert match is not None, f"not a problem line: {text!r}"
        line = match["line"]
        assert line is None or int(line) >= 1, text
        found.append((match["path"], None if line is None else int(line)))
    return found


@pytest.mark.slow
def test_a_hostile_tree_through_the_command_line_gives_placed_errors_and_keeps_good_units(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    units = write_units(
        tmp_path,
        {
            "good.service": "[Service]\nExecStart=/bin/true\nDynamicUser=yes\n",
            "echo@.service": "[Service]\nExecStart=/bin/cat\nStateDirectory=e/%I\n",
            "echo@.service.d/10-bad.conf": "[Service]\nStateDirectory=%z\n",
            "esc@.service": "[Service]\nExecStart=/bin/cat\nDynamicUser=yes\nStateDirectory=e/%I\n",
            "dots.service": "[Service]\nExecStart=/bin/true\nStateDirectory=a/../../etc\n",
            "unknown.service": "[Service]\nExecStart=/bin/true\n[Bogus]\nx=1\nNoSuchKey=1\n",
        },
    )
    (units / "nul.service").write_bytes(b"[Service]\nExecStart=/bin/true\nDescr\0iption=x\n")
    (units / "latin1.service").write_bytes(b"[Service]\nExecStart=/bin/caf\xe9\n")
    (units / "long.service").write_bytes(
        b"[Service]\nExecStart=/bin/true\nDescription=" + b"x" * LONG_LINE_MAX + b"\n"
    )
    (units / "deep.service").write_bytes(
        b"[Service]\nExecStart=/bin/echo \\\n" + b"a \\\n" * 300_000 + b"end\n"
    )
    os.symlink("loop.service", units / "loop.service")
    os.symlink("/etc/passwd", units / "outside.service")
    settings = tmp_path / "activator.toml"
    settings.write_text('[pool]\nfirst = 61184\nlast = "many"\n\n[bogus]\n', encoding="utf-8")
    asked = [f"{units}/esc@\\x2e\\x2e.service", f"{units}/esc@a\\x2db.service"]
    done = check("--config", str(settings), str(units), *asked)
    assert done.returncode == 2, done.stderr
    placed = problem_lines(done.stderr)
    for expected in [
        (str(settings), 3),  # pool.last is not an integer
        (str(settings), 5),  # unknown table
        (f"{units}/nul.service", 3),
        (f"{units}/latin1.service", 2),
        (f"{units}/long.service", 3),  # line is too long
        (f"{units}/dots.service", 3),
        (f"{units}/echo@.service.d/10-bad.conf", 2),
        (f"{units}/esc@.service", 4),  # as esc@\x2e\x2e: %I is ".."
        (f"{units}/unknown.service", 3),  # a warning: unknown section
        (f"{units}/loop.service", None),  # the loop fails its own unit
        (f"{units}/outside.service", 1),  # /etc/passwd is no unit file: "missing '='"
    ]:
        assert expected in placed, (expected, done.stderr)
    assert (
        f"activator: {units}/esc@.service:4: StateDirectory='e/%I': must not contain '..' "
        "(got 'e/..' once specifiers are resolved)\n"
    ) in done.stderr
    # Bad units never stop the good ones, nor a bad instance the template's good ones.
    assert "good.service: service\n" in done.stdout
    assert "esc@a\\x2db.service: service\n" in done.stdout
    assert "  STATE_DIRECTORY=/var/lib/e/a-b\n" in done.stdout
    assert "deep.service: service\n" in done.stdout  # 300,000 continued lines are one command
    files = sum(len(names) for _, _, names in os.walk(units)) + 1  # and the settings file
    figures.update(inputs=1, files=files, problems=len(placed), exit_code=done.returncode)


@pytest.mark.slow
def test_a_settings_file_that_never_ends_is_refused_by_the_command_line(tmp_path: Path) -> None:
    """``--config /dev/zero``: before, ``check`` read until memory ran out (MemoryError and a
    traceback under this test's address-space limit)."""
    (tmp_path / "units").mkdir()
    done = check("--config", "/dev/zero", str(tmp_path / "units"))
    assert done.returncode == 2, done.stderr
    assert problem_lines(done.stderr) == [("/dev/zero", None)]
    assert done.stderr == "activator: /dev/zero: file is larger than 4194304 bytes\n"


def mutated(rng: random.Random, data: bytes) -> bytes:
    """``data`` with one to four of the fuzzer's mutations, chosen by ``rng``."""
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["flip", "truncate", "dup", "drop", "insert", "line"])
        arg: bytes | int = rng.randint(0, 7)
        if kind == "insert":
            arg = rng.choice(SNIPPETS)
        elif kind == "line":
            arg = rng.choice(HOSTILE_LINES)
        data = apply_op(data, Op(kind, rng.randrange(2**20), arg))
    return data


@pytest.mark.slow
def test_mutated_bundled_files_through_the_command_line(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    """The bundled units and settings, mutated (a fixed seed per run, so it is reproducible),
    checked by the real command line: exit 0 or 2, and every stderr line a placed problem."""
    runs = 4
    exits: list[int] = []
    problems = 0
    for seed in range(runs):
        rng = random.Random(seed)
        root = tmp_path / f"run{seed}"
        files = {
            name: mutated(rng, data) if rng.random() < 0.7 else data
            for name, data in UNIT_SEEDS.items()
            if not name.startswith(("bench/", "kubernetes/"))
        }
        units = root / "units"
        for name, data in files.items():
            (units / name).parent.mkdir(parents=True, exist_ok=True)
            (units / name).write_bytes(data)
        settings = root / "activator.toml"
        settings.write_bytes(mutated(rng, rng.choice(sorted(SETTINGS_SEEDS.values()))))
        done = check("--config", str(settings), str(units), f"{units}/gitd@carol.socket")
        assert done.returncode in (0, 2), done.stderr
        placed = problem_lines(done.stderr)
        assert (done.returncode == 2) == any(
            not line.startswith("activator: warning: ") for line in done.stderr.splitlines()
        )
        for path, line in placed:
            assert path.startswith(f"{root}/") or path == str(settings), path
            if line is not None:
                with open(path, "rb") as file:
                    data = file.read()
                assert line <= data.count(b"\n") + data.count(b"\r") + 1, (path, line)
        exits.append(done.returncode)
        problems += len(placed)
        shutil.rmtree(root)
    figures.update(inputs=runs, problems=problems, exit_codes=exits)


# ---------------------------------------------------------------------------------------------
# The control socket's enable


class StandInManager:
    """What ``Commands.enable`` uses of the manager: the catalog, reload and start."""

    def __init__(self, units: Path) -> None:
        self.units = units
        self.catalog: Catalog | None = None
        self.started: list[str] = []

    async def reload(self) -> None:
        self.catalog = load_catalog([str(self.units)])

    async def start(self, name: str) -> bool:
        self.started.append(name)
        return True


async def test_enable_refuses_every_instance_name_that_would_leave_a_directory(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    """``enable s@NAME --now`` for each hostile name: refused with one line naming it (and the
    file, line and value when the unit refuses it), nothing recorded; what is accepted is
    recorded as one file directly in the enabled directory. Before, ``enable s@..`` was
    accepted: only the socket was built, and each connection then failed."""
    units = write_units(tmp_path, TEMPLATES)
    manager = StandInManager(units)
    store = EnabledUnits(str(tmp_path / "enabled"))
    commands = Commands(cast(Manager, manager), cast(LeaseService, None), store)
    accepted: list[str] = []
    refused = 0
    for instance, _, _, by_socket in INSTANCE_OUTCOMES:
        text = f"s@{instance}"
        try:
            result = await commands.dispatch("enable", {"unit": text, "now": True})
        except ControlError as error:
            refused += 1
            message = str(error)
            assert "\n" not in message, message
            assert by_socket != "ok", (text, message)
            if by_socket == "name":  # the name, on one line (a newline in it is a space)
                assert message.startswith(" ".join(f"{text}: ".split()) + " "), message
            else:
                assert message.startswith(f"{text}.socket: {units}/s@."), message
                assert by_socket in message, message
                assert "%I" in message, message
        else:
            assert by_socket == "ok", (text, result)
            assert result == {"enabled": [f"{text}.socket"], "started": [f"{text}.socket"]}
            accepted.append(f"{text}.socket")
    assert sorted(os.listdir(store.directory)) == sorted(accepted)
    assert manager.started == accepted
    figures.update(inputs=len(INSTANCE_OUTCOMES), accepted=len(accepted), refused=refused)


def within(path: Path, bases: list[Path]) -> bool:
    return any(path == base or base in path.parents for base in bases)


@pytest.mark.root
@pytest.mark.slow
def test_accepted_instances_get_directories_only_below_their_bases(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    """The directories of every accepted hostile instance, made for real under a temporary
    root of its own (as a dynamic user: boundary directories and symlinks): nothing lands
    anywhere but below /run, /var/lib, /var/cache and /var/log of that root, and no symlink
    leads out of them."""
    units = write_units(tmp_path, TEMPLATES)
    catalog = load_catalog([str(units)])
    made = entries = 0
    uid = 4_242_424  # outside any pool: a leftover could never be taken for a lease's file
    for instance, *outcomes in INSTANCE_OUTCOMES:
        for prefix, outcome in zip("ius", outcomes, strict=True):
            if outcome != "ok":
                continue
            for loaded in build_instance(resolve(f"{prefix}@{instance}", catalog), catalog):
                if not isinstance(loaded.unit, ServiceUnit):
                    continue
                root = tmp_path / "root"
                bases = [root / "run", *(root / "var" / k for k in ("lib", "cache", "log"))]
                try:
                    prepare_directories(loaded.unit, uid, uid, root=str(root))
                    made += 1
                    for directory, names, files in os.walk(root):
                        for name in [*names, *files]:
                            path = Path(directory) / name
                            entries += 1
                            if any(path in base.parents for base in bases):
                                continue  # /run, /var and /var/lib themselves
                            assert within(path, bases), path
                            assert within(path.resolve(), bases), (path, path.resolve())
                finally:
                    shutil.rmtree(root, ignore_errors=True)
    figures.update(units=made, entries=entries)
    assert made > 0
