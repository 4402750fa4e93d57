"""``activator run`` as a user types it: streams, exit statuses, failures, state directories.

Every test runs the real CLI as a subprocess, as root, and asserts what the user sees: output,
exit status, the one-line reason of a failure, and the files on the host afterwards.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.host import static_user
from tests.integration.conftest import (
    activator_command,
    in_pool,
    printed_uid,
    run_activator,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("leaves_nothing")]

DYNAMIC = ("run", "--pipe", "-p", "DynamicUser=yes")


def test_pipe_runs_a_command_as_a_fresh_pool_uid_in_a_pipeline() -> None:
    shown = run_activator(*DYNAMIC, "id", "-u")
    assert shown.returncode == 0, shown.stderr
    assert in_pool(int(shown.stdout))
    sorted_ = run_activator(*DYNAMIC, "sort", "-u", input="b\na\nb\n")
    assert (sorted_.returncode, sorted_.stdout) == (0, "a\nb\n")


def test_the_exit_status_is_the_commands() -> None:
    assert run_activator(*DYNAMIC, "sh", "-c", "exit 3").returncode == 3
    # A real fault is a signal the kernel forces, even on PID 1 of a namespace: 128 + SIGSEGV.
    crash = run_activator(*DYNAMIC, "python3", "-c", "import ctypes; ctypes.string_at(0)")
    assert crash.returncode == 128 + 11


def test_set_up_failures_name_the_stage_and_reason_and_exit_127() -> None:
    missing = run_activator(*DYNAMIC, "/usr/bin/no-such-program")
    assert missing.returncode == 127
    assert missing.stderr.strip().endswith(
        "exec /usr/bin/no-such-program: No such file or directory"
    )
    bind = run_activator(*DYNAMIC, "-p", "BindReadOnlyPaths=/no/such/dir", "true")
    assert bind.returncode == 127
    assert "/no/such/dir" in bind.stderr
    assert "No such file or directory" in bind.stderr
    bad = run_activator(*DYNAMIC, "-p", "PrivateTmp=maybe", "true")
    assert bad.returncode == 2
    assert bad.stderr.startswith("activator: <command line>:2: PrivateTmp='maybe': ")


def test_without_pipe_output_goes_to_stderr_and_stdin_is_empty() -> None:
    result = run_activator("run", "-p", "DynamicUser=yes", "sh", "-c", "cat; echo out")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "Running as unit: run-" in result.stderr
    assert "out\n" in result.stderr


def test_runtime_max_sec_stops_a_handler_that_ignores_term() -> None:
    started = time.monotonic()
    result = run_activator(*DYNAMIC, "-p", "RuntimeMaxSec=1", "sleep", "60")
    assert result.returncode == 128 + 9
    assert time.monotonic() - started < 20


def test_state_directory_is_private_chowned_and_keeps_its_uid(
    directory_name: Callable[[str], str],
) -> None:
    name = directory_name("wuff")
    script = 'echo UID=$(id -u); echo hello > "$STATE_DIRECTORY/test"'
    first = run_activator(
        *DYNAMIC, "--unit", name, "-p", f"StateDirectory={name}", "sh", "-c", script
    )
    assert first.returncode == 0, first.stderr
    uid = printed_uid(first.stdout)
    public, private = Path("/var/lib", name), Path("/var/lib/private", name)
    assert os.readlink(public) == f"private/{name}"
    boundary = os.stat("/var/lib/private")
    assert (boundary.st_uid, boundary.st_gid, boundary.st_mode & 0o7777) == (0, 0, 0o700)
    test_file = private / "test"
    assert test_file.read_text() == "hello\n"
    assert (test_file.stat().st_uid, test_file.stat().st_gid) == (uid, uid)
    # The next run prefers the UID that owns the directory: same UID, nothing to chown.
    second = run_activator(
        *DYNAMIC, "--unit", name, "-p", f"StateDirectory={name}", "sh", "-c",
        'echo UID=$(id -u); cat "$STATE_DIRECTORY/test"',
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert printed_uid(second.stdout) == uid
    assert "hello" in second.stdout


def test_pty_gives_the_command_a_terminal_of_its_own() -> None:
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.execv(
            activator_command()[0],
            [
                *activator_command("run", "--pty", "-p", "DynamicUser=yes", "sh", "-c"),
                "tty; (exec 3</dev/tty) && echo CONTROLLING; test -t 0 && echo TERMINAL;"
                " read line; echo got:$line",
            ],
        )
    output = b""
    try:
        deadline = time.monotonic() + 20
        sent = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if b"TERMINAL" in output and not sent:
                os.write(master, b"hello\r")
                sent = True
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    text = output.decode(errors="replace")
    assert "/dev/pts/" in text
    assert "TERMINAL" in text
    assert "CONTROLLING" in text  # /dev/tty opens only with a controlling terminal
    assert "got:hello" in text
    assert os.waitstatus_to_exitcode(status) == 0


def test_two_runs_at_once_get_different_uids() -> None:
    procs = [
        subprocess.Popen(
            activator_command(*DYNAMIC, "sh", "-c", "id -u; sleep 1"),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(3)
    ]
    uids = {int(proc.communicate(timeout=30)[0]) for proc in procs}
    assert len(uids) == 3
    assert all(in_pool(uid) for uid in uids)


def test_every_handler_leads_a_session_of_its_own() -> None:
    # Field 6 of /proc/PID/stat is the session id: the handler's own PID, 1 in its namespace.
    result = run_activator(*DYNAMIC, "sh", "-c", "cut -d' ' -f6 /proc/$$/stat; echo $$")
    assert result.stdout.split() == ["1", "1"], result.stderr


def test_tasks_max_and_memory_max_are_enforced_through_the_invocation_cgroup() -> None:
    # TasksMax=3: the program and two children; the third fork fails (EAGAIN).
    forks = run_activator(
        *DYNAMIC, "-p", "TasksMax=3", "python3", "-c",
        "import os, time\n"
        "born = 0\n"
        "for _ in range(5):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(3); os._exit(0)\n"
        "    except OSError:\n"
        "        break\n"
        "    born += 1\n"
        "print(born)\n",
    )  # fmt: skip
    assert (forks.returncode, forks.stdout) == (0, "2\n"), forks.stderr
    memory = run_activator(
        *DYNAMIC, "-p", "MemoryMax=32M", "python3", "-c", "b = bytearray(256 * 1024 * 1024)"
    )
    assert memory.returncode == 128 + 9  # the OOM killer's SIGKILL


def test_private_network_has_only_loopback() -> None:
    result = run_activator(*DYNAMIC, "-p", "PrivateNetwork=yes", "cat", "/proc/net/dev")
    assert result.returncode == 0, result.stderr
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_a_user_whose_uid_is_in_the_pool_is_never_taken_as_static() -> None:
    # NSS may show another activator's dynamic user; sharing its UID would break invariant 1.
    # A user in the pool range is never used as a static one: the run gets a lease of its own.
    uid = 65431
    with static_user(uid) as name:
        result = run_activator(*DYNAMIC, "-p", f"User={name}", "id", "-u")
        assert result.returncode == 0, result.stderr
        got = int(result.stdout)
        assert in_pool(got)
        assert got != uid
        # Without DynamicUser=, User= must name a real static user: a pool UID is refused.
        static = run_activator("run", "--pipe", "-p", f"User={name}", "id", "-u")
        assert static.returncode == 127
        assert f"User={name}: no such user" in static.stderr


def test_a_runtime_directory_deeper_than_the_descriptor_limit_is_removed(
    directory_name: Callable[[str], str],
) -> None:
    name = directory_name("deep")
    script = (
        'cd "$RUNTIME_DIRECTORY"; i=0;'
        " while [ $i -lt 1200 ]; do mkdir d; cd d; i=$((i+1)); done; echo x > f"
    )
    result = subprocess.run(
        ["sh", "-c", 'ulimit -n 512; exec "$@"', "sh",
         *activator_command(*DYNAMIC, "-p", f"RuntimeDirectory={name}", "sh", "-c", script)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(f"/run/{name}")


def test_environment_files_and_file_output_reach_the_handler(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text('# settings\nGREETING="hello world"\nPLAIN = x y  \n')
    out = tmp_path / "out.txt"
    # Without --pipe (which would give the handler our stdout), StandardOutput= decides.
    result = run_activator(
        "run", "-p", "DynamicUser=yes", "-p", f"EnvironmentFile={env}",
        "-p", "EnvironmentFile=-/no/such/file", "-p", f"StandardOutput=file:{out}",
        "sh", "-c", 'echo "$GREETING|$PLAIN|"',
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    assert out.read_text() == "hello world|x y|\n"
    missing = run_activator(*DYNAMIC, "-p", "EnvironmentFile=/no/such/file", "true")
    assert missing.returncode == 127
    assert missing.stderr.strip().endswith("/no/such/file: No such file or directory")
    # A plan that fails after the output file was opened: an outcome with its reason.
    bad = run_activator("run", "-p", "DynamicUser=yes", "-p", f"StandardOutput=file:{out}",
                        "-p", "StandardInput=tty", "true")  # fmt: skip
    assert bad.returncode == 127
    assert "StandardInput=tty" in bad.stderr
