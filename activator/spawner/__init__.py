"""The spawner: one small process that forks every handler, and its trio-side client.

Rule 1: the trio process never forks a handler. :meth:`Spawner.launch` starts the spawner
(``activator/spawner/__main__.py``, its own interpreter importing only the standard library,
attrs and :mod:`activator.sandbox`, never trio nor the unit model: 17 MB resident, of which
attrs is 4 MB; trio would add 15 MB) once, synchronously, before trio starts any thread (and
after daemonizing: the spawner must be the daemon's child). It runs in its own session, so a
terminal's Ctrl-C does not reach it. The spawner is single-threaded: one ``poll`` over its
control socket, its children's report pipes and their pidfds (:mod:`._server`). Each plan is
applied in the forked child (:mod:`._child`) in the order :mod:`activator.sandbox` gives, then
the child execs; no interpreter starts per handler.

Rule 2: one ``SOCK_SEQPACKET`` socketpair carries JSON requests with the plan's descriptors in
``SCM_RIGHTS``, and JSON replies (:mod:`._protocol`). Each spawn ends in exactly one of:
``failed`` (stage, errno, message; sent once the child is reaped, so nothing of it is left) or
``started`` then ``exited`` (sent once the handler is reaped: in its own PID namespace, that is
once every process of the invocation is gone, since the kernel kills and reaps the rest of a
namespace before its PID 1 can be reaped). A :class:`SpawnFailed` is logged here with the unit
and the invocation. :meth:`Spawner.clear_keyrings` forks a one-shot child the same way (it
becomes a UID, clears that UID's user keyrings and exits: only a process of the UID can), which
ends in ``failed`` or ``exited``.

Rule 3: the trio side holds a pidfd of every running handler, passed with ``started``. So
:meth:`Handler.kill` signals exactly that process, without a round trip and even while the
spawner is down, and the activator can always tell when a handler is gone.

Rule 4: no invocation is lost silently. If the spawner dies, :meth:`Spawner.serve` fails every
spawn in flight with :class:`SpawnerDied`, logs, and starts a new spawner. Running handlers die
with their spawner (the child sets ``PR_SET_PDEATHSIG``: their exit status would be lost with
it, and a handler nobody can report on must not run on); each pending :meth:`Handler.wait`
raises :class:`SpawnerDied` once its pidfd says the handler is gone (dead; the host's init, not
the activator, reaps what is left of it). A spawn in flight when the spawner dies may have
forked a child: the kernel kills it the same way, and it is in the plan's cgroup if it got as
far as writing itself there, so the caller's teardown of that cgroup is what confirms it gone.

Rule 5: cancelling :meth:`Spawner.spawn` kills the child it may have started (a ``kill``
request by id), so a cancelled spawn leaves no handler running. :meth:`Spawner.aclose` kills
every running handler (their :meth:`Handler.wait` return ``killed by SIGKILL``), then closes
the socket: on end of file the spawner kills whatever it still has, reaps it and exits.

Kernel facts this relies on (Linux 6.18 here):

- ``unshare(CLONE_NEWPID)`` puts only the spawner's *next* child into a new PID namespace; the
  spawner restores its own with ``setns`` right after the fork (a second ``unshare`` without it
  fails with EINVAL).
- A handler is PID 1 of its namespace, and PID 1 gets no signal it has no handler for, except
  SIGKILL and SIGSTOP from an ancestor namespace (and faults the kernel raises, such as a real
  segmentation fault). So ``kill(SIGTERM)`` stops only a handler that handles SIGTERM, and a
  handler's ``kill -SEGV $$`` on itself does nothing; :meth:`Handler.kill` defaults to SIGKILL.
- The parent-death signal is cleared by a credential change, so the child sets it again after
  ``setresuid``. The spawner itself gets none: it would fire when the *thread* that started it
  ends, and a restart starts it from a trio worker thread; it watches its socket instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import signal as signals
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from activator.errors import ActivatorError
from activator.sandbox import SpawnPlan, plan_to_wire

from . import _protocol

__all__ = ["ExitStatus", "Handler", "SpawnFailed", "Spawner", "SpawnerDied"]

logger = logging.getLogger("activator.spawner")

#: The spawner's main, run as a script so that this module (and trio) stays out of it.
SCRIPT: Final = str(Path(__file__).resolve().with_name("__main__.py"))
#: How long a starting spawner may take to say it is ready.
READY_TIMEOUT: Final = 30.0
#: How long :meth:`Spawner.aclose` waits for killed handlers to be reported.
CLOSE_TIMEOUT: Final = 10.0
#: The stage of a keyring failure: a handler's own session keyring, or a clear.
KEYRING_STAGE: Final = "keyring"
#: Replies are small JSON objects.
_REPLY_SIZE: Final = 1 << 16


class SpawnFailed(ActivatorError):
    """The child could not start the handler; nothing of it is left running.

    Attributes:
        stage: the stage that failed (``cgroup``, ``namespaces``, ``mount``, ``rlimit``,
            ``nice``, ``fds``, ``chdir``, ``privileges``, ``keyring``, ``exec``; ``fork``,
            ``request`` or ``internal`` for failures around them).
        errno: the error number.
        message: what a log shows, e.g. ``exec /usr/bin/x: No such file or directory``.
        unit, invocation: from the plan.
    """

    def __init__(self, stage: str, error: int, message: str, *, unit: str, invocation: str):
        super().__init__(message)
        self.stage = stage
        self.errno = error
        self.message = message
        self.unit = unit
        self.invocation = invocation

    def __str__(self) -> str:
        return self.message


class SpawnerDied(ActivatorError):
    """The spawner died while this request was outstanding, or this handler was running.

    For a handler, the handler is gone too (it died with the spawner) but its exit status is
    lost.
    """


@attrs.frozen
class ExitStatus:
    """How a handler ended: ``code`` when it exited, ``signal`` when a signal killed it."""

    code: int | None
    signal: int | None

    def __str__(self) -> str:
        if self.signal is None:
            return f"exited {self.code}"
        try:
            name = signals.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        return f"killed by {name}"


@attrs.define(eq=False)
class Handler:
    """A running handler: the process the spawner forked, after its exec.

    Attributes:
        pid: its process id (in the activator's PID namespace).
        invocation: the plan's invocation id.
    """

    pid: int
    invocation: str
    _pidfd: int | None
    _done: trio.Event = attrs.field(factory=trio.Event)
    _status: ExitStatus | None = None

    async def wait(self) -> ExitStatus:
        """Wait until the handler and every process of its invocation is gone.

        Raises:
            SpawnerDied: the spawner died; the handler died with it, its status is lost.
        """
        await self._done.wait()
        if self._status is None:
            msg = f"the spawner died: the exit status of handler {self.pid} is lost"
            raise SpawnerDied(msg)
        return self._status

    async def kill(self, signal: int = signals.SIGKILL) -> None:
        """Send ``signal`` to the handler (through its pidfd); nothing once it is gone.

        The handler is PID 1 of its namespace: a signal it does not handle is ignored, except
        SIGKILL and SIGSTOP.
        """
        await trio.lowlevel.checkpoint()
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signals.pidfd_send_signal(self._pidfd, signal)

    def _finish(self, status: ExitStatus | None) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._status = status
        self._done.set()

    async def _watch_orphan(self) -> None:
        """The spawner died: wait on the pidfd until the handler is gone, then wake waiters
        (also when the watch is cancelled: no waiter may hang on a dead spawner)."""
        try:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
        finally:
            self._finish(None)


@attrs.define(eq=False)
class _Request:
    """A request in flight: a spawn (with its plan) or a one-shot child (``status`` at exit)."""

    unit: str
    invocation: str
    plan: SpawnPlan | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    handler: Handler | None = None
    status: ExitStatus | None = None
    error: Exception | None = None
    abandoned: bool = False


@attrs.define(eq=False)
class _Process:
    """The spawner process as the trio side sees it: its end of the socket, how to reap it."""

    pid: int
    sock: trio.socket.SocketType
    _wait: Callable[[], Awaitable[int]]
    _status: int | None = None

    async def reap(self) -> int:
        """Wait for the process to exit and reap it (once: later calls return its status)."""
        if self._status is None:
            self._status = await self._wait()
        return self._status


class Spawner:
    """The activator's handle on its spawner process. Build it with :meth:`launch`."""

    def __init__(self, process: _Process, *, python: str) -> None:
        self._python = python
        self._process = process
        self._state = "up"  # up, restarting, down, closed
        self._settled = trio.Event()
        self._settled.set()
        self._send_lock = trio.Lock()
        self._next_id = 1
        self._pending: dict[int, _Request] = {}
        self._running: dict[int, Handler] = {}
        self._orphans: trio.MemorySendChannel[Handler]
        self._orphans_out: trio.MemoryReceiveChannel[Handler]
        self._orphans, self._orphans_out = trio.open_memory_channel[Handler](math.inf)
        #: How many times the spawner was started again after it died.
        self.restarts = 0

    @property
    def pid(self) -> int:
        """The process id of the current spawner."""
        return self._process.pid

    @classmethod
    def launch(cls, *, python: str = sys.executable) -> Spawner:
        """Start the spawner process and wait until it is ready; call it before trio runs.

        Raises:
            SpawnerDied: the spawner could not start (its message says why).
            OSError: ``python`` could not be run.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            popen = subprocess.Popen(_command(python, theirs), **_process_options(theirs))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        poller = select.poll()
        poller.register(ours.fileno(), select.POLLIN)
        data = ours.recv(_REPLY_SIZE) if poller.poll(READY_TIMEOUT * 1000) else b""
        try:
            _check_ready(data)
        except SpawnerDied:
            ours.close()
            popen.kill()
            popen.wait()
            raise

        async def reap() -> int:
            fd = os.pidfd_open(popen.pid)
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
            return popen.wait()

        process = _Process(popen.pid, trio.socket.from_stdlib_socket(ours), reap)
        return cls(process, python=python)

    async def spawn(self, plan: SpawnPlan, fds: Sequence[int] = ()) -> Handler:
        """Start one handler; return once it has exec'd.

        Args:
            plan: the plan; ``plan.fd_map`` indexes ``fds``.
            fds: descriptors to pass (at most 253); they stay open here, the caller closes them.

        Raises:
            SpawnFailed: a stage of the plan failed; the child is gone.
            SpawnerDied: the spawner died meanwhile, or is down.
        """
        if len(fds) > _protocol.MAX_FDS:
            msg = f"at most {_protocol.MAX_FDS} descriptors per spawn (got {len(fds)})"
            raise ValueError(msg)
        if self._state == "restarting":
            await self._settled.wait()
        if self._state != "up":
            msg = f"the spawner is {self._state}: cannot start {plan.unit}"
            raise SpawnerDied(msg)
        request_id = self._next_id
        self._next_id += 1
        data = _protocol.encode({"op": "spawn", "id": request_id, "plan": plan_to_wire(plan)})
        if len(data) > _protocol.MAX_MESSAGE:
            msg = f"the plan of {plan.unit} is too large ({len(data)} bytes)"
            raise ValueError(msg)
        request = _Request(plan.unit, plan.invocation, plan)
        await self._request(request_id, request, data, fds, f"cannot start {plan.unit}")
        if isinstance(request.error, SpawnFailed):
            logger.warning(
                "%s: invocation %s did not start: %s", plan.unit, plan.invocation, request.error
            )
        if request.error is not None:
            raise request.error
        assert request.handler is not None
        return request.handler

    async def clear_keyrings(self, uid: int, *, gid: int | None = None) -> None:
        """Clear the user and user-session keyrings of ``uid`` (kernel keys a handler left in
        ``@u`` or ``@us``): the spawner forks a child that becomes ``uid`` (and ``gid``, the
        same number by default), calls ``keyctl(KEYCTL_CLEAR)`` on both and exits.

        Call it only once no process of ``uid`` is left (else it races with new keys), and
        only when the UID has keys: looking the keyrings up makes them when they do not exist.
        The kernel frees the unlinked keys asynchronously (``uidstore.key_usage`` tells when).

        Raises:
            SpawnFailed: the child could not become ``uid`` (stage ``privileges``) or clear a
                keyring (stage ``keyring``: a handler can take its own write permission away,
                ``keyring clear @u of UID 61234: Permission denied``), or it died.
            SpawnerDied: the spawner died meanwhile, or is down.
            ValueError: ``uid`` or ``gid`` is 0 or not a valid ID.
        """
        gid = uid if gid is None else gid
        for what, value in (("uid", uid), ("gid", gid)):
            if not 0 < value < 0xFFFFFFFF:
                msg = f"clear_keyrings: {what} must be in 1..4294967294 (got {value})"
                raise ValueError(msg)
        label = f"keyrings of UID {uid}"
        if self._state == "restarting":
            await self._settled.wait()
        if self._state != "up":
            msg = f"the spawner is {self._state}: cannot clear the {label}"
            raise SpawnerDied(msg)
        request_id = self._next_id
        self._next_id += 1
        data = _protocol.encode({"op": "clear_keyrings", "id": request_id, "uid": uid, "gid": gid})
        request = _Request(label, "")
        await self._request(request_id, request, data, (), f"cannot clear the {label}")
        if request.error is not None:
            raise request.error
        status = request.status
        if status is None or status.code != 0:
            msg = f"keyring clear of UID {uid}: the child {status}"
            raise SpawnFailed(KEYRING_STAGE, errno.EIO, msg, unit=label, invocation="")

    async def _request(
        self, request_id: int, request: _Request, data: bytes, fds: Sequence[int], what: str
    ) -> None:
        """Send one request and wait for its outcome (in ``request``); a cancelled wait has
        the spawner kill the child it may have started."""
        self._pending[request_id] = request
        process = self._process
        try:
            async with self._send_lock:
                await process.sock.sendmsg([data], _protocol.rights(list(fds)))
            await request.done.wait()
        except (OSError, trio.ClosedResourceError) as error:
            # The spawner died (EPIPE, ECONNRESET) or was stopped while this request was sent.
            self._pending.pop(request_id, None)
            msg = f"the spawner is gone: {what}: {error}"
            raise SpawnerDied(msg) from error
        except BaseException:
            if not request.done.is_set():
                request.abandoned = True
                await self._abandon(process, request_id)
            raise

    async def _abandon(self, process: _Process, request_id: int) -> None:
        """A cancelled spawn: have the spawner kill whatever it started for it."""
        data = _protocol.encode({"op": "kill", "id": request_id, "signal": signals.SIGKILL})
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                async with self._send_lock:
                    await process.sock.sendmsg([data])
            except (OSError, trio.ClosedResourceError):
                pass  # the spawner is gone, and its children with it

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the spawner's replies; start a new spawner whenever it dies. Returns on aclose.

        Run it in a nursery before the first :meth:`spawn`: replies, handler exits and restarts
        all happen here.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_orphans)
            task_status.started()
            while self._state != "closed":
                await self._read(self._process)
                if self._state == "closed":
                    break
                await self._restart()
            nursery.cancel_scope.cancel()

    async def _watch_orphans(self) -> None:
        async with trio.open_nursery() as nursery:
            async for handler in self._orphans_out:
                nursery.start_soon(handler._watch_orphan)

    async def _read(self, process: _Process) -> None:
        """Dispatch replies until the spawner closes its end (it died) or we close ours."""
        while True:
            try:
                data, ancdata, _, _ = await process.sock.recvmsg(
                    _REPLY_SIZE, _protocol.ancillary_space(1), socket.MSG_CMSG_CLOEXEC
                )
            except (trio.ClosedResourceError, ConnectionResetError):
                return
            fds = _protocol.fds_of(ancdata)
            if not data:
                _protocol.close_all(fds)
                return
            try:
                self._dispatch(_protocol.decode(data), fds)
            except (ValueError, KeyError, TypeError) as error:
                _protocol.close_all(fds)
                logger.error("spawner (pid %d) sent a bad reply %r: %s", process.pid, data, error)

    def _dispatch(self, reply: dict[str, object], fds: list[int]) -> None:
        event, request_id = reply["event"], reply.get("id")
        if event == "started":
            request = self._pending.pop(_int(request_id), None)
            pidfd = fds.pop(0) if fds else None
            _protocol.close_all(fds)
            if request is None or request.abandoned:
                if pidfd is not None:
                    os.close(pidfd)
                return
            handler = Handler(_int(reply["pid"]), request.invocation, pidfd)
            self._running[_int(request_id)] = handler
            request.handler = handler
            request.done.set()
        elif event == "failed":
            _protocol.close_all(fds)
            request = self._pending.pop(_int(request_id), None)
            if request is not None:
                request.error = SpawnFailed(
                    str(reply["stage"]),
                    _int(reply["errno"]),
                    str(reply["message"]),
                    unit=request.unit,
                    invocation=request.invocation,
                )
                request.done.set()
        elif event == "exited":
            _protocol.close_all(fds)
            code, signal = reply.get("code"), reply.get("signal")
            status = ExitStatus(_optional_int(code), _optional_int(signal))
            running = self._running.pop(_int(request_id), None)
            if running is not None:
                running._finish(status)
            elif (request := self._pending.pop(_int(request_id), None)) is not None:
                request.status = status  # a one-shot child (clear_keyrings)
                request.done.set()
        else:
            _protocol.close_all(fds)
            logger.error("spawner (pid %d) sent an unexpected %r", self._process.pid, reply)

    async def _restart(self) -> None:
        """The spawner died: fail what was in flight, orphan the handlers, start a new one."""
        old = self._process
        if self._state == "closed":
            return
        self._state = "restarting"
        self._settled = trio.Event()
        with trio.CancelScope(shield=True):
            status = await old.reap()
        old.sock.close()
        logger.error(
            "spawner (pid %d) died (%s): %d spawns failed, %d handlers killed; starting a new one",
            old.pid,
            _describe(status),
            len(self._pending),
            len(self._running),
        )
        for request in self._pending.values():
            request.error = SpawnerDied(
                f"the spawner died: {request.unit} may not have started"
                if request.plan is not None
                else f"the spawner died: the {request.unit} may not be cleared"
            )
            request.done.set()
        self._pending.clear()
        for handler in self._running.values():
            if self._state == "closed":
                handler._finish(None)  # aclose() ran meanwhile and reaped the spawner
            else:
                self._orphans.send_nowait(handler)
        self._running.clear()
        delay = 0.1
        while self._state != "closed":
            try:
                process = await _start(self._python)
            except (OSError, SpawnerDied) as error:
                logger.error("cannot start the spawner: %s; trying again in %.1f s", error, delay)
                self._state = "down"
                self._settled.set()
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if self._state != "closed":
                    self._state = "restarting"
                    self._settled = trio.Event()
                continue
            if self._state == "closed":  # aclose() ran meanwhile: this one is not wanted
                process.sock.close()
                with trio.CancelScope(shield=True):
                    await process.reap()
                return
            self._process = process
            self.restarts += 1
            logger.warning("spawner restarted (pid %d)", process.pid)
            self._state = "up"
            self._settled.set()
            return

    async def aclose(self) -> None:
        """Stop the spawner: kill every running handler, wait (a bounded time) for their exits
        to be reported (with :meth:`serve` running, each :meth:`Handler.wait` then returns its
        status), then close the control socket, which makes the spawner kill whatever is left
        and exit, and reap it."""
        if self._state == "closed":
            return
        with trio.CancelScope(shield=True):
            running = list(self._running.values())
            for handler in running:
                await handler.kill(signals.SIGKILL)
            with trio.move_on_after(CLOSE_TIMEOUT):
                for handler in running:
                    await handler._done.wait()
            self._state = "closed"
            self._settled.set()
            self._process.sock.close()
            # On end of file the spawner kills and reaps every child it has left, then exits:
            # once it is reaped, nothing it started runs any more.
            with trio.move_on_after(CLOSE_TIMEOUT) as timeout:
                await self._process.reap()
            if timeout.cancelled_caught:
                logger.error("spawner (pid %d) did not exit after its socket was closed", self.pid)
            for request in self._pending.values():
                request.error = SpawnerDied("the spawner was stopped")
                request.done.set()
            self._pending.clear()
            for handler in self._running.values():
                handler._finish(None)
            self._running.clear()
            self._orphans.close()


def _command(python: str, theirs: socket.socket) -> list[str]:
    """The spawner's command line: the script, and the number of its end of the socketpair."""
    return [python, SCRIPT, str(theirs.fileno())]


def _process_options(theirs: socket.socket) -> dict[str, Any]:
    """How the spawner is started, the first time (Popen) as after a crash (trio): with its
    end of the socketpair, no stdin or stdout, and a session of its own (no terminal signal
    meant for the activator reaches it)."""
    return {
        "pass_fds": [theirs.fileno()],
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "start_new_session": True,
    }


async def _start(python: str) -> _Process:
    """Start a spawner from trio (after a crash) and wait until it is ready."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = await trio.lowlevel.open_process(
            _command(python, theirs), **_process_options(theirs)
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    sock = trio.socket.from_stdlib_socket(ours)
    data = b""
    with trio.move_on_after(READY_TIMEOUT):
        data = await sock.recv(_REPLY_SIZE)
    try:
        _check_ready(data)
    except SpawnerDied:
        sock.close()
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        raise
    return _Process(process.pid, sock, process.wait)


def _check_ready(data: bytes) -> None:
    if not data:
        msg = "the spawner exited (or did not answer) before it was ready"
        raise SpawnerDied(msg)
    reply = _protocol.decode(data)
    if reply.get("event") != "ready":
        msg = f"the spawner could not start: {reply.get('message', reply)}"
        raise SpawnerDied(msg)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"expected an integer (got {value!r})"
        raise TypeError(msg)
    return value


def _optional_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _describe(status: int) -> str:
    if status < 0:
        return str(ExitStatus(None, -status))
    return str(ExitStatus(status, None))
