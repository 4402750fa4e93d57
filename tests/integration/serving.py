"""A real ``activator serve`` for integration tests, and the clients' side of it.

:func:`serve` (the ``server`` fixture's factory) writes unit files and an ``activator.toml`` into
the test's temporary directory, starts ``activator serve`` on them as a subprocess with JSON
logging, and waits for its ``ready`` event. A thread reads the server's stderr: every line is one
JSON object (:attr:`Server.events`); anything else (a traceback) is kept as ``{"raw": line}`` and
fails :meth:`Server.stop`'s check.

The clients' side: :class:`Client` is one connection (TCP over IPv4 or IPv6, or a Unix stream
socket) whose every read has a deadline; :func:`exchange` sends a request, half-closes and reads
the whole answer; :func:`getent_passwd` asks the host's NSS (nss-systemd included) about a UID.

A running server seen from outside: :func:`spawner_of` (its spawner process), :func:`userdb_socket`
(the userdb socket it serves), :func:`lease_files` and :func:`lease_records` (its lease files).

Fixtures:
    server: (re-exported by conftest) a factory ``server(units, settings="", strict=False)``
        of running servers, each stopped with SIGTERM (then SIGKILL, by PID) when the test ends;
        ``wrapper=["prlimit", "--nofile=64:64", "--"]`` runs the server through a command that
        execs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

from activator.userdb import SOCKET_PATH as USERDB_SOCKET
from tests.integration.conftest import CHECKOUT, LEASE_DIRECTORY, activator_command, children_of

Event = dict[str, Any]

#: How long a server has to start (bind, recover the pool) before a test gives up.
START_TIMEOUT: Final = 30.0
#: How long a client waits for a connection, or for the next bytes of an answer.
CLIENT_TIMEOUT: Final = 15.0

#: Where a client connects: a Unix socket path, or (host, port) with an IPv4 or IPv6 host.
Address = str | tuple[str, int]

#: The inetd-style echo handler: its UID, then every byte the client sends, back.
ECHO: Final = "/bin/sh -c 'echo UID=$(id -u); exec cat'"

#: The spawner's script, as its command line shows it.
SPAWNER_SCRIPT: Final = "activator/spawner/__main__.py"


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound to port 0, then closed)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """One running ``activator serve`` and everything it logged."""

    def __init__(self, proc: subprocess.Popen[str], directory: Path, control: Path) -> None:
        self.proc = proc
        self.directory = directory
        self.units = directory / "units"
        #: The control socket ``activator status`` and friends talk to (``--control PATH``).
        self.control = control
        self.events: list[Event] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    event = {"raw": line.rstrip("\n")}
            except ValueError:
                event = {"raw": line.rstrip("\n")}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 10.0, *, count: int = 1
    ) -> list[Event]:
        """The first ``count`` events that satisfy ``predicate``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [e for e in self.events if predicate(e)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    msg = f"no {count} matching events in {timeout} s; log:\n{self.log()}"
                    raise AssertionError(msg)
                self._changed.wait(min(left, 0.2))

    def invocations(self, unit_prefix: str = "") -> list[Event]:
        """Every finished invocation logged so far (of units starting with ``unit_prefix``)."""
        with self._changed:
            return [
                e
                for e in self.events
                if e.get("event") == "invocation" and str(e.get("unit", "")).startswith(unit_prefix)
            ]

    def rejects(self) -> list[Event]:
        """Every rejected connection logged so far."""
        with self._changed:
            return [e for e in self.events if e.get("event") == "reject"]

    def log(self) -> str:
        """Everything logged so far, one line per event (for assertion messages)."""
        with self._changed:
            return "\n".join(json.dumps(e) for e in self.events)

    def signal(self, signum: int) -> None:
        """Send a signal to the server, by PID."""
        os.kill(self.proc.pid, signum)

    def reload(self, timeout: float = 10.0) -> Event:
        """SIGHUP, then wait for the next ``reload`` event."""
        before = len([e for e in self.events if e.get("event") == "reload"])
        self.signal(signal.SIGHUP)
        return self.wait_for(lambda e: e.get("event") == "reload", timeout, count=before + 1)[-1]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit; its status. Asserts no traceback was logged."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the server to exit (after a signal already sent); its status. Asserts no
        traceback was logged. SIGKILL, by PID, when it does not exit within ``timeout`` s."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.close()
        raw = [e["raw"] for e in self.events if "raw" in e]
        assert not raw, "activator serve printed non-JSON lines:\n" + "\n".join(raw)
        return code

    def close(self) -> None:
        """After the exit: wait for the reader to see the end of the log, and close the pipe.

        The pipe stays open while the reader is still blocked on it (some process of the server
        outlived it and holds its stderr): closing it under the reader would hang.
        """
        self._reader.join(5)
        if not self._reader.is_alive() and self.proc.stderr is not None:
            self.proc.stderr.close()


#: The ``server`` fixture's factory.
StartServer = Callable[..., Server]


def service_units(
    name: str,
    port: int,
    command: str,
    *,
    socket_lines: Sequence[str] = (),
    service_lines: Sequence[str] = (),
) -> dict[str, str]:
    """``NAME.socket`` (Accept=yes on 127.0.0.1:``port``, then ``socket_lines``) and
    ``NAME@.service`` running ``command`` as a dynamic user with the connection on its stdin and
    stdout (then ``service_lines``)."""
    socket_extra = "".join(f"{line}\n" for line in socket_lines)
    service_extra = "".join(f"{line}\n" for line in service_lines)
    return {
        f"{name}.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n{socket_extra}",
        f"{name}@.service": (
            f"[Service]\nExecStart={command}\nDynamicUser=yes\n"
            f"StandardInput=socket\nStandardOutput=socket\n{service_extra}"
        ),
    }


def echo_units(name: str, port: int, *socket_lines: str, stderr: str = "inherit") -> dict[str, str]:
    """:func:`service_units` of the :data:`ECHO` handler, its stderr ``StandardError=stderr``
    (``journal`` gives each invocation a pipe to the log)."""
    return service_units(
        name, port, ECHO, socket_lines=socket_lines, service_lines=[f"StandardError={stderr}"]
    )


def write_units(directory: Path, units: Mapping[str, str]) -> None:
    """Write unit files (name -> text) into ``directory``, replacing what is there by name."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (directory / name).write_text(text, encoding="utf-8")


def write_config(
    directory: Path, settings: str = "", *, metrics: str = "", control: Path | None = None
) -> Path:
    """``directory/activator.toml`` for a test server: units from ``directory/units``, enabled
    instances in ``directory/enabled``, the control socket ``control`` (default
    ``directory/control``), the metrics endpoint at ``metrics`` (``""``: none), JSON log, then
    ``settings`` (more TOML tables)."""
    config = directory / "activator.toml"
    config.write_text(
        '[units]\ndirectories = ["units"]\nenabled_directory = "enabled"\n'
        f'[control]\nsocket = "{control or directory / "control"}"\n'
        f'[metrics]\nlisten = "{metrics}"\n[log]\nformat = "json"\n{settings}',
        encoding="utf-8",
    )
    return config


def lease_files() -> list[str]:
    """The lease lock files that exist now (one per leased UID)."""
    try:
        return sorted(os.listdir(LEASE_DIRECTORY))
    except FileNotFoundError:
        return []


def lease_records(pool: range | None = None, unit_prefix: str = "") -> dict[int, dict[str, Any]]:
    """The lease files that exist now, with their records: UID -> record.

    Only UIDs of ``pool`` (any, without it) and records whose unit starts with ``unit_prefix``
    (another activator on the host may lease a UID of ``pool`` too). A file that is gone by the
    time it is read (released meanwhile) is left out; one that is not a JSON object (being
    rewritten, or damaged) has the record ``{}``, which no ``unit_prefix`` but ``""`` matches.
    """
    out: dict[int, dict[str, Any]] = {}
    for name in lease_files():
        if not name.isdigit() or (pool is not None and int(name) not in pool):
            continue
        try:
            text = Path(LEASE_DIRECTORY, name).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        try:
            record = json.loads(text)
        except ValueError:
            record = {}
        if not isinstance(record, dict):
            record = {}
        if str(record.get("unit", "")).startswith(unit_prefix):
            out[int(name)] = record
    return out


def spawner_of(pid: int) -> int:
    """The PID of the spawner of the ``activator serve`` process ``pid``: its one child running
    the spawner's script."""
    found = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as file:
                if SPAWNER_SCRIPT.encode() in file.read():
                    found.append(child)
        except OSError:
            continue
    assert len(found) == 1, f"not one spawner among the children of {pid}: {found}"
    return found[0]


def userdb_socket(server: Server) -> str:
    """The userdb socket ``server`` serves: the main one, or its own beside it when another
    activator served the main one first (it logs "serving PATH instead"). Asserts that the
    server holds a socket listening on that path (``/proc/PID/net/unix``, of its network
    namespace)."""
    path = USERDB_SOCKET
    for event in server.events:
        found = re.search(r"serving (\S+) instead", str(event.get("message", "")))
        if found:
            path = found.group(1)
            break
    pid = server.proc.pid
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile (a connection)
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    with open(f"/proc/{pid}/net/unix", encoding="ascii") as file:
        bound = {
            fields[6] for line in file if len(fields := line.split()) >= 8 and fields[7] == path
        }
    assert any(f"socket:[{inode}]" in held for inode in bound), f"{pid} does not serve {path}"
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """A factory of running ``activator serve`` processes, each stopped when the test ends."""
    started: list[Server] = []

    def start(
        units: Mapping[str, str],
        settings: str = "",
        *,
        strict: bool = False,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        wait: bool = True,
        wrapper: Sequence[str] = (),
        metrics: str = "",
        directory: Path | None = None,
        control: Path | None = None,
    ) -> Server:
        """Start ``activator serve`` in ``directory`` (default: a fresh one under tmp_path;
        name one again to restart a server on the same units, enabled instances and state)."""
        directory = directory or tmp_path / f"server{len(started)}"
        write_units(directory / "units", units)
        config = write_config(directory, settings, metrics=metrics, control=control)
        argv = [*wrapper, *activator_command("serve", "--config", str(config), *args)]
        if strict:
            argv.append("--strict")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=CHECKOUT,
            env=None if env is None else {**os.environ, **env},
            pass_fds=pass_fds,
        )
        server = Server(proc, directory, control or directory / "control")
        started.append(server)
        if wait:
            server.wait_for(lambda e: e.get("event") == "ready", START_TIMEOUT)
        return server

    yield start
    for each in started:
        with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError):
            if each.proc.poll() is None:
                each.signal(signal.SIGTERM)
                each.proc.wait(30)
        if each.proc.poll() is None:
            each.proc.kill()
            each.proc.wait()
        each.close()


class Client:
    """One client connection to a served socket; a read (:meth:`line`, :meth:`rest`) takes at
    most ``timeout`` s in all, and so does the connect.

    ``address`` is a Unix socket path, or ``(host, port)`` (IPv6 when host holds a ``:``);
    ``source`` binds a TCP client to that address first (``127.0.0.3``). :attr:`port` is the
    client's own TCP port (None for a Unix socket). Use it as a context manager: the socket is
    closed at the end.
    """

    def __init__(
        self, address: Address, timeout: float = CLIENT_TIMEOUT, *, source: str | None = None
    ) -> None:
        if isinstance(address, str):
            family = socket.AF_UNIX
        else:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.buffer = b""
        try:
            if source is not None:
                self.sock.bind((source, 0))
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.port: int | None = None if isinstance(address, str) else self.sock.getsockname()[1]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        """Send all of ``data``."""
        self.sock.sendall(data)

    def finish_sending(self) -> None:
        """Half-close: the server reads end of file, and may still answer."""
        self.sock.shutdown(socket.SHUT_WR)

    def _more(self, deadline: float, got: bytes) -> bytes:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            return self.sock.recv(65536)
        except TimeoutError:
            msg = f"the server did not finish in {self.timeout} s: {got!r}"
            raise AssertionError(msg) from None

    def line(self) -> str:
        """The next line the server sent, without its newline; AssertionError at end of file."""
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.buffer:
            chunk = self._more(deadline, self.buffer)
            if not chunk:
                msg = f"the connection ended before a whole line: {self.buffer!r}"
                raise AssertionError(msg)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def rest(self) -> bytes:
        """Everything the server sends until it closes the connection (or resets it)."""
        out, self.buffer = self.buffer, b""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                chunk = self._more(deadline, out)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.sock.close()


def exchange(address: Address, request: bytes, timeout: float = CLIENT_TIMEOUT) -> bytes:
    """Connect, send ``request``, half-close, and return the whole answer."""
    with Client(address, timeout) as client:
        client.send(request)
        client.finish_sending()
        return client.rest()


def host_env() -> dict[str, str]:
    """The environment of a host tool: nss-systemd asks every userdb service, ours included."""
    return {k: v for k, v in os.environ.items() if k != "SYSTEMD_BYPASS_USERDB"}


def getent_passwd(key: int | str) -> subprocess.CompletedProcess[str]:
    """``getent passwd KEY`` as the host runs it (exit status 2: no such user)."""
    return subprocess.run(
        ["getent", "passwd", str(key)],
        capture_output=True,
        text=True,
        env=host_env(),
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
