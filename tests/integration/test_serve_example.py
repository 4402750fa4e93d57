"""The README's main job, as a user runs it: ``activator serve --config examples/activator.toml``
(what ``make run`` starts), tried with ``nc`` as the README says, stopped with Ctrl-C (SIGINT).
Its log is the plain format, one ``activator: ...`` line per event."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import CHECKOUT, activator_command, in_pool
from tests.integration.serving import getent_passwd, lease_files

pytestmark = pytest.mark.root

EXAMPLE_CONFIG = str(Path(CHECKOUT) / "examples" / "activator.toml")


def test_the_readme_echo_example_answers_nc_as_a_fresh_dynamic_user(leaves_nothing: None) -> None:
    proc = subprocess.Popen(
        activator_command("serve", "--config", EXAMPLE_CONFIG),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=CHECKOUT,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("activator: ready:"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(30), "\n".join(lines)
        assert "activator: echo.socket: listening on ListenStream=127.0.0.1:7007" in lines
        answers = []
        for text in ("first", "second"):
            done = subprocess.run(
                ["nc", "-N", "-w", "10", "127.0.0.1", "7007"],
                input=f"{text}\n",
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            answers.append(done.stdout)
        uids = []
        for text, answer in zip(("first", "second"), answers, strict=True):
            greeting, echoed = answer.splitlines()
            found = re.fullmatch(
                r"hello 127\.0\.0\.1:\d+, this is (echo-[0-9a-f]{4}) \(UID (\d+)\)", greeting
            )
            assert found is not None, answer
            assert echoed == text
            uids.append(int(found.group(2)))
        assert all(in_pool(uid) for uid in uids)
        assert uids[0] != uids[1]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    finished = [line for line in lines if " exited 0 after " in line]
    assert len(finished) == 2, "\n".join(lines)
    assert all(line.startswith("activator: echo@") for line in finished)
    assert lines[-1] == "activator: stopped"
    assert lease_files() == []
    assert all(getent_passwd(uid).returncode == 2 for uid in uids)
