"""The HTTP side door: ``GET /metrics`` and ``GET /healthz``, served by a trio task.

Rule 1: a client costs a bounded amount: a request head of at most ``head_size`` bytes, sent
within ``head_timeout`` seconds (Prometheus sends its head at once), then at most ``timeout``
seconds for the response; at most ``max_connections`` at once, and ``per_peer`` from one address.

Rule 2: idle clients cannot lock the endpoint out. When a connection would pass a cap, the
oldest connection still reading its head (of that peer, or of all) is closed to make room; only
when every connection counted is past its head (being answered) is the newcomer closed
unanswered. So a client that connects and sends nothing holds a slot for ``head_timeout`` at
most, and only until someone needs it. One request per connection (``Connection: close``):
Prometheus opens a connection per scrape anyway.

Rule 3: it runs on activator's own loop (no thread before daemonizing: DESIGN.md, "Side doors");
the registry is rendered in a worker thread (:meth:`Metrics.render`: milliseconds at realistic
sizes), so a scrape never holds the loop that accepts connections.

Rule 4: each connection is its own error boundary: nothing a client sends stops the server.

Theory of operation: :func:`parse_request` (pure) reads the request head into a
:class:`Request` or an :class:`HttpError`; :func:`respond` turns it into the bytes to send,
rendering the registry in the format the ``Accept`` header asks for (OpenMetrics or the text
format 0.0.4).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
from typing import Final, NoReturn

import attrs
import trio

from activator import logs
from activator.invocation import Runtime
from activator.manager import Manager
from activator.settings import HostPort

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
        head_timeout: seconds from the accept to the end of the request head.
        timeout: seconds for the response, from the end of the request head to the last byte
            sent.
        max_connections: connections served at once (Rule 2).
        per_peer: connections served at once from one IP address (Rule 2).
    """

    head_size: int = 8192
    head_timeout: float = 2.0
    timeout: float = 10.0
    max_connections: int = 32
    per_peer: int = 4


@attrs.define(eq=False)
class _Client:
    """A connection being served: its peer's address, and whether it still reads its head."""

    peer: str
    scope: trio.CancelScope
    reading: bool = True
    evicted: bool = False

    def evict(self) -> None:
        self.evicted = True
        self.scope.cancel()


def _make_room(clients: list[_Client], peer: str, limits: HttpLimits) -> bool:
    """Evict what must go for one more connection from ``peer`` (Rule 2), oldest first in
    ``clients``; False when there is no room (every connection counted is being answered)."""
    for cap, counted in (
        (limits.per_peer, [c for c in clients if c.peer == peer and not c.evicted]),
        (limits.max_connections, [c for c in clients if not c.evicted]),
    ):
        if len(counted) >= cap:
            victim = next((c for c in counted if c.reading), None)
            if victim is None:
                return False
            victim.evict()
    return True


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

    Error handling: each connection is its own error boundary (Rule 4).

    Raises:
        OSError: the address cannot be bound (before ``started``).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    clients: dict[int, _Client] = {}  # oldest first
    keys = itertools.count()

    async def handle(stream: trio.SocketStream) -> None:
        peer = _peer_host(stream)
        if not _make_room(list(clients.values()), peer, limits):
            await stream.aclose()
            return
        key = next(keys)
        client = clients[key] = _Client(peer, trio.CancelScope())
        client.scope.deadline = trio.current_time() + limits.head_timeout
        try:
            async with stream:
                with client.scope:
                    request = await _read_head(stream, limits)
                    if request is None:
                        return  # closed before a whole request: nothing to answer
                    client.reading = False
                    client.scope.deadline = trio.current_time() + limits.timeout
                    await stream.send_all(await respond(metrics, request))
                    await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            logger.exception("metrics: an HTTP connection failed")
        finally:
            del clients[key]

    task_status.started([_describe(listener.socket.getsockname()) for listener in listeners])
    await trio.serve_listeners(handle, listeners)


async def _read_head(stream: trio.SocketStream, limits: HttpLimits) -> Request | HttpError | None:
    """The request head, parsed (or the error to answer); None when the client closed first."""
    head = bytearray()
    while True:
        end = _head_end(head)
        if end >= 0:
            return parse_request(bytes(head[:end]))
        if len(head) >= limits.head_size:
            return HttpError(431, f"a request head is {limits.head_size} bytes at most")
        data = await stream.receive_some(limits.head_size - len(head) + 4)
        if not data:
            return None
        head += data


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _head_end(data: bytearray) -> int:
    """Where the head ends (before its empty line), or -1 while it has not."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    found = [n for n in (crlf, lf) if n >= 0]
    return min(found) if found else -1


def loaded_units(manager: Manager) -> Iterator[str]:
    """The ``unit`` labels of the service units ``manager`` has loaded or enabled now: every
    service and service template of its catalog, the services of its enabled socket instances,
    and the services it started."""
    catalog = manager.catalog
    if catalog is not None:
        for name in (*catalog.units, *catalog.templates):
            if name.endswith(".service"):
                yield name
    for name in manager.instances:
        yield name.removesuffix(".socket") + ".service"
    yield from manager.services


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
    userdb_path: str | None = None,
    strict: bool = False,
) -> str | None:
    """Count what ``runtime`` and ``manager`` do and serve it on ``listen``, in ``nursery``
    (what ``activator serve`` runs once the runtime and the manager exist, before it binds).

    Args:
        nursery: where the HTTP server runs.
        listen: the ``[metrics] listen`` address.
        runtime: the invocations' runtime (spawner, lease service, hooks).
        manager: the manager (its hooks and live invocations).
        userdb_path: the socket userdb serves on (bound already), None when userdb is disabled:
            ``activator_userdb_up`` is exported then, 1 while that file is still ours.
        strict: ``--strict``: the caller stops when the address cannot be bound, and logs why.

    Returns:
        None when serving; the reason when ``listen`` cannot be bound (then activator serves on
        without metrics, logged as an error unless ``strict``), as ``metrics: cannot listen on
        127.0.0.1:9464: Address already in use``.
    """
    metrics = Metrics(
        runtime.leases,
        spawner_probes(runtime.spawner, userdb_path, pool_up=lambda: runtime.leases.running),
        manager.live,
        units=functools.partial(loaded_units, manager),
    )
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
