"""The metrics endpoint over real loopback TCP: ``/metrics`` in both formats, ``/healthz``,
errors, and what one client may cost (head size, time, connections, from one address or all);
``/healthz`` with a real spawner that stops.

The server is :func:`activator.metrics.serve_metrics` on 127.0.0.1, port 0, in the test's
nursery; clients are trio TCP streams of the test's own.
"""

from __future__ import annotations

import contextlib
import socket

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from activator.leases import LeaseService
from activator.metrics import HttpLimits, Metrics, Probes, serve_metrics, spawner_probes
from activator.spawner import Spawner

LIMITS = HttpLimits(head_size=1024, head_timeout=2.0, timeout=10.0, max_connections=4, per_peer=3)


def new_metrics(probes: Probes | None = None) -> Metrics:
    probes = probes or Probes(lambda: True, lambda: 0)
    return Metrics(LeaseService(64000, 64015), probes)


async def start(nursery: trio.Nursery, metrics: Metrics, limits: HttpLimits = LIMITS) -> int:
    """Serve ``metrics`` on 127.0.0.1 (a free port): the port."""
    bound = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0, limits)
    (address,) = bound
    host, _, port = address.rpartition(":")
    assert host == "127.0.0.1"
    return int(port)


@pytest.fixture
async def port(nursery: trio.Nursery) -> int:
    return await start(nursery, new_metrics())


async def request(port: int, data: bytes) -> bytes:
    """Send ``data`` and read the whole answer, until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_all(stream)


async def read_all(stream: trio.SocketStream) -> bytes:
    answer = b""
    with trio.fail_after(15):
        while chunk := await stream.receive_some():
            answer += chunk
    return answer


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lowercase names, body) of an HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers["content-length"] == str(len(body)), answer
    assert headers["connection"] == "close"
    return int(status_line.split(" ")[1]), headers, body


async def get(port: int, path: str, *headers: str, version: str = "1.1") -> tuple[int, str, str]:
    """GET ``path``: (status, content type, body)."""
    head = "".join(f"{h}\r\n" for h in (f"GET {path} HTTP/{version}", "Host: x", *headers))
    status, got, body = split(await request(port, f"{head}\r\n".encode()))
    return status, got["content-type"], body.decode()


# --- what is served -----------------------------------------------------------------------------


async def test_metrics_are_served_in_the_text_format(port: int) -> None:
    status, content_type, body = await get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {"activator_uid_pool_size", "activator_build_info", "process_open_fds"} <= names


async def test_metrics_are_served_as_openmetrics_when_asked(port: int) -> None:
    accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, content_type, body = await get(port, "/metrics?x", accept)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    assert "activator_uid_pool_size 16.0" in body


async def test_http_1_0_is_answered_too(port: int) -> None:
    assert (await get(port, "/healthz", version="1.0"))[::2] == (200, "ok\n")


async def test_healthz_is_ok_while_the_spawner_runs(port: int) -> None:
    assert await get(port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /metrics HTTP/2\r\n\r\n", 505),
        (b"nonsense\r\n\r\n", 400),
    ],
)
async def test_anything_else_gets_an_error_status(port: int, data: bytes, status: int) -> None:
    assert split(await request(port, data))[0] == status


# --- what a client may cost ---------------------------------------------------------------------


async def test_a_request_head_past_the_limit_gets_431(port: int) -> None:
    data = b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * LIMITS.head_size + b"\r\n\r\n"
    assert split(await request(port, data))[0] == 431


async def test_a_client_that_never_finishes_its_request_head_is_closed_after_the_head_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await start(nursery, new_metrics())
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        started = trio.current_time()
        assert await read_all(stream) == b""  # closed, unanswered
        assert trio.current_time() - started == pytest.approx(LIMITS.head_timeout, abs=0.5)


async def connect(port: int, source: str) -> trio.SocketStream:
    """A connection from the loopback address ``source``, once the server has counted it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    await trio.testing.wait_all_tasks_blocked()
    return stream


async def closed_unanswered(stream: trio.SocketStream) -> bool:
    """Whether the server closed ``stream`` without a word, well before any timeout."""
    with trio.move_on_after(1.0):
        return await stream.receive_some() == b""
    return False


async def answered(stream: trio.SocketStream) -> tuple[int, bytes]:
    await stream.send_all(b"GET /healthz HTTP/1.1\r\n\r\n")
    return split(await read_all(stream))[::2]


async def test_silent_connections_cannot_lock_out_a_scrape(nursery: trio.Nursery) -> None:
    """Past a cap, the oldest connection still silent is closed to make room: one address
    (per_peer) first, then all of them (max_connections)."""
    limits = attrs.evolve(LIMITS, head_timeout=60.0)  # no timeout during the test
    port = await start(nursery, new_metrics(), limits)
    async with contextlib.AsyncExitStack() as stack:
        held = [
            await stack.enter_async_context(await connect(port, "127.0.0.2"))
            for _ in range(limits.per_peer)
        ]
        # One more from the same address: its oldest silent connection goes.
        newest = await stack.enter_async_context(await connect(port, "127.0.0.2"))
        assert await closed_unanswered(held[0])
        held = [*held[1:], newest]
        other = await stack.enter_async_context(await connect(port, "127.0.0.3"))
        # Every slot is taken (4): a scrape from a third address still gets in, and the oldest
        # silent connection of all is closed for it.
        assert await get(port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert await closed_unanswered(held[0])
        # The others were left alone and are answered when they ask.
        for stream in (*held[1:], other):
            assert await answered(stream) == (200, b"ok\n")
    # Their slots are free again.
    assert (await get(port, "/healthz"))[0] == 200


async def test_an_address_in_use_fails_before_serving(nursery: trio.Nursery) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            await nursery.start(serve_metrics, new_metrics(), "127.0.0.1", taken.getsockname()[1])


# --- health with a real spawner -----------------------------------------------------------------


@pytest.mark.root
async def test_healthz_is_503_once_the_spawner_is_gone(nursery: trio.Nursery) -> None:
    spawner = Spawner.launch()
    try:
        await nursery.start(spawner.serve)
        metrics = new_metrics(spawner_probes(spawner))
        port = await start(nursery, metrics)
        assert (await get(port, "/healthz"))[::2] == (200, "ok\n")
    finally:
        await spawner.aclose()
    status, _, body = await get(port, "/healthz")
    assert (status, body) == (503, "spawner: not running\n")
    _, _, scraped = await get(port, "/metrics")
    assert "activator_spawner_up 0.0" in scraped.splitlines()
