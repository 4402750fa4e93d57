"""The manager's pure rules: Restart= decisions, connection instance names, peers in logs."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator.invocation import Outcome
from activator.manager import describe_peer, instance_name, should_restart
from activator.plan import Peer
from activator.spawner import ExitStatus
from activator.units import parse_unit_name
from activator.values import RestartPolicy

P = RestartPolicy


def outcome(code: int | None = None, sig: int | None = None, *, stopped: bool = False) -> Outcome:
    status = None if code is None and sig is None else ExitStatus(code, sig)
    return Outcome("i", "u.service", status, stopped=stopped)


# systemd.service(5), "Table 2. Exit causes and the effect of the Restart= settings".
TABLE = [
    # outcome,                         no     always on-success on-failure on-abnormal on-abort
    (outcome(0),                       False, True,  True,  False, False, False),
    (outcome(3),                       False, True,  False, True,  False, False),
    (outcome(sig=signal.SIGTERM),      False, True,  True,  False, False, False),
    (outcome(sig=signal.SIGHUP),       False, True,  True,  False, False, False),
    (outcome(sig=signal.SIGKILL),      False, True,  False, True,  True,  True),
    (outcome(sig=signal.SIGSEGV),      False, True,  False, True,  True,  True),
    (outcome(),                        False, True,  False, True,  False, False),  # never ran
]  # fmt: skip
POLICIES = (P.NO, P.ALWAYS, P.ON_SUCCESS, P.ON_FAILURE, P.ON_ABNORMAL, P.ON_ABORT)


@pytest.mark.parametrize("row", TABLE, ids=lambda row: str(row[0].status))
def test_restart_follows_systemds_table(
    row: tuple[Outcome, bool, bool, bool, bool, bool, bool],
) -> None:
    result, *expected = row
    got = [should_restart(policy, result, ignore_failure=False) for policy in POLICIES]
    assert got == expected


def test_the_dash_prefix_makes_a_failed_exit_clean() -> None:
    assert not should_restart(P.ON_FAILURE, outcome(3), ignore_failure=True)
    assert should_restart(P.ON_SUCCESS, outcome(3), ignore_failure=True)


@given(
    policy=st.sampled_from(list(RestartPolicy)),
    code=st.one_of(st.none(), st.integers(0, 255)),
    sig=st.one_of(st.none(), st.sampled_from([s.value for s in signal.Signals])),
)
def test_a_requested_stop_never_restarts(
    policy: RestartPolicy, code: int | None, sig: int | None
) -> None:
    assert not should_restart(policy, outcome(code, sig, stopped=True), ignore_failure=False)


def test_no_watchdog_means_on_watchdog_never_restarts() -> None:
    assert not should_restart(P.ON_WATCHDOG, outcome(sig=signal.SIGABRT), ignore_failure=False)


@given(
    number=st.integers(1, 2**40),
    remote_port=st.integers(1, 65535),
    v6=st.booleans(),
)
def test_a_connection_instance_is_a_valid_unit_instance(
    number: int, remote_port: int, v6: bool
) -> None:
    peer = Peer(
        "TCP6" if v6 else "TCP",
        remote_addr="fe80::1%eth0" if v6 else "10.0.0.2",
        remote_port=remote_port,
        local_addr="::1" if v6 else "127.0.0.1",
        local_port=7007,
    )
    instance = instance_name(number, peer)
    name = parse_unit_name(f"echo@{instance}.service")
    assert name.instance == instance
    assert instance.startswith(f"{number}-")
    assert instance.endswith(f":{remote_port}")


def test_instance_names_are_systemds() -> None:
    tcp = Peer("TCP", "127.0.0.1", 41234, "127.0.0.1", 7007)
    assert instance_name(3, tcp) == "3-127.0.0.1:7007-127.0.0.1:41234"
    unix = Peer("UNIX", None, None, "/run/x.sock", None, uid=0, gid=0, pid=12)
    assert instance_name(4, unix) == "4-12-0"


def test_peers_read_as_addresses() -> None:
    assert describe_peer(Peer("TCP", "127.0.0.1", 41234)) == "127.0.0.1:41234"
    assert describe_peer(Peer("TCP6", "::1", 41234)) == "[::1]:41234"
    assert describe_peer(Peer("UNIX", uid=1000, pid=5)) == "unix:uid=1000,pid=5"
    assert describe_peer(None) is None
