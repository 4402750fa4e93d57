"""``activator serve``'s metrics endpoint, as an operator scrapes it: with curl, checked by
``promtool``, while clients connect, and under a flood past the pool's size.

The server runs an inetd-style echo (:data:`tests.integration.test_serve_pressure.ECHO`, a dynamic
user per connection) on a pool of 16 UIDs of its own, with ``on_exhausted = "reject"``, and
serves its metrics on a free loopback port. The pool, 65440-65455, is near the top of the default
pool, which another busy server on the default pool reaches last. Unit names start with ``m7``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Final

import pytest

from tests.integration.conftest import printed_uid
from tests.integration.prometheus import (
    Samples,
    check_metrics,
    parse,
    scrape,
    value,
)
from tests.integration.serving import (
    Client,
    Server,
    StartServer,
    echo_units,
    exchange,
    free_port,
    lease_files,
)

pytestmark = pytest.mark.root


POOL_FIRST: Final = 65440
POOL_LAST: Final = 65455
POOL: Final = range(POOL_FIRST, POOL_LAST + 1)
POOL_SIZE: Final = len(POOL)
#: Connections past the pool's size in the flood.
PAST_THE_POOL: Final = 8
#: The flood's connect-and-close burst: at most this many connections, for at most this long.
BURST_CONNECTIONS: Final = 2000
BURST_SECONDS: Final = 10.0
#: Connections of the burst made before the endpoint is scraped during it.
BURST_UNDER_WAY: Final = 200
#: Scrapes during the burst, and the bound on each: an idle scrape takes milliseconds, and one
#: that waited behind the flood (an accept loop holding the event loop) would take seconds.
SCRAPES_IN_THE_BURST: Final = 5
SCRAPE_IN_THE_BURST_BOUND: Final = 1.0

SOCKET_UNIT: Final = "m7echo.socket"
SERVICE_LABEL: Final = "m7echo@.service"


def pool_settings() -> str:
    return f'[pool]\nfirst = {POOL_FIRST}\nlast = {POOL_LAST}\non_exhausted = "reject"\n'


def start_echo(server: StartServer) -> tuple[Server, int, int]:
    """A server of the echo on its own port, with metrics: (server, echo port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    running = server(
        echo_units("m7echo", port), pool_settings(), metrics=f"127.0.0.1:{metrics_port}"
    )
    return running, port, metrics_port


def samples(metrics_port: int) -> Samples:
    got = scrape(metrics_port)
    assert got.status == 200, got
    return parse(got.body)


def invocations_done(running: Server, count: int) -> None:
    running.wait_for(lambda e: e.get("event") == "invocation", 30, count=count)


def spawn_failures(metrics: Samples) -> float:
    """Every spawn failure of the echo, any stage (its series exist, at 0, from the start)."""
    stages = [labels for name, labels in metrics if name == "activator_spawn_failures_total"]
    assert stages, "no activator_spawn_failures_total series"
    return sum(metrics[("activator_spawn_failures_total", labels)] for labels in stages)


def assert_idle(metrics: Samples) -> None:
    """Every gauge of what runs reads 0."""
    assert value(metrics, "activator_uid_leases", unit=SERVICE_LABEL) == 0
    assert value(metrics, "activator_invocations_active", unit=SERVICE_LABEL) == 0
    assert value(metrics, "activator_uid_pool_utilization_ratio") == 0
    assert value(metrics, "activator_uid_wait_queue_length") == 0


def test_a_scrape_counts_what_happened_and_promtool_finds_nothing_wrong(
    leaves_nothing: None, server: StartServer
) -> None:
    running, port, metrics_port = start_echo(server)
    (event,) = running.wait_for(lambda e: e.get("event") == "metrics")
    assert event["address"] == f"127.0.0.1:{metrics_port}"
    assert event["message"] == f"metrics: serving http://127.0.0.1:{metrics_port}/metrics"
    for n in range(3):
        answer = exchange(("127.0.0.1", port), f"hello {n}\n".encode()).decode()
        assert answer.endswith(f"hello {n}\n"), answer
    invocations_done(running, 3)

    page = scrape(metrics_port)
    assert page.status == 200
    assert check_metrics(page.body) == ""
    metrics = parse(page.body)
    assert value(metrics, "activator_connections_accepted_total", unit=SOCKET_UNIT) == 3
    result = {"unit": SERVICE_LABEL, "result": "success"}
    assert value(metrics, "activator_invocations_total", **result) == 3
    exits = {"unit": SERVICE_LABEL, "how": "exited", "status": "0"}
    assert value(metrics, "activator_handler_exits_total", **exits) == 3
    allocations = sum(
        value(metrics, "activator_uid_allocations_total", source=source)
        for source in ("state_directory", "name_hash", "free_set")
    )
    assert allocations == 3
    for histogram in (
        "activator_uid_allocation_seconds",
        "activator_uid_lease_duration_seconds",
        "activator_spawn_seconds",
        "activator_handler_duration_seconds",
    ):
        assert value(metrics, f"{histogram}_count") == 3, histogram
    assert value(metrics, "activator_uid_wait_seconds_count") == 0
    assert value(metrics, "activator_uid_pool_size") == POOL_SIZE
    assert value(metrics, "activator_spawner_up") == 1
    assert value(metrics, "activator_userdb_up") == 1
    assert value(metrics, "process_open_fds") > 0
    assert_idle(metrics)
    # Peers and UIDs are never labels.
    assert "127.0.0.1:" not in page.body.replace(f"127.0.0.1:{metrics_port}", "")
    assert str(POOL_FIRST) not in page.body

    health = scrape(metrics_port, "/healthz")
    assert (health.status, health.body) == (200, "ok\n")
    assert scrape(metrics_port, "/nothing").status == 404
    openmetrics = scrape(metrics_port, "/metrics", "Accept: application/openmetrics-text")
    assert openmetrics.body.endswith("# EOF\n")
    assert running.stop() == 0


@contextlib.contextmanager
def connect_and_close(port: int) -> Iterator[list[int]]:
    """A thread that connects to ``port`` and closes at once, again and again (bounded in
    count and time), while the block runs; yields the list it appends 1 to per connection."""
    made: list[int] = []
    stop = threading.Event()

    def burst() -> None:
        deadline = time.monotonic() + BURST_SECONDS
        while not stop.is_set() and len(made) < BURST_CONNECTIONS and time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(5)
                try:
                    sock.connect(("127.0.0.1", port))
                except OSError:
                    continue
                made.append(1)

    thread = threading.Thread(target=burst, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        thread.join(BURST_SECONDS + 10)


def test_under_a_flood_past_the_pool_the_endpoint_answers_and_every_gauge_returns_to_zero(
    leaves_nothing: None, server: StartServer
) -> None:
    running, port, metrics_port = start_echo(server)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(Client(("127.0.0.1", port))) for _ in range(POOL_SIZE)]
        uids = sorted(printed_uid(client.line()) for client in held)
        assert uids == list(POOL)
        for _ in range(PAST_THE_POOL):
            with Client(("127.0.0.1", port)) as refused:
                assert refused.rest() == b"", "a connection past the pool was served"
        running.wait_for(lambda e: e.get("event") == "reject", 30, count=PAST_THE_POOL)

        with connect_and_close(port) as made:
            deadline = time.monotonic() + BURST_SECONDS
            while len(made) < BURST_UNDER_WAY:  # the flood is under way
                assert time.monotonic() < deadline, f"the burst made {len(made)} connections"
                time.sleep(0.01)
            # While the pool is full and connections keep coming, the endpoint answers, each
            # time, quickly.
            scrapes = []
            for _ in range(SCRAPES_IN_THE_BURST):
                scrapes += [scrape(metrics_port), scrape(metrics_port, "/healthz")]
            during = len(made)
        assert during > BURST_UNDER_WAY, "the burst stopped before the scrapes"
        for got in scrapes:
            assert got.status == 200, got
            assert got.seconds < SCRAPE_IN_THE_BURST_BOUND, got
        health = scrapes[-1]
        assert health.body == "ok\n"
        full = scrapes[-2]
        metrics = parse(full.body)
        assert value(metrics, "activator_uid_pool_utilization_ratio") == 1.0
        assert value(metrics, "activator_uid_pool_free") == 0
        assert value(metrics, "activator_uid_leases", unit=SERVICE_LABEL) == POOL_SIZE
        assert value(metrics, "activator_invocations_active", unit=SERVICE_LABEL) == POOL_SIZE
        exhausted = value(metrics, "activator_uid_allocation_failures_total", reason="exhausted")
        assert exhausted >= PAST_THE_POOL
        rejected = {"unit": SOCKET_UNIT, "reason": "exhausted"}
        assert value(metrics, "activator_connections_rejected_total", **rejected) >= PAST_THE_POOL
        # A refusal for want of a UID is no spawn failure, and no failed invocation.
        assert spawn_failures(metrics) == 0
        no_uid = {"unit": SERVICE_LABEL, "result": "rejected"}
        assert value(metrics, "activator_invocations_total", **no_uid) >= PAST_THE_POOL
        assert (
            "activator_invocations_total",
            (("result", "failure"), ("unit", SERVICE_LABEL)),
        ) not in metrics
    # The held clients are closed: their handlers end.
    total = POOL_SIZE + PAST_THE_POOL + len(made)
    accepted = running.wait_for(
        lambda e: e.get("event") in ("invocation", "reject"), 60, count=total
    )
    assert len(accepted) == total
    after = samples(metrics_port)
    assert_idle(after)
    assert value(after, "activator_connections_accepted_total", unit=SOCKET_UNIT) == total
    assert value(after, "activator_uid_allocation_failures_total", reason="exhausted") == value(
        after, "activator_connections_rejected_total", unit=SOCKET_UNIT, reason="exhausted"
    )
    assert spawn_failures(after) == 0
    assert running.stop() == 0
    assert not [name for name in lease_files() if int(name) in POOL], "leases left"


def test_a_metrics_address_in_use_is_an_error_and_serving_goes_on(
    leaves_nothing: None, server: StartServer
) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        running = server(echo_units("m7echo", port), pool_settings(), metrics=address)
        (error,) = running.wait_for(lambda e: e.get("event") == "metrics_failed")
        assert error["level"] == "error"
        assert error["address"] == address
        assert address in error["message"]
        assert "Address already in use" in error["message"]
        assert exchange(("127.0.0.1", port), b"still here\n").endswith(b"still here\n")
        assert running.stop() == 0


def test_with_strict_a_metrics_address_in_use_stops_the_server(
    leaves_nothing: None, server: StartServer
) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        running = server(
            echo_units("m7echo", port), pool_settings(), metrics=address, strict=True, wait=False
        )
        assert running.wait() == 2
    messages = [e.get("message", "") for e in running.events]
    assert (
        f"--strict: not serving: metrics: cannot listen on {address}: Address already in use"
        in messages
    )
    assert not any(e.get("event") == "ready" for e in running.events)


def test_with_on_exhausted_wait_the_queue_and_the_wait_are_measured(
    leaves_nothing: None, server: StartServer
) -> None:
    port, metrics_port = free_port(), free_port()
    settings = pool_settings().replace('"reject"', '"wait"') + "wait_timeout_sec = 30\n"
    running = server(echo_units("m7echo", port), settings, metrics=f"127.0.0.1:{metrics_port}")
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(Client(("127.0.0.1", port))) for _ in POOL]
        for client in held:
            printed_uid(client.line())
        waiting = stack.enter_context(Client(("127.0.0.1", port)))
        deadline = time.monotonic() + 30
        while value(samples(metrics_port), "activator_uid_wait_queue_length") != 1:
            assert time.monotonic() < deadline, "the 17th connection never queued for a UID"
            time.sleep(0.1)
        held[0].close()  # its UID goes to the one waiting
        assert printed_uid(waiting.line()) in POOL
        metrics = samples(metrics_port)
        assert value(metrics, "activator_uid_wait_queue_length") == 0
        assert value(metrics, "activator_uid_wait_seconds_count") == 1
        assert value(metrics, "activator_uid_allocation_seconds_count") == POOL_SIZE + 1
        assert value(metrics, "activator_uid_pool_utilization_ratio") == 1.0
    invocations_done(running, POOL_SIZE + 1)
    assert_idle(samples(metrics_port))
    assert running.stop() == 0
