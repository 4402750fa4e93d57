"""The manager on a real spawner, pool, cgroups and sockets, driven through its own API: plain
services started and stopped (the control socket's verbs to come), ``Restart=``, Accept=no
activation by a start request, and reloads that keep unchanged sockets.

Every test runs as root (the spawner forks sandboxed handlers) with its lock files under
``tmp_path`` and a small UID range of its own, so it never meets a UID the default pool uses.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest
import trio

from activator import teardown
from activator.catalog import Catalog
from activator.invocation import Outcome, Runtime
from activator.leases import LeaseService
from activator.loader import load_catalog
from activator.manager import Manager, ManagerError, ReloadReport
from activator.spawner import Spawner

pytestmark = pytest.mark.root

#: A UID range of these tests only (inside the default pool, away from its first UIDs).
FIRST, LAST = 65400, 65419


def write(directory: Path, units: Mapping[str, str]) -> None:
    directory.mkdir(exist_ok=True)
    for name, text in units.items():
        (directory / name).write_text(text)


def pool_processes() -> list[int]:
    """PIDs of processes whose real UID is in this test's range."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = os.stat(f"/proc/{name}")
            except OSError:
                continue
            if FIRST <= stat.st_uid <= LAST:
                out.append(int(name))
    return out


class World:
    """A runtime, a manager serving a units directory, and every outcome it produced."""

    def __init__(self, runtime: Runtime, units: Path, leases: Path) -> None:
        self.units = units
        self.leases = leases
        self.outcomes: list[Outcome] = []
        self.finished = trio.Event()
        self.stopped = trio.Event()
        runtime.on_finished = self._record
        self.manager = Manager(runtime, lambda: load_catalog([str(units)]))

    async def serve(
        self,
        catalog: Catalog,
        *,
        task_status: trio.TaskStatus[ReloadReport] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the manager until it stops (:attr:`stopped` is set then)."""
        try:
            await self.manager.serve(catalog, task_status=task_status)
        finally:
            self.stopped.set()

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.finished.set()
        self.finished = trio.Event()

    async def wait_outcomes(self, count: int, within: float = 10.0) -> list[Outcome]:
        with trio.fail_after(within):
            while len(self.outcomes) < count:
                await self.finished.wait()
        return self.outcomes

    async def wait_until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        with trio.fail_after(within):
            while not predicate():  # noqa: ASYNC110 - the host's state has no event to wait on
                await trio.sleep(0.02)

    def lease_files(self) -> list[str]:
        return os.listdir(self.leases) if self.leases.exists() else []


Start = Callable[[Mapping[str, str]], Awaitable[World]]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Start]:
    """A factory: write units, start serving them; everything stops when the test ends."""
    spawner = Spawner.launch()
    worlds: list[World] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(spawner.serve)
        cgroups = await trio.to_thread.run_sync(teardown.Cgroups.detect)
        leases = LeaseService(FIRST, LAST, lease_directory=str(tmp_path / "uid"))
        await trio.to_thread.run_sync(leases.recover, trio.current_time())
        await nursery.start(leases.run)
        runtime = Runtime(spawner, leases, cgroups)

        async def start(units: Mapping[str, str]) -> World:
            write(tmp_path / "units", units)
            world = World(runtime, tmp_path / "units", tmp_path / "uid")
            catalog = await trio.to_thread.run_sync(load_catalog, [str(world.units)])
            await nursery.start(world.serve, catalog)
            worlds.append(world)
            return world

        yield start
        with trio.fail_after(30):
            for world in worlds:
                world.manager.request_stop()
                await world.stopped.wait()
        nursery.cancel_scope.cancel()
    leases.close()
    await spawner.aclose()
    assert pool_processes() == []


SLEEPER = """\
[Service]
ExecStart=/bin/sleep 1000
DynamicUser=yes
TimeoutStopSec=5
"""


async def test_a_plain_service_starts_as_a_dynamic_user_and_stops_releasing_it(
    world: Start,
) -> None:
    w = await world({"sleeper.service": SLEEPER})
    await w.manager.start("sleeper.service")
    await w.wait_until(lambda: len(pool_processes()) == 1)
    assert len(w.lease_files()) == 1
    await w.manager.start("sleeper")  # already running: nothing more starts
    await trio.sleep(0.2)
    assert len(pool_processes()) == 1
    await w.manager.stop("sleeper.service")
    (outcome,) = await w.wait_outcomes(1)
    assert outcome.stopped
    assert outcome.status is not None
    assert outcome.status.signal == 9  # sleep as PID 1 ignores SIGTERM: SIGKILL at once
    assert pool_processes() == []
    assert w.lease_files() == []


async def test_an_unknown_service_cannot_be_started(world: Start) -> None:
    w = await world({"sleeper.service": SLEEPER})
    with pytest.raises(ManagerError, match=r"nothere\.service: no such unit"):
        await w.manager.start("nothere.service")


async def test_restart_on_failure_restarts_until_stopped(world: Start) -> None:
    unit = """\
[Service]
ExecStart=/bin/sh -c 'exit 3'
DynamicUser=yes
Restart=on-failure
RestartSec=50ms
"""
    w = await world({"flaky.service": unit})
    await w.manager.start("flaky.service")
    outcomes = await w.wait_outcomes(3)
    assert [o.status.code for o in outcomes[:3] if o.status] == [3, 3, 3]
    await w.manager.stop("flaky.service")
    count = len(w.outcomes)
    await trio.sleep(0.3)
    assert len(w.outcomes) == count  # no restart after a stop
    assert w.lease_files() == []


async def test_restart_on_failure_leaves_a_clean_exit_alone(world: Start) -> None:
    unit = """\
[Service]
ExecStart=/bin/true
DynamicUser=yes
Restart=on-failure
RestartSec=10ms
"""
    w = await world({"once.service": unit})
    await w.manager.start("once.service")
    await w.wait_outcomes(1)
    await trio.sleep(0.3)
    assert len(w.outcomes) == 1
    assert "once.service" not in w.manager.services


ACCEPT_NO = {
    "pass.socket": "[Socket]\nListenStream=127.0.0.1:{port}\nFileDescriptorName=web\n",
    "pass.service": """\
[Service]
ExecStart=/bin/sh -c 'echo "$LISTEN_FDS $LISTEN_FDNAMES" > /run/pass/fds; sleep 1000'
DynamicUser=yes
RuntimeDirectory=pass
RuntimeDirectoryPreserve=yes
""",
}


def remove_run_pass() -> None:
    """Remove the preserved runtime directory of pass.service: with a dynamic user it is
    ``/run/private/pass`` behind the symlink ``/run/pass``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink("/run/pass/fds")
    with contextlib.suppress(FileNotFoundError):
        os.unlink("/run/pass")
    with contextlib.suppress(FileNotFoundError):
        os.rmdir("/run/private/pass")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_start_request_activates_an_accept_no_service_with_its_sockets(
    world: Start,
) -> None:
    port = free_port()
    units = {name: text.format(port=port) for name, text in ACCEPT_NO.items()}
    w = await world(units)
    try:
        await w.manager.start("pass.service")
        await w.wait_until(lambda: Path("/run/pass/fds").exists())
        await w.wait_until(lambda: Path("/run/pass/fds").read_text() == "1 web\n")
        await w.manager.stop("pass.service")
        await w.wait_outcomes(1)
        assert w.lease_files() == []
        # It is not started again without traffic; a connection starts it.
        await trio.sleep(0.2)
        assert len(w.outcomes) == 1
        remove_run_pass()
        with socket.create_connection(("127.0.0.1", port)):
            await w.wait_until(lambda: Path("/run/pass/fds").exists())
    finally:
        remove_run_pass()


async def test_a_reload_keeps_an_unchanged_socket_and_rebinds_a_changed_one(world: Start) -> None:
    one, two = free_port(), free_port()
    service = "[Service]\nExecStart=/bin/true\nDynamicUser=yes\nStandardInput=socket\n"
    w = await world({
        "a.socket": f"[Socket]\nListenStream=127.0.0.1:{one}\nAccept=yes\n",
        "a@.service": service,
        "b.socket": f"[Socket]\nListenStream=127.0.0.1:{two}\nAccept=yes\n",
        "b@.service": service,
    })  # fmt: skip
    kept = w.manager.sockets["a.socket"].listening[0][1]
    changed = w.manager.sockets["b.socket"].listening[0][1]
    write(w.units, {
        "a@.service": service.replace("/bin/true", "/bin/false"),
        "b.socket": f"[Socket]\nListenStream=127.0.0.1:{two}\nAccept=yes\nBacklog=7\n",
    })  # fmt: skip
    report = await w.manager.reload()
    assert report.kept == ("a.socket", "b@.service")
    assert report.changed == ("b.socket", "a@.service")
    assert w.manager.sockets["a.socket"].listening[0][1] is kept
    assert kept.fileno() >= 0
    assert w.manager.sockets["b.socket"].listening[0][1] is not changed
    assert changed.fileno() == -1  # closed
    with socket.create_connection(("127.0.0.1", one)):
        pass
    (outcome,) = await w.wait_outcomes(1)
    assert outcome.status is not None
    assert outcome.status.code == 1  # the new service: /bin/false
    # A unit that breaks keeps its old version; a removed one stops listening.
    write(w.units, {"b.socket": "[Socket]\nListenStream=nonsense\nAccept=yes\n"})
    (w.units / "a.socket").unlink()
    report = await w.manager.reload()
    assert report.failed == ("b.socket",)
    assert report.removed == ("a.socket",)  # a@.service stays: a unit without a socket
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", one)).close()
    with socket.create_connection(("127.0.0.1", two)):
        pass
    await w.wait_outcomes(2)


async def test_a_changed_socket_unit_with_the_same_listen_spec_keeps_its_socket(
    world: Start,
) -> None:
    port = free_port()
    service = "[Service]\nExecStart=/bin/true\nDynamicUser=yes\nStandardInput=socket\n"
    w = await world({
        "m.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
        "m@.service": service,
    })  # fmt: skip
    before = w.manager.sockets["m.socket"].listening[0][1]
    write(
        w.units,
        {"m.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\nMaxConnections=3\n"},
    )
    report = await w.manager.reload()
    assert report.changed == ("m.socket",)
    state = w.manager.sockets["m.socket"]
    assert state.listening[0][1] is before
    assert state.admission.limits.max_connections == 3
    with socket.create_connection(("127.0.0.1", port)):
        pass
    await w.wait_outcomes(1)


async def test_a_changed_unit_that_cannot_bind_keeps_its_previous_version(world: Start) -> None:
    port = free_port()
    service = "[Service]\nExecStart=/bin/true\nDynamicUser=yes\nStandardInput=socket\n"
    w = await world({
        "k.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
        "k@.service": service,
    })  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        write(w.units, {"k.socket": f"[Socket]\nListenStream=127.0.0.1:{busy}\nAccept=yes\n"})
        report = await w.manager.reload()
    assert report.failed == ("k.socket",)
    assert "k.socket" in w.manager.sockets
    with socket.create_connection(("127.0.0.1", port)):
        pass
    await w.wait_outcomes(1)


async def test_a_reload_that_removes_a_unit_removes_its_socket_file_with_remove_on_stop(
    world: Start, tmp_path: Path
) -> None:
    path = tmp_path / "r.sock"
    service = "[Service]\nExecStart=/bin/true\nDynamicUser=yes\nStandardInput=socket\n"
    w = await world({
        "r.socket": f"[Socket]\nListenStream={path}\nAccept=yes\nRemoveOnStop=yes\n",
        "r@.service": service,
    })  # fmt: skip
    assert path.is_socket()
    (w.units / "r.socket").unlink()
    report = await w.manager.reload()
    assert report.removed == ("r.socket",)
    assert not path.exists()


async def test_strict_refuses_to_serve_when_a_socket_cannot_be_made(tmp_path: Path) -> None:
    spawner = Spawner.launch()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(spawner.serve)
            cgroups = await trio.to_thread.run_sync(teardown.Cgroups.detect)
            leases = LeaseService(FIRST, LAST, lease_directory=str(tmp_path / "uid"))
            runtime = Runtime(spawner, leases, cgroups)
            good, bad = free_port(), free_port()
            service = "[Service]\nExecStart=/bin/true\nDynamicUser=yes\nStandardInput=socket\n"
            write(tmp_path / "units", {
                "a.socket": f"[Socket]\nListenStream=127.0.0.1:{good}\nAccept=yes\n",
                "a@.service": service,
                "b.socket": f"[Socket]\nListenStream=127.0.0.1:{bad}\nAccept=yes\n",
                "b@.service": service,
            })  # fmt: skip
            catalog = await trio.to_thread.run_sync(load_catalog, [str(tmp_path / "units")])
            manager = Manager(runtime, lambda: catalog, strict=True)
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", bad))
                taken.listen()
                with trio.fail_after(10):
                    await manager.serve(catalog)
            assert manager.fatal is not None
            assert f"b.socket: ListenStream=127.0.0.1:{bad}: bind: Address already in use" in (
                manager.fatal
            )
            with pytest.raises(ConnectionRefusedError):  # nothing stayed bound
                socket.create_connection(("127.0.0.1", good)).close()
            nursery.cancel_scope.cancel()
    finally:
        await spawner.aclose()


async def test_a_second_stop_request_kills_connections_at_once(world: Start) -> None:
    port = free_port()
    w = await world({
        "h.socket": f"[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n",
        "h@.service": (
            "[Service]\nExecStart=/bin/sleep 1000\nDynamicUser=yes\nStandardInput=socket\n"
            "TimeoutStopSec=1h\n"
        ),
    })  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)):
        await w.wait_until(lambda: len(pool_processes()) == 1)
        w.manager.request_stop()
        await trio.sleep(0.3)
        assert len(pool_processes()) == 1  # TimeoutStopSec=1h: it may still finish by itself
        w.manager.request_stop()
        (outcome,) = await w.wait_outcomes(1)
    assert outcome.status is not None
    assert outcome.status.signal == 9
    assert outcome.stopped


async def test_restart_sec_infinity_never_restarts(world: Start) -> None:
    unit = """\
[Service]
ExecStart=/bin/sh -c 'exit 3'
DynamicUser=yes
Restart=always
RestartSec=infinity
"""
    w = await world({"never.service": unit})
    await w.manager.start("never.service")
    await w.wait_outcomes(1)
    await trio.sleep(0.3)
    assert len(w.outcomes) == 1
    await w.manager.stop("never.service")
    assert "never.service" not in w.manager.services


async def test_a_second_stop_request_kills_a_service_that_catches_kill_signal(world: Start) -> None:
    unit = """\
[Service]
ExecStart=/bin/sh -c 'trap "echo ignoring TERM" TERM; while :; do sleep 0.1; done'
DynamicUser=yes
TimeoutStopSec=infinity
"""
    w = await world({"stubborn.service": unit})
    await w.manager.start("stubborn.service")
    await w.wait_until(lambda: len(pool_processes()) >= 1)
    await trio.sleep(0.2)  # its trap is set
    w.manager.request_stop()  # KillSignal=: caught; TimeoutStopSec=infinity: it would run on
    await trio.sleep(0.5)
    assert w.outcomes == []
    assert pool_processes() != []
    w.manager.request_stop()  # the second: SIGKILL now
    (outcome,) = await w.wait_outcomes(1)
    assert outcome.status is not None
    assert outcome.status.signal == 9
    assert outcome.stopped
