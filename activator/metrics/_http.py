"""The HTTP side door: ``GET /metrics`` and ``GET /healthz``, served by a trio task.

Rule 1: a client costs a bounded amount: a request head of at most ``head_size`` bytes, at most
``timeout`` seconds for the whole exchange, at most ``max_connections`` at once (one more is
closed at once, unanswered). One request per connection (``Connection: close``): Prometheus
opens a connection per scrape anyway.

Rule 2: it runs on activator's own loop (no thread before daemonizing: DESIGN.md, "Side doors");
the registry is rendered in a worker thread (:meth:`Metrics.render`: milliseconds at realistic
sizes), so a scrape never holds the loop that accepts connections.

Rule 3: each connection is its own error boundary: nothing a client sends stops the server.

Theory of operation: :func:`parse_request` (pure) reads the request head into a
:class:`Request` or an :class:`HttpError`; :func:`respond` turns it into the bytes to send,
rendering the registry in the format the ``Accept`` header asks for (OpenMetrics or the text
format 0.0.4).
"""

from __future__ import annotations

import logging
import os
from typing import Final, NoReturn

import attrs
import trio

from activator import logs
from activator.invocation import Runtime
from activator.manager import Manager
from activator.settings import HostPort
from activator.userdb import SOCKET_PATH

from ._collect import Metrics, spawner_probes

logger = logging.getLogger(__name__)

#: The reason phrases of the statuses we send.
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_TEXT: Final = "text/plain; charset=utf-8"


@attrs.frozen
class HttpLimits:
    """What one client may cost.

    Attributes:
        head_size: the most bytes of a request head (request line and headers).
        timeout: seconds for a whole exchange, from accept to the last byte sent.
        max_connections: connections served at once; one more is closed unanswered.
    """

    head_size: int = 8192
    timeout: float = 10.0
    max_connections: int = 32


@attrs.frozen
class Request:
    """A request head, parsed: its method, path (without the query) and ``Accept`` header."""

    method: str
    path: str
    accept: str = ""


@attrs.frozen
class HttpError:
    """A request that gets an error status instead: ``status`` and a one-line ``reason``."""

    status: int
    reason: str


def parse_request(head: bytes) -> Request | HttpError:
    """Parse an HTTP/1.x request head (up to, not including, the empty line)."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return HttpError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if not version.startswith(b"HTTP/1."):
        return HttpError(505, f"HTTP/1.0 or HTTP/1.1 only (got {version[:20]!r})")
    accept = ""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return HttpError(400, f"malformed header line {line[:80]!r}")
        if name.strip().lower() == b"accept":
            accept = value.strip().decode("latin-1")
    path = target.partition(b"?")[0].decode("latin-1")
    return Request(method.decode("latin-1"), path, accept)


async def respond(metrics: Metrics, request: Request | HttpError) -> bytes:
    """The whole response to ``request``: ``/metrics``, ``/healthz``, or an error."""
    if isinstance(request, HttpError):
        return _response(request.status, f"{request.reason}\n".encode())
    if request.method != "GET":
        return _response(405, b"GET only\n", extra=(("Allow", "GET"),))
    if request.path == "/metrics":
        body, content_type = await metrics.render(request.accept)
        return _response(200, body, content_type)
    if request.path == "/healthz":
        problem = metrics.health()
        if problem is not None:
            return _response(503, f"{problem}\n".encode())
        return _response(200, b"ok\n")
    return _response(404, b"/metrics and /healthz only\n")


def _response(
    status: int, body: bytes, content_type: str = _TEXT, extra: tuple[tuple[str, str], ...] = ()
) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    limits: HttpLimits = HttpLimits(),  # frozen: one shared default is safe
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``/metrics`` and ``/healthz`` on ``host``:``port`` until cancelled.

    Resource handling: binds (every address ``host`` resolves to), then reports the bound
    addresses (``127.0.0.1:9464``, ``[::1]:9464``) through ``task_status.started()``; the
    listeners close when cancelled.

    Error handling: each connection is its own error boundary (Rule 3).

    Raises:
        OSError: the address cannot be bound (before ``started``).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    active = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal active
        if active >= limits.max_connections:
            await stream.aclose()
            return
        active += 1
        try:
            async with stream:
                with trio.move_on_after(limits.timeout):
                    await _exchange(stream, metrics, limits)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            logger.exception("metrics: an HTTP connection failed")
        finally:
            active -= 1

    task_status.started([_describe(listener.socket.getsockname()) for listener in listeners])
    await trio.serve_listeners(handle, listeners)


async def _exchange(stream: trio.SocketStream, metrics: Metrics, limits: HttpLimits) -> None:
    head = bytearray()
    while True:
        end = _head_end(head)
        if end >= 0:
            request: Request | HttpError = parse_request(bytes(head[:end]))
            break
        if len(head) >= limits.head_size:
            request = HttpError(431, f"a request head is {limits.head_size} bytes at most")
            break
        data = await stream.receive_some(limits.head_size - len(head) + 4)
        if not data:
            return  # closed before a whole request: nothing to answer
        head += data
    await stream.send_all(await respond(metrics, request))
    await stream.send_eof()


def _head_end(data: bytearray) -> int:
    """Where the head ends (before its empty line), or -1 while it has not."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    found = [n for n in (crlf, lf) if n >= 0]
    return min(found) if found else -1


def _describe(sockname: tuple[object, ...] | str) -> str:
    if isinstance(sockname, str):
        return sockname
    host, port = str(sockname[0]), sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_metrics(
    nursery: trio.Nursery,
    listen: HostPort,
    runtime: Runtime,
    manager: Manager,
    *,
    userdb: bool,
    strict: bool = False,
) -> str | None:
    """Count what ``runtime`` and ``manager`` do and serve it on ``listen``, in ``nursery``
    (what ``activator serve`` runs once the runtime and the manager exist, before it binds).

    Args:
        nursery: where the HTTP server runs.
        listen: the ``[metrics] listen`` address.
        runtime: the invocations' runtime (spawner, lease service, hooks).
        manager: the manager (its hooks and live invocations).
        userdb: whether userdb is enabled (``activator_userdb_up`` is exported then).
        strict: ``--strict``: the caller stops when the address cannot be bound, and logs why.

    Returns:
        None when serving; the reason when ``listen`` cannot be bound (then activator serves on
        without metrics, logged as an error unless ``strict``), as ``metrics: cannot listen on
        127.0.0.1:9464: Address already in use``.
    """
    paths = (SOCKET_PATH, f"{SOCKET_PATH}.run-{os.getpid()}") if userdb else None
    metrics = Metrics(runtime.leases, spawner_probes(runtime.spawner, paths), manager.live)
    metrics.attach(runtime, manager.hooks)
    try:
        bound = await nursery.start(serve_metrics, metrics, listen.host, listen.port)
    except OSError as error:
        problem = f"metrics: cannot listen on {listen}: {error.strerror or error}"
        if not strict:
            logs.event(
                logger, logging.ERROR, "metrics_failed", f"{problem}; serving without metrics",
                address=str(listen), error=error.strerror or str(error),
            )  # fmt: skip
        return problem
    for address in bound:
        logs.event(
            logger, logging.INFO, "metrics", f"metrics: serving http://{address}/metrics",
            address=address,
        )  # fmt: skip
    return None
