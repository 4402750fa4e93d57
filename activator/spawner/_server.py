"""The spawner process: a single-threaded poll loop that forks one child per spawn plan.

Rule 1: the loop never blocks on a child. Everything it waits for is a descriptor in one
``poll``: the control socket, each child's report pipe (close-on-exec: end of file with no
report means the exec happened) and each child's pidfd (readable once the child has exited).

Rule 2: each request gets either one ``failed`` reply or ``started`` then ``exited`` (see
:mod:`._protocol`), and ``failed`` and ``exited`` are sent only after the child is reaped. For a
child in its own PID namespace (the handler is its PID 1), the kernel kills and reaps every
other process of the namespace before the handler itself can be reaped, so ``exited`` means the
whole invocation is gone.

Rule 3: a new PID namespace costs no extra process: before the fork the spawner calls
``unshare(CLONE_NEWPID)``, which puts its *next* child into a new namespace, and right after it
restores its own with ``setns`` on the descriptor of ``/proc/self/ns/pid`` it opened at start
(a second ``unshare(CLONE_NEWPID)`` without the restore fails with EINVAL).

Rule 4: a ``clear_keyrings`` request forks a child too, one that never execs: it becomes the
UID, clears the UID's user keyrings and exits (:func:`._child.clear_keyrings`). It is watched
like a handler (report pipe, pidfd) and ends in one ``failed`` or one ``exited``, with no
``started`` before it.

Rule 5: when the activator closes its end (or dies), the spawner kills every child it still has
(SIGKILL), reaps them and exits; children that outlive it are killed by the kernel anyway
(``PR_SET_PDEATHSIG``, set in the child).
"""

from __future__ import annotations

import contextlib
import errno as errnos
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Final, TypeGuard

from activator.sandbox import SpawnPlan, plan_from_wire

from . import _child, _linux, _protocol

_READ: Final = select.POLLIN | select.POLLHUP | select.POLLERR
#: The highest UID or GID (-1, 4294967295, means "unchanged" to setresuid).
_MAX_ID: Final = 0xFFFFFFFE


def _is_id(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a UID or GID other than root's."""
    return type(value) is int and 0 < value <= _MAX_ID


class _Child:
    """One forked child the spawner has not reaped yet."""

    __slots__ = ("execs", "id", "pid", "pidfd", "report", "started", "text")

    def __init__(self, request_id: int, pid: int, pidfd: int, report: int, execs: bool) -> None:
        self.id = request_id
        self.pid = pid
        self.pidfd = pidfd
        self.report: int | None = report
        #: A handler (``started`` once it exec'd), not a one-shot child such as a keyring clear.
        self.execs = execs
        self.started = False
        self.text = bytearray()


class Server:
    """The spawner's state: its control socket, its children, the descriptors it polls."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.poller = select.poll()
        self.by_fd: dict[int, _Child] = {}
        self.by_id: dict[int, _Child] = {}
        with open("/proc/sys/kernel/cap_last_cap") as file:
            self.last_cap = int(file.read())
        self.pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        # The children poll it to tell whether the spawner died before they set PDEATHSIG.
        self.watch = select.poll()
        self.watch.register(os.pidfd_open(os.getpid()), select.POLLIN)

    def send(self, message: dict[str, object], fds: Sequence[int] = ()) -> None:
        """One reply; a gone activator ends the loop (:class:`BrokenPipeError` propagates)."""
        self.control.sendmsg([_protocol.encode(message)], _protocol.rights(list(fds)))

    def serve(self) -> None:
        """Poll until the activator closes the control socket."""
        control = self.control.fileno()
        self.poller.register(control, _READ)
        while True:
            try:
                events = self.poller.poll()
            except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for clarity)
                continue
            for fd, _ in events:
                if fd == control:
                    if not self.read_control():
                        return
                    continue
                child = self.by_fd.get(fd)
                if child is None:
                    continue
                if fd == child.report:
                    self.read_report(child)
                elif fd == child.pidfd:
                    self.reap(child)

    def read_control(self) -> bool:
        """Handle every request waiting; False when the activator has gone."""
        while True:
            try:
                data, ancdata, flags, _ = self.control.recvmsg(
                    _protocol.MAX_MESSAGE,
                    _protocol.ancillary_space(_protocol.MAX_FDS),
                    socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
                )
            except BlockingIOError:
                return True
            except ConnectionResetError:
                return False
            fds = _protocol.fds_of(ancdata)
            if not data:
                _protocol.close_all(fds)
                return False
            try:
                self.handle(data, fds, flags)
            finally:
                _protocol.close_all(fds)

    def handle(self, data: bytes, fds: list[int], flags: int) -> None:
        """One request; ``fds`` are closed by the caller (the child keeps its own copies)."""
        try:
            request = _protocol.decode(data)
        except ValueError as error:
            print(f"activator-spawner: bad request: {error}", file=sys.stderr)
            return
        request_id = request.get("id")
        if not isinstance(request_id, int):
            print(f"activator-spawner: request without an id: {request!r:.200}", file=sys.stderr)
            return
        op = request.get("op")
        if op == "kill":
            self.kill(request_id, request.get("signal"))
            return
        if op == "clear_keyrings":
            self.clear_keyrings(request_id, request.get("uid"), request.get("gid"))
            return
        if op != "spawn":
            self.refuse(request_id, errnos.EINVAL, f"request: unknown op {op!r}")
            return
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            self.refuse(request_id, errnos.EMSGSIZE, "request: message or descriptors truncated")
            return
        plan_wire = request.get("plan")
        try:
            if not isinstance(plan_wire, dict):
                msg = "the plan must be an object"
                raise ValueError(msg)
            plan = plan_from_wire(plan_wire)
        except ValueError as error:
            self.refuse(request_id, errnos.EINVAL, f"request: bad plan: {error}")
            return
        self.spawn(request_id, plan, fds)

    def refuse(self, request_id: int, error: int, message: str) -> None:
        """A ``failed`` reply for a request that made no child."""
        stage = message.split(" ", 1)[0].rstrip(":")
        self.send(
            {
                "id": request_id,
                "event": "failed",
                "stage": stage,
                "errno": error,
                "message": message,
            }
        )

    def refuse_error(self, request_id: int, what: str, error: OSError) -> None:
        """A ``failed`` reply for a request whose ``what`` failed with ``error``."""
        code = error.errno or errnos.EIO
        self.refuse(request_id, code, f"{what}: {os.strerror(code)}")

    def kill(self, request_id: int, number: object) -> None:
        child = self.by_id.get(request_id)
        if child is None or not isinstance(number, int):
            return
        with contextlib.suppress(ValueError, OSError):
            signal.pidfd_send_signal(child.pidfd, number)

    def clear_keyrings(self, request_id: int, uid: object, gid: object) -> None:
        """Fork a child that clears the user keyrings of ``uid`` (never root's) and exits."""
        if not (_is_id(uid) and _is_id(gid)):
            self.refuse(
                request_id,
                errnos.EINVAL,
                f"request: clear_keyrings needs a uid and a gid of 1..{_MAX_ID} "
                f"(got {uid!r}, {gid!r})",
            )
            return
        self.start(request_id, self._clear_keyrings_fork(request_id, uid, gid), execs=False)

    def _clear_keyrings_fork(
        self, request_id: int, uid: int, gid: int
    ) -> Callable[[int], int | None]:
        def fork(report_w: int) -> int | None:
            try:
                pid = os.fork()
                if pid == 0:
                    _child.clear_keyrings(
                        uid,
                        gid,
                        report_fd=report_w,
                        spawner_watch=self.watch,
                        control_fd=self.control.fileno(),
                    )
            except OSError as error:
                self.refuse_error(request_id, "fork", error)
                return None
            return pid

        return fork

    def spawn(self, request_id: int, plan: SpawnPlan, fds: list[int]) -> None:
        """Fork the child for ``plan`` and watch its report pipe and its exit."""
        self.start(request_id, lambda report_w: self.fork(request_id, plan, fds, report_w))

    def start(
        self, request_id: int, fork: Callable[[int], int | None], *, execs: bool = True
    ) -> None:
        """Run ``fork`` (given the report pipe's write end; the child's pid, or None after a
        ``failed`` reply) and watch the child's report pipe and its exit."""
        try:
            report, report_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as error:
            self.refuse_error(request_id, "fork", error)
            return
        try:
            pid = fork(report_w)
        finally:
            os.close(report_w)
        if pid is None:
            os.close(report)
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as error:
            # Unwatchable: kill it now (it is at most in its first stages) rather than lose it.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(report)
            self.refuse_error(request_id, "fork", error)
            return
        child = _Child(request_id, pid, pidfd, report, execs)
        self.by_id[request_id] = child
        self.by_fd[report] = child
        self.by_fd[pidfd] = child
        self.poller.register(report, _READ)
        self.poller.register(pidfd, select.POLLIN)

    def fork(self, request_id: int, plan: SpawnPlan, fds: list[int], report_w: int) -> int | None:
        """The child's pid, or None after a ``failed`` reply."""
        if plan.new_pid:
            try:
                _linux.unshare(_linux.CLONE_NEWPID)
            except OSError as error:
                self.refuse_error(request_id, "namespaces pid", error)
                return None
        try:
            pid = os.fork()
            if pid == 0:
                _child.run(
                    plan,
                    fds,
                    report_fd=report_w,
                    spawner_watch=self.watch,
                    control_fd=self.control.fileno(),
                    last_cap=self.last_cap,
                )
        except OSError as error:
            self.refuse_error(request_id, "fork", error)
            return None
        finally:
            if plan.new_pid:
                # Only the parent gets here: the child never returns from run().
                _linux.setns(self.pid_ns, _linux.CLONE_NEWPID)
        return pid

    def read_report(self, child: _Child) -> None:
        """Read what the child wrote; end of file with nothing written means it exec'd."""
        assert child.report is not None
        while True:
            try:
                data = os.read(child.report, 4096)
            except BlockingIOError:
                return
            if not data:
                break
            child.text += data
        self.poller.unregister(child.report)
        del self.by_fd[child.report]
        os.close(child.report)
        child.report = None
        if not child.text and child.execs:
            child.started = True
            self.send({"id": child.id, "event": "started", "pid": child.pid}, [child.pidfd])

    def reap(self, child: _Child) -> None:
        """The child has exited: report it (after any report it wrote) and forget it."""
        pid, status = os.waitpid(child.pid, os.WNOHANG)
        if pid == 0:
            return
        if child.report is not None:
            # Dead, so the write end is closed: this reads to the end without blocking.
            self.read_report(child)
        self.poller.unregister(child.pidfd)
        del self.by_fd[child.pidfd]
        del self.by_id[child.id]
        os.close(child.pidfd)
        if child.text:
            self.send(_failure(child, status))
            return
        message: dict[str, object] = {"id": child.id, "event": "exited", "pid": child.pid}
        if os.WIFSIGNALED(status):
            message["signal"] = os.WTERMSIG(status)
        else:
            message["code"] = os.waitstatus_to_exitcode(status)
        self.send(message)

    def shutdown(self) -> None:
        """Kill and reap every child left (the activator is gone)."""
        for child in list(self.by_id.values()):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
        for child in list(self.by_id.values()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)


def _failure(child: _Child, status: int) -> dict[str, object]:
    """The ``failed`` reply from what the child wrote before it exited."""
    try:
        report = json.loads(child.text)
        stage, error, message = report["stage"], report["errno"], report["message"]
        if not (isinstance(stage, str) and isinstance(error, int) and isinstance(message, str)):
            raise TypeError(report)
    except (ValueError, KeyError, TypeError):
        stage, error = "internal", errnos.EIO
        message = f"internal: unreadable report {bytes(child.text)[:200]!r} (status {status})"
    return {"id": child.id, "event": "failed", "stage": stage, "errno": error, "message": message}


def _raise_nofile() -> None:
    """The soft RLIMIT_NOFILE up to the hard one: the spawner holds a pidfd per live handler
    (4336 with a full default pool), beyond the usual soft 1024. Each handler gets its own
    ``LimitNOFILE=`` from its plan."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str]) -> int:
    """The spawner process: ``argv`` is the number of its end of the control socketpair."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m activator.spawner CONTROL_FD", file=sys.stderr)
        return 2
    _raise_nofile()
    control = socket.socket(fileno=int(argv[0]))
    control.set_inheritable(False)
    control.setblocking(True)
    try:
        server = Server(control)
    except OSError as error:
        text = f"spawner start: {error.filename or ''}: {error.strerror}"
        control.sendmsg([_protocol.encode({"event": "fatal", "message": text})])
        return 1
    # Nothing the spawner allocated from here on is cyclic garbage worth a collection; frozen,
    # the start-up objects are never scanned (nor touched, so forked children share their pages).
    gc.freeze()
    try:
        server.send({"event": "ready", "pid": os.getpid()})
        server.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        server.shutdown()
    return 0
