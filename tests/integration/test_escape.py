"""The escape suite: hostile handlers run through the real ``activator run``, every attempt fails.

Each test runs one or more handlers (``activator run --pipe -p DynamicUser=yes ... sh -c``)
that try to break out of the promise of DESIGN.md's invariants 3 and 4: write the system,
another service's state, or a place the next invocation will look; leave IPC objects, processes
or files of its UID behind; see, signal or trace other handlers or the activator; regain root.
A handler reports each attempt on its stdout as ``LABEL: failed: <error>`` or
``LABEL: SUCCEEDED <output>`` (the ``attempt`` shell function of :data:`PRELUDE`), and the test
asserts what a user would see: the handler's report, and the host's state afterwards. The
``leaves_nothing`` fixture then checks that no process, IPC object, lease, cgroup or mount of
the pool is left on the host.

A handler prints ``UID=N`` first: the UID it ran as, for the host-side checks.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import stat
import subprocess
import termios
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import pytest

from tests.integration.conftest import (
    BOUNDARY_DIRECTORIES,
    CHECKOUT,
    activator_command,
    children_of,
    in_pool,
    posix_mqueues,
    printed_uid,
    processes_of,
    run_activator,
    sysv_objects,
)

pytestmark = pytest.mark.root

#: Shell functions every hostile script starts with. ``attempt LABEL CMD...`` runs CMD and
#: reports ``LABEL: SUCCEEDED <output>`` or ``LABEL: failed: <error>`` on one line.
PRELUDE: Final = """\
attempt() {
    label=$1; shift
    out=$("$@" 2>&1); rc=$?
    out=$(printf %s "$out" | tr '\\n' ' ')
    if [ $rc -eq 0 ]; then echo "$label: SUCCEEDED $out"; else echo "$label: failed: $out"; fi
}
echo UID=$(id -u)
"""

#: After these, the next line of a script joins with a space; after others, with "; ".
_OPEN_ENDINGS: Final = ("{", "&", "|", "do", "then", "else")


def one_line(script: str) -> str:
    """``script`` as one line: ``activator run`` refuses a newline in an argument (``ExecStart=
    ...: must not contain control characters``, where systemd-run passes it), so each script
    is written a command per line here and joined into one ``sh -c`` argument."""
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    out = ""
    for line in lines:
        out += line + (" " if line.endswith(_OPEN_ENDINGS) else "; ")
    return out.strip()


#: The Debian interpreter, readable by every user (a venv's python may live below /root).
PYTHON: Final = "/usr/bin/python3"

_ATTEMPT = re.compile(r"^([\w-]+): ((?:SUCCEEDED|failed).*)$", re.MULTILINE)


def handler(
    script: str, *properties: str, unit: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``sh -c PRELUDE+script`` (:func:`one_line`) as a dynamic user, with ``-p``
    ``properties``."""
    args = ["run", "--pipe", "-p", "DynamicUser=yes"]
    for prop in properties:
        args += ["-p", prop]
    if unit is not None:
        args += ["--unit", unit]
    return run_activator(*args, "sh", "-c", one_line(PRELUDE + script), timeout=timeout)


def attempts(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The handler's reports: label -> ``SUCCEEDED <output>`` or ``failed: <error>``."""
    return {m.group(1): m.group(2) for m in _ATTEMPT.finditer(done.stdout)}


def assert_all_failed(
    done: subprocess.CompletedProcess[str], expected: Mapping[str, str | None]
) -> None:
    """Every label in ``expected`` was attempted and failed, with the error text given (a
    substring of the report; None: any error)."""
    reports = attempts(done)
    context = f"\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    escaped = {k: v for k, v in reports.items() if v.startswith("SUCCEEDED")}
    assert not escaped, f"attempts that succeeded: {escaped}{context}"
    for label, error in expected.items():
        assert label in reports, f"{label} was not attempted{context}"
        if error is not None:
            assert error in reports[label], f"{label}: {reports[label]!r}{context}"


def ok(done: subprocess.CompletedProcess[str]) -> int:
    """Assert the run exited 0; the UID it printed."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return printed_uid(done.stdout)


# ---------------------------------------------------------------------------------------------
# Writing the system and other services' state


def test_cannot_write_the_system(leaves_nothing: None) -> None:
    token = f"escape-{secrets.token_hex(4)}"
    targets = {
        "etc": f"/etc/{token}",
        "usr": f"/usr/{token}",
        "usr-bin": f"/usr/bin/{token}",
        "home": f"/home/{token}",  # ProtectHome=read-only, which DynamicUser=yes implies
        "var-lib": f"/var/lib/{token}",
        "run": f"/run/{token}",
        "run-lock": f"/run/lock/{token}",  # 1777 on the host: only the sandbox stops this
    }
    with open("/etc/passwd", "rb") as file:
        passwd = file.read()
    script = "".join(f"attempt {k} sh -c 'echo pwned > {p}'\n" for k, p in targets.items())
    script += f"""\
attempt passwd sh -c 'echo "pwned::0:0::/:/bin/sh" >> /etc/passwd'
attempt mkdir-home mkdir /home/{token}
attempt userns-remount unshare -Urm sh -c 'mount -o remount,bind,rw / && echo pwned > /etc/{token}'
attempt userns-umount unshare -Urm sh -c 'umount -l /home && echo pwned > /home/{token}'
attempt cgroup-procs sh -c 'echo $$ > /sys/fs/cgroup/unified/cgroup.procs'
"""
    done = handler(script)
    ok(done)
    read_only = "Read-only file system"
    expected: dict[str, str | None] = dict.fromkeys(targets, read_only)
    assert_all_failed(
        done,
        expected
        | {
            "passwd": None,  # root's 0644 file: Permission denied comes first
            "mkdir-home": read_only,
            "userns-remount": None,
            "userns-umount": None,
            # The host's cgroup tree is covered by an empty read-only tmpfs.
            "cgroup-procs": "Directory nonexistent",
        },
    )
    for path in targets.values():
        assert not os.path.lexists(path), f"{path} exists on the host"
    with open("/etc/passwd", "rb") as file:
        assert file.read() == passwd


def test_cannot_read_or_write_another_services_state(
    leaves_nothing: None, directory_name: Callable[[str], str]
) -> None:
    victim, attacker = directory_name("esc-victim"), directory_name("esc-attacker")
    secret = f"secret-{secrets.token_hex(8)}"
    # A careless victim: a world-readable secret in a world-readable directory.
    first = handler(
        f'echo {secret} > "$STATE_DIRECTORY/secret" && chmod 644 "$STATE_DIRECTORY/secret"',
        f"StateDirectory={victim}",
        unit=victim,
    )
    victim_uid = ok(first)
    attack = f"""\
attempt read-public cat /var/lib/{victim}/secret
attempt read-private cat /var/lib/private/{victim}/secret
attempt list-private ls -A /var/lib/private/{victim}
attempt write-public sh -c 'echo pwned > /var/lib/{victim}/secret'
attempt write-private sh -c 'echo pwned > /var/lib/private/{victim}/pwned'
attempt mkdir-private mkdir /var/lib/private/{victim}
echo BOUNDARY=$(ls -A /var/lib/private 2>&1 | tr '\\n' ' ')
"""
    # Another unit with state of its own (the boundary is a tmpfs holding only its directory),
    # and one without (the boundary is the host's, root 0700).
    with_state = handler(attack, f"StateDirectory={attacker}", unit=attacker)
    without_state = handler(attack, unit=directory_name("esc-stateless"))
    for done in (with_state, without_state):
        attacker_uid = ok(done)
        assert attacker_uid != victim_uid
        assert secret not in done.stdout
        assert_all_failed(
            done,
            dict.fromkeys(
                ("read-public", "read-private", "list-private", "write-public", "write-private"),
                None,
            )
            | {"mkdir-private": None},
        )
    assert_all_failed(
        with_state,
        dict.fromkeys(("read-public", "read-private"), "No such file or directory")
        | {"mkdir-private": "Read-only file system"},
    )
    assert f"BOUNDARY={attacker}\n" in with_state.stdout
    assert_all_failed(
        without_state,
        dict.fromkeys(("read-private", "list-private"), "Permission denied"),
    )
    state = Path("/var/lib/private", victim)
    assert sorted(os.listdir(state)) == ["secret"]
    assert (state / "secret").read_text() == f"{secret}\n"


# ---------------------------------------------------------------------------------------------
# Leaving something behind for the next invocation


def test_leaves_no_file_in_tmp_for_the_next_invocation(
    leaves_nothing: None, directory_name: Callable[[str], str]
) -> None:
    unit = directory_name("esc-tmp")  # both runs as one unit: the same user, likely the same UID
    token = f"escape-{secrets.token_hex(4)}"
    places = ("/tmp", "/var/tmp", "/dev/shm")
    plant = "".join(
        f"echo {token} > {d}/{token} && chmod 666 {d}/{token} && mkdir -m 777 {d}/{token}.d\n"
        for d in places
    )
    plant += f"mkfifo -m 666 /tmp/{token}.fifo\n"
    bind = f'import socket; socket.socket(socket.AF_UNIX).bind("/tmp/{token}.sock")'
    plant += f"{PYTHON} -Ic '{bind}'\n"
    plant += "ls -A " + " ".join(places) + "\n"
    first = handler(plant, unit=unit)
    ok(first)
    # The files were made (inside), so what follows is the sandbox's doing, not a failed plant.
    assert first.stdout.count(token) == 2 * len(places) + 2, first.stdout
    look = "".join(f"attempt read{d.replace('/', '-')} cat {d}/{token}\n" for d in places)
    look += "ls -A " + " ".join(places) + "\n"
    second = handler(look, unit=unit)
    ok(second)
    listed = [line for line in second.stdout.splitlines() if not _ATTEMPT.match(line)]
    assert not [line for line in listed if token in line], second.stdout
    assert_all_failed(
        second, {f"read{d.replace('/', '-')}": "No such file or directory" for d in places}
    )
    for directory in places:
        assert not [n for n in os.listdir(directory) if token in n], f"{token} in {directory}"


# ---------------------------------------------------------------------------------------------
# IPC objects and processes that would outlive the handler

MQ_OPEN: Final = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "fd = libc.mq_open(sys.argv[1].encode(), os.O_CREAT | os.O_RDWR, 0o666, None); "
    'sys.exit("mq_open: " + os.strerror(ctypes.get_errno())) if fd < 0 '
    'else print("mqueue fd", fd)'
)


def test_ipc_objects_do_not_outlive_the_handler(leaves_nothing: None) -> None:
    token = f"escape-{secrets.token_hex(4)}"
    host_shm = subprocess.run(
        ["ipcmk", "-M", "4096", "-p", "0666"], capture_output=True, text=True, check=True
    )
    host_id = int(host_shm.stdout.split(":")[1])
    try:
        key = next(  # the host's segment, which a handler must not see
            line.split()[0]
            for line in subprocess.run(
                ["ipcs", "-m"], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            if line.split()[1:2] == [str(host_id)]
        )
        script = f"""\
ipcmk -M 4096 -p 0666 && ipcmk -Q -p 0666 && ipcmk -S 1 -p 0666
{PYTHON} -Ic '{MQ_OPEN}' /{token}
echo IPCS; ipcs
"""
        done = handler(script)
        uid = ok(done)
    finally:
        subprocess.run(["ipcrm", "-m", str(host_id)], check=True)
    # Made inside (each in the handler's IPC namespace) ...
    for made in ("Shared memory id:", "Message queue id:", "Semaphore id:", "mqueue fd"):
        assert made in done.stdout, f"{made!r} missing:\n{done.stdout}\n{done.stderr}"
    assert key not in done.stdout.split("IPCS", 1)[1], "the handler saw the host's segment"
    # ... and none of it on the host, during or after.
    assert not [o for o in sysv_objects() if uid in o[2:]]
    assert token not in posix_mqueues()
    assert uid not in posix_mqueues().values()


def test_daemon_does_not_outlive_the_handler(leaves_nothing: None) -> None:
    script = """\
setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 &
(setsid sleep 301 </dev/null >/dev/null 2>&1 &)
nohup sleep 302 >/dev/null 2>&1 &
sleep 303 &
echo spawned
"""
    # The last daemon keeps our stdout open: were it left alive, this run would not return
    # before the timeout.
    started = time.monotonic()
    done = handler(script, timeout=20)
    elapsed = time.monotonic() - started
    uid = ok(done)
    assert "spawned" in done.stdout
    assert processes_of(uid) == []
    assert elapsed < 10


# ---------------------------------------------------------------------------------------------
# Other handlers and the activator

PTRACE: Final = (  # ptrace(PTRACE_ATTACH, pid)
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "r = libc.ptrace(16, int(sys.argv[1]), None, None); "
    "sys.exit(os.strerror(ctypes.get_errno())) if r != 0 else None"
)


def first_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """The first line of a background process's stdout, within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from the background handler"
    return proc.stdout.readline()


def test_cannot_see_signal_or_trace_others(
    leaves_nothing: None, background: Callable[..., subprocess.Popen[str]]
) -> None:
    victim = background(
        "run", "--pipe", "-p", "DynamicUser=yes", "sh", "-c",
        "sleep 300 & echo UID=$(id -u); read x; kill $!; echo victim-alive",
    )  # fmt: skip
    victim_uid = printed_uid(first_line(victim))
    handlers = processes_of(victim_uid)
    assert len(handlers) == 2, handlers  # sh and sleep
    targets = {
        "handler": handlers[0],
        "handler-child": handlers[1],
        "activator": victim.pid,
        "test": os.getpid(),
        **{f"spawner{i}": pid for i, pid in enumerate(children_of(victim.pid))},
    }
    # A host PID small enough to exist in the attacker's own namespace would prove nothing.
    assert min(targets.values()) > 64, targets
    script = ""
    for name, pid in targets.items():
        script += f"""\
attempt kill0-{name} kill -0 {pid}
attempt kill9-{name} kill -9 {pid}
attempt ls-{name} ls /proc/{pid}
attempt environ-{name} cat /proc/{pid}/environ
attempt ptrace-{name} {PYTHON} -Ic '{PTRACE}' {pid}
"""
    script += """\
kill -9 -1
echo PIDS=$(ls /proc | grep -E '^[0-9]+$')
echo PS-UIDS=$(ps -e -o uid=)
"""
    done = handler(script)
    attacker_uid = ok(done)
    assert attacker_uid != victim_uid
    expected: dict[str, str | None] = {}
    for name in targets:
        expected |= {
            f"kill0-{name}": "No such process",
            f"kill9-{name}": "No such process",
            f"ls-{name}": "No such file or directory",
            f"environ-{name}": "No such file or directory",
            f"ptrace-{name}": "No such process",
        }
    assert_all_failed(done, expected)
    # It sees only its own processes: PID 1 (its shell) and the two or three it runs to look.
    lines = {
        key: value.split()
        for key, _, value in (x.partition("=") for x in done.stdout.splitlines())
        if key in ("PIDS", "PS-UIDS")
    }
    assert "1" in lines["PIDS"], lines["PIDS"]
    assert len(lines["PIDS"]) <= 4, lines["PIDS"]
    assert set(lines["PIDS"]).isdisjoint(str(pid) for pid in targets.values())
    assert set(lines["PS-UIDS"]) == {str(attacker_uid)}, lines["PS-UIDS"]
    # The victim and the activator lived through it all, and end normally.
    assert victim.poll() is None
    assert processes_of(victim_uid) == handlers
    assert victim.stdin is not None
    victim.stdin.close()
    assert victim.wait(timeout=20) == 0
    assert victim.stdout is not None
    assert "victim-alive" in victim.stdout.read()


# ---------------------------------------------------------------------------------------------
# Privileges

PROBE_C: Final = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    int r = setuid(0);
    printf("%s: euid=%d setuid(0)=%s uid=%d\n", name, (int)geteuid(),
           r == 0 ? "ok" : strerror(errno), (int)getuid());
    return r == 0 ? 0 : 1;
}
"""


@pytest.fixture
def probes(tmp_path: Path) -> Path:
    """A directory of root-owned privilege probes: ``suid-probe`` (set-user-ID root),
    ``caps-probe`` (file capabilities cap_setuid,cap_setgid), ``suid-id`` (a set-user-ID copy
    of /usr/bin/id). Removed with tmp_path."""
    directory = tmp_path / "probes"
    directory.mkdir(mode=0o755)
    source = tmp_path / "probe.c"
    source.write_text(PROBE_C)
    subprocess.run(["gcc", "-O", "-o", directory / "suid-probe", source], check=True)
    shutil.copy(directory / "suid-probe", directory / "caps-probe")
    shutil.copy("/usr/bin/id", directory / "suid-id")
    os.chmod(directory / "suid-probe", 0o4755)
    os.chmod(directory / "suid-id", 0o4755)
    subprocess.run(["setcap", "cap_setuid,cap_setgid=ep", directory / "caps-probe"], check=True)
    return directory


def host_probe(path: Path) -> str:
    """Run a probe on the host as nobody (through a descriptor: tmp_path is root's 0700)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"/proc/self/fd/{fd}"],
            pass_fds=[fd],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    finally:
        os.close(fd)


def test_cannot_regain_root(leaves_nothing: None, probes: Path) -> None:
    # The control: outside the sandbox, these probes do make nobody root.
    assert "setuid(0)=ok" in host_probe(probes / "suid-probe")
    assert "euid=0 " in host_probe(probes / "suid-probe")
    assert "setuid(0)=ok" in host_probe(probes / "caps-probe")
    assert "euid=0" in host_probe(probes / "suid-id")
    script = """\
ls -l /tmp/probes/suid-probe
attempt suid-probe /tmp/probes/suid-probe
attempt caps-probe /tmp/probes/caps-probe
echo SUID-ID=$(/tmp/probes/suid-id)
attempt su su -c 'id -u' root
attempt sudo sudo -n id -u
attempt setpriv setpriv --reuid=0 --regid=0 --clear-groups id -u
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status
echo FDS=$(ls /proc/self/fd | tr '\\n' ' ')
"""
    done = handler(script, f"BindReadOnlyPaths={probes}:/tmp/probes")
    uid = ok(done)
    assert "-rwsr-xr-x 1 root root" in done.stdout  # the bit is there, and does nothing
    assert_all_failed(
        done,
        {
            "suid-probe": f"euid={uid} setuid(0)=Operation not permitted uid={uid}",
            "caps-probe": f"euid={uid} setuid(0)=Operation not permitted uid={uid}",
            "su": None,
            "sudo": None,
            "setpriv": None,
        },
    )
    suid_id = next(x for x in done.stdout.splitlines() if x.startswith("SUID-ID="))
    assert suid_id.startswith(f"SUID-ID=uid={uid}("), suid_id
    assert "euid=" not in suid_id
    status = dict(
        line.split(":\t", 1) for line in done.stdout.splitlines() if re.match(r"^\w+:\t", line)
    )
    assert {k: v for k, v in status.items() if k.startswith("Cap")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), "0000000000000000"
    )
    assert status["NoNewPrivs"] == "1"
    # No descriptor of the activator or the spawner: only 0-2, and the one ls itself opened.
    assert "FDS=0 1 2 3\n" in done.stdout


#: Type "id" and Enter into standard input's terminal, as if at its keyboard (TIOCSTI).
TIOCSTI: Final = (
    'import fcntl, termios; [fcntl.ioctl(0, termios.TIOCSTI, c) for c in (b"i", b"d", b"\\n")]'
)


def echoed(master: int) -> bytes:
    """What a terminal echoed so far (every key typed into it is echoed on its master)."""
    out = b""
    while select.select([master], [], [], 0)[0]:
        out += os.read(master, 1024)
    return out


def test_cannot_type_into_the_callers_terminal(leaves_nothing: None) -> None:
    # --pipe hands our stdin to the handler: when that is root's terminal, a handler that could
    # push keys into it would have root's shell run them once the run is over.
    master, slave = os.openpty()
    try:

        def in_terminal(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(  # a session whose controlling terminal is the pty
                ["setsid", "--ctty", *argv],
                stdin=slave,
                capture_output=True,
                text=True,
                timeout=30,
                cwd=CHECKOUT,
                check=False,
            )

        # The control: a process of the terminal's session can type into it.
        assert in_terminal(PYTHON, "-Ic", TIOCSTI).returncode == 0
        assert echoed(master) == b"id\r\n"
        termios.tcflush(slave, termios.TCIFLUSH)
        script = one_line(PRELUDE + f"attempt tiocsti {PYTHON} -Ic '{TIOCSTI}'")
        done = in_terminal(
            *activator_command("run", "--pipe", "-p", "DynamicUser=yes"), "sh", "-c", script
        )
        ok(done)
        assert_all_failed(done, {"tiocsti": "Operation not permitted"})
        assert echoed(master) == b""
    finally:
        os.close(slave)
        os.close(master)


# ---------------------------------------------------------------------------------------------
# Files of the UID


def files_of(uid: int) -> list[str]:
    """Every file on the host owned by ``uid``: /, with /tmp, /var, /run and /home on this
    machine's root file system, plus /dev and /dev/shm (each its own file system)."""
    found = subprocess.run(
        ["find", "/", "/dev", "/dev/shm", "-xdev", "-uid", str(uid)],
        capture_output=True,
        text=True,
        check=False,
    )
    return sorted(set(found.stdout.splitlines()))


def test_leaves_no_file_outside_the_boundaries(
    leaves_nothing: None, directory_name: Callable[[str], str]
) -> None:
    name = directory_name("esc-files")
    token = f"escape-{secrets.token_hex(4)}"
    places = (
        "/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/run", "/dev", "/home",
        "/var/lib", "/var/lib/private", "/var/cache", "/var/log", "/etc", "/",
    )  # fmt: skip
    script = f"""\
for d in "$STATE_DIRECTORY" "$CACHE_DIRECTORY" "$LOGS_DIRECTORY" "$RUNTIME_DIRECTORY"; do
    echo data > "$d/{token}" && chmod 4777 "$d/{token}" && mkdir "$d/{token}.d" &&
    ln -s / "$d/{token}.link"
done
ls -ln "$RUNTIME_DIRECTORY"
"""
    script += "".join(f"touch {p}/{token} 2>/dev/null\n" for p in places)
    script += f"mkfifo /tmp/{token}.fifo\n"
    properties = (f"{d}Directory={name}" for d in ("State", "Cache", "Logs", "Runtime"))
    done = handler(script, *properties)
    uid = ok(done)
    assert f"{uid} {uid}" in done.stdout  # the runtime directory's files were the lease's
    assert not os.path.lexists(f"/run/{name}"), "the runtime directory outlived the run"
    outside = [
        path
        for path in files_of(uid)
        if not any(path == b or path.startswith(f"{b}/") for b in BOUNDARY_DIRECTORIES)
    ]
    assert outside == []
    # What is inside stays unreachable: each boundary is root's alone.
    for boundary in BOUNDARY_DIRECTORIES:
        st = os.lstat(boundary)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o700), boundary
        assert in_pool(os.lstat(f"{boundary}/{name}/{token}").st_uid)


# ---------------------------------------------------------------------------------------------
# Kernel keys

_KEYCTL: Final = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "libc.syscall.restype = ctypes.c_long; USER_KEYRING = ctypes.c_long(-4); "
)
#: add_key("user", "escape", SECRET, len, @u)
ADD_KEY: Final = _KEYCTL + (
    'r = libc.syscall(248, b"user", b"escape", sys.argv[1].encode(), len(sys.argv[1]), '
    "USER_KEYRING); "
    'sys.exit("add_key: " + os.strerror(ctypes.get_errno())) if r < 0 else None'
)
#: keyctl(KEYCTL_SEARCH, @u, "user", "escape"), then keyctl(KEYCTL_READ, key, buf, 64)
READ_KEY: Final = _KEYCTL + (
    'k = libc.syscall(250, 10, USER_KEYRING, b"user", b"escape", 0); '
    "buf = ctypes.create_string_buffer(64); "
    "n = libc.syscall(250, 11, ctypes.c_long(k), buf, 64) if k >= 0 else -1; "
    'print("FOUND=" + buf.raw[:n].decode()) if n >= 0 '
    'else sys.exit("search: " + os.strerror(ctypes.get_errno()))'
)


def keys_of(uid: int) -> list[str]:
    """The keys (not the two per-UID keyrings) that ``uid`` can see in /proc/keys, read by a
    process of ``uid`` on the host."""
    listed = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "cat", "/proc/keys"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in listed.splitlines() if line.split()[7:8] != ["keyring"]]


def clear_keys(uid: int) -> None:
    """Clear ``uid``'s user and user-session keyrings (KEYCTL_CLEAR), as a process of ``uid``."""
    code = (
        "import ctypes; libc = ctypes.CDLL(None); libc.syscall.restype = ctypes.c_long; "
        "[libc.syscall(250, 7, ctypes.c_long(k)) for k in (-4, -5)]"
    )
    subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PYTHON, "-Ic", code],
        check=True,
    )


def test_kernel_keys_do_not_outlive_the_handler(
    leaves_nothing: None, directory_name: Callable[[str], str]
) -> None:
    unit = directory_name("esc-keys")  # both runs as one unit: the same user, likely same UID
    secret = f"secret-{secrets.token_hex(8)}"
    first = handler(f"attempt add-key {PYTHON} -Ic '{ADD_KEY}' {secret}", unit=unit)
    uid = ok(first)
    try:
        assert attempts(first)["add-key"].startswith("SUCCEEDED"), first.stdout
        second = handler(f"attempt read-key {PYTHON} -Ic '{READ_KEY}'", unit=unit)
        second_uid = ok(second)
        assert secret not in second.stdout, f"UID {second_uid} read the key of UID {uid}"
        assert_all_failed(second, {"read-key": "search: Required key not available"})
        assert keys_of(uid) == []
    finally:
        clear_keys(uid)


#: keyctl(KEYCTL_SEARCH, KEYRING, "user", NAME), then KEYCTL_READ: argv is KEYRING NAME.
SEARCH_KEY: Final = _KEYCTL + (
    'k = libc.syscall(250, 10, ctypes.c_long(int(sys.argv[1])), b"user", '
    "sys.argv[2].encode(), 0); "
    "buf = ctypes.create_string_buffer(64); "
    "n = libc.syscall(250, 11, ctypes.c_long(k), buf, 64) if k >= 0 else -1; "
    'print("FOUND=" + buf.raw[:n].decode()) if n >= 0 '
    'else sys.exit("search: " + os.strerror(ctypes.get_errno()))'
)
#: keyctl(KEYCTL_READ, KEY, buf, 64): argv is KEY.
READ_KEY_BY_ID: Final = _KEYCTL + (
    "buf = ctypes.create_string_buffer(64); "
    "n = libc.syscall(250, 11, ctypes.c_long(int(sys.argv[1])), buf, 64); "
    'print("FOUND=" + buf.raw[:n].decode()) if n >= 0 '
    'else sys.exit("read: " + os.strerror(ctypes.get_errno()))'
)
#: add_key("user", NAME, VALUE, len, KEYRING): argv is KEYRING NAME VALUE.
ADD_KEY_TO: Final = _KEYCTL + (
    'r = libc.syscall(248, b"user", sys.argv[2].encode(), sys.argv[3].encode(), '
    "len(sys.argv[3]), ctypes.c_long(int(sys.argv[1]))); "
    'sys.exit("add_key: " + os.strerror(ctypes.get_errno())) if r < 0 else print("KEY=", r)'
)
#: Run ARGV... in a new session keyring of root's holding the key "root-secret" (VALUE), as
#: systemd runs a service (KeyringMode=private, its default); ``{keyring}`` and ``{key}`` in
#: ARGV become their numbers. Afterwards, print what the keyring holds (``ROOT-KEYRING=``).
#: argv is VALUE ARGV...
IN_A_ROOT_SESSION: Final = _KEYCTL + (
    "import subprocess; SESSION = ctypes.c_long(-3); "
    "ring = libc.syscall(250, 1, None); "
    'key = libc.syscall(248, b"user", b"root-secret", sys.argv[1].encode(), '
    "len(sys.argv[1]), SESSION); "
    'argv = [a.replace("{keyring}", str(ring)).replace("{key}", str(key)) for a in sys.argv[2:]]; '
    "done = subprocess.run(argv); "
    "held = (ctypes.c_int32 * 16)(); n = libc.syscall(250, 11, SESSION, held, 64); "
    'print(f"ROOT-KEYRING={ring} holds", *held[: n // 4], f"KEY={key}", flush=True); '
    "sys.exit(done.returncode)"
)


def test_handlers_share_no_session_keyring(
    leaves_nothing: None, directory_name: Callable[[str], str]
) -> None:
    unit = directory_name("esc-session-keys")  # both runs as one unit: likely the same UID
    root_secret, secret = f"root-{secrets.token_hex(8)}", f"secret-{secrets.token_hex(8)}"

    def in_a_root_session(script: str) -> subprocess.CompletedProcess[str]:
        argv = activator_command(
            "run", "--pipe", "-p", "DynamicUser=yes", "--unit", unit,
            "sh", "-c", one_line(PRELUDE + script),
        )  # fmt: skip
        return subprocess.run(
            [PYTHON, "-Ic", IN_A_ROOT_SESSION, root_secret, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=CHECKOUT,
            check=False,
        )

    # The first handler puts a key into its session keyring (its own: that works), and goes for
    # the key of root's session keyring it was started in, by name and by number, and for the
    # keyring itself.
    first = in_a_root_session(
        f"""\
{PYTHON} -Ic '{ADD_KEY_TO}' -3 escape {secret}
attempt search-root {PYTHON} -Ic '{SEARCH_KEY}' -3 root-secret
attempt read-root {PYTHON} -Ic '{READ_KEY_BY_ID}' {{key}}
attempt plant-in-root {PYTHON} -Ic '{ADD_KEY_TO}' {{keyring}} planted pwned
"""
    )
    uid = ok(first)
    assert "KEY=" in first.stdout.split("ROOT-KEYRING=")[0], first.stdout
    assert_all_failed(
        first,
        {
            "search-root": "search: Required key not available",
            "read-root": "read: Permission denied",
            "plant-in-root": "add_key: Permission denied",
        },
    )
    assert root_secret not in first.stdout
    # Root's session keyring holds its own key and nothing the handler planted.
    found = re.search(r"^ROOT-KEYRING=\d+ holds (.*) KEY=(\d+)$", first.stdout, re.MULTILINE)
    assert found is not None, first.stdout
    assert found.group(1).split() == [found.group(2)]
    # The next handler (of the same UID, most likely) finds nothing of the first in its own.
    second = in_a_root_session(
        f"attempt search-first {PYTHON} -Ic '{SEARCH_KEY}' -3 escape\n"
        f"attempt search-user-session {PYTHON} -Ic '{SEARCH_KEY}' -5 escape\n"
    )
    second_uid = ok(second)
    assert secret not in second.stdout, f"UID {second_uid} read the key of UID {uid}"
    assert_all_failed(
        second,
        {
            "search-first": "search: Required key not available",
            "search-user-session": "search: Required key not available",
        },
    )
    assert keys_of(uid) == []


#: add_key("user", "escape", SECRET, len, @u), then take write permission on @u away from its UID
#: and every possessor, so that no one can clear it (the UID keeps setattr, for the cleanup).
LOCK_KEY: Final = ADD_KEY + (
    "; r = libc.syscall(250, 5, USER_KEYRING, 0x1B3B0000); "
    'sys.exit("setperm: " + os.strerror(ctypes.get_errno())) if r < 0 else None'
)
#: Give @u its kernel permissions back, then clear @u and @us.
UNLOCK_KEYS: Final = _KEYCTL + (
    "r = min(libc.syscall(250, 5, USER_KEYRING, 0x1F3F0000), "
    "libc.syscall(250, 7, USER_KEYRING), libc.syscall(250, 7, ctypes.c_long(-5))); "
    'sys.exit("unlock: " + os.strerror(ctypes.get_errno())) if r < 0 else None'
)


def test_a_handler_cannot_make_its_keyring_uncleanable(
    leaves_nothing: None, directory_name: Callable[[str], str]
) -> None:
    # A handler that took write permission on its user keyring away would make it impossible
    # to clear (root included), and so keep its UID out of the pool for good: one UID burnt per
    # connection. The sandbox's seccomp filter refuses KEYCTL_SETPERM.
    unit = directory_name("esc-locked-keys")
    secret = f"secret-{secrets.token_hex(8)}"
    first = handler(f"attempt lock-key {PYTHON} -Ic '{LOCK_KEY}' {secret}", unit=unit)
    uid = printed_uid(first.stdout)
    try:
        assert attempts(first)["lock-key"] == "failed: setperm: Operation not permitted", (
            first.stdout
        )
        assert "still owns kernel keys" not in first.stderr, first.stderr
        # Teardown cleared the key the handler added before trying: the next run finds nothing.
        second = handler(f"attempt read-key {PYTHON} -Ic '{READ_KEY}'", unit=unit)
        ok(second)
        assert secret not in second.stdout
    finally:
        as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        subprocess.run([*as_uid, PYTHON, "-Ic", UNLOCK_KEYS], check=True)
    deadline = time.monotonic() + 5.0
    while keys_of(uid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert keys_of(uid) == []


#: keyctl(OP, ARG) through the i386 entry (``int $0x80``, keyctl is 288 there) from a 64-bit
#: process: prints the result or "error: <strerror>". x86-64 only.
COMPAT_KEYCTL: Final = """
import ctypes, mmap, os, sys
op, arg = int(sys.argv[1]), int(sys.argv[2])
word = lambda n: (n & 0xFFFFFFFF).to_bytes(4, "little")
code = (b"\\x53\\xb8" + word(288) + b"\\xbb" + word(op) + b"\\xb9" + word(arg) + b"\\xba" + word(0)
        + b"\\xcd\\x80\\x5b\\xc3")  # push rbx; mov eax/ebx/ecx/edx; int 0x80; pop rbx; ret
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
result = call()
print(result if result >= 0 else "error: " + os.strerror(-result))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the i386 entry is x86-64's")
def test_the_keyring_filter_has_no_way_around_through_the_32_bit_entry(
    leaves_nothing: None,
) -> None:
    # The same KEYCTL_SETPERM on @u (-4), through int $0x80: the filter must see that
    # architecture too. KEYCTL_GET_KEYRING_ID (0) shows the entry itself works in the sandbox.
    works = run_activator("run", "--pipe", "-p", "DynamicUser=yes", PYTHON, "-", "0", "-4",
                          input=COMPAT_KEYCTL)  # fmt: skip
    assert works.returncode == 0, works.stderr
    assert int(works.stdout) > 0
    refused = run_activator("run", "--pipe", "-p", "DynamicUser=yes", PYTHON, "-", "5", "-4",
                            input=COMPAT_KEYCTL)  # fmt: skip
    assert refused.stdout == "error: Operation not permitted\n", refused.stderr
