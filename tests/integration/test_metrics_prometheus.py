"""A real Prometheus scrapes ``activator serve``: what its query API answers matches what
happened (connections counted, leases back to zero, the allocation histogram populated).

Prometheus (the Debian package ``prometheus``) scrapes the server's metrics endpoint every second
on loopback; the test drives connections to the echo of :mod:`tests.integration.test_metrics`
and polls ``/api/v1/query`` until the results match (within a bounded time). Each gauge is seen
away from 0 before it is seen back at 0, so that a gauge stuck at 0 fails. Without Prometheus
the test is skipped, and fails under CI=true (the ``prometheus`` fixture).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import pytest

from tests.integration.conftest import printed_uid
from tests.integration.prometheus import Prometheus
from tests.integration.prometheus import prometheus as prometheus  # the fixture
from tests.integration.serving import Client, Server, exchange
from tests.integration.test_metrics import SERVICE_LABEL, SOCKET_UNIT, start_echo

pytestmark = pytest.mark.root

#: Connections the test makes.
CONNECTIONS: Final = 12


def test_prometheus_sees_the_connections_the_leases_and_the_allocations(
    leaves_nothing: None,
    server: Callable[..., Server],
    prometheus: Callable[[Sequence[str]], Prometheus],
) -> None:
    running, port, metrics_port = start_echo(server)
    scraper = prometheus([f"127.0.0.1:{metrics_port}"])
    scraper.wait_until('up{job="activator"}', lambda values: values == [1.0])
    for n in range(CONNECTIONS):
        answer = exchange(("127.0.0.1", port), f"ping {n}\n".encode())
        assert answer.endswith(f"ping {n}\n".encode()), answer
    running.wait_for(lambda e: e.get("event") == "invocation", 30, count=CONNECTIONS)
    # One more, held: Prometheus sees its lease and its invocation, then both gone.
    with Client(("127.0.0.1", port)) as held:
        printed_uid(held.line())
        scraper.wait_until("sum(activator_uid_leases)", lambda v: v == [1.0])
        scraper.wait_until("sum(activator_invocations_active)", lambda v: v == [1.0])
        scraper.wait_until("activator_uid_pool_utilization_ratio", lambda v: bool(v) and v[0] > 0)
    total = CONNECTIONS + 1
    running.wait_for(lambda e: e.get("event") == "invocation", 30, count=total)

    accepted = f'activator_connections_accepted_total{{unit="{SOCKET_UNIT}"}}'
    assert scraper.wait_until(accepted, lambda v: v == [total]) == [total]
    success = f'activator_invocations_total{{unit="{SERVICE_LABEL}",result="success"}}'
    scraper.wait_until(success, lambda v: v == [total])
    scraper.wait_until("sum(activator_uid_leases)", lambda v: v == [0.0])
    scraper.wait_until("sum(activator_invocations_active)", lambda v: v == [0.0])
    scraper.wait_until("activator_uid_allocation_seconds_count", lambda v: v == [total])
    # A finite bucket: every allocation took less than a second (an +Inf bucket always counts
    # them all).
    within = 'activator_uid_allocation_seconds_bucket{le="1.0"}'
    scraper.wait_until(within, lambda v: v == [total])
    scraper.wait_until("activator_uid_pool_utilization_ratio", lambda v: v == [0.0])
    scraper.wait_until("activator_spawner_up", lambda v: v == [1.0])
    assert running.stop() == 0
