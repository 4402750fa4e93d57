"""The manager's decisions that need no I/O: ``Restart=``, the instance name of a connection,
how a peer reads in the log, and whether a service's output goes to the log.

Rule 1: pure. These take the outcome, the peer or the unit and return a value; the manager does
what they say.
"""

from __future__ import annotations

import ipaddress
import signal
from typing import TYPE_CHECKING, Final

from activator.model import ServiceUnit
from activator.plan import Peer
from activator.values import RestartPolicy

if TYPE_CHECKING:
    from activator.invocation import Outcome

#: Signals that end a service cleanly in systemd's eyes (Restart=on-success and friends).
_CLEAN_SIGNALS: Final = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
#: Where ``StandardOutput=``/``StandardError=`` send output to activator's log.
_LOG_KINDS: Final = frozenset({"journal", "kmsg", "journal+console", "kmsg+console"})


def should_restart(policy: RestartPolicy, outcome: Outcome, *, ignore_failure: bool) -> bool:
    """Whether ``Restart=`` restarts a service after ``outcome`` (systemd's table in
    systemd.service(5)); a stop that was asked for never restarts."""
    if outcome.stopped or policy is RestartPolicy.NO:
        return False
    if policy is RestartPolicy.ALWAYS:
        return True
    status = outcome.status
    signalled = status is not None and status.signal is not None
    unclean_signal = signalled and status is not None and status.signal not in _CLEAN_SIGNALS
    if status is None:  # never ran: a failure, as a failed exec is for systemd
        clean = False
    elif signalled:
        clean = not unclean_signal
    else:
        clean = status.code == 0 or ignore_failure
    if policy is RestartPolicy.ON_SUCCESS:
        return clean
    if policy is RestartPolicy.ON_FAILURE:
        return not clean
    if policy is RestartPolicy.ON_ABNORMAL:
        return unclean_signal  # RuntimeMaxSec= ends in a signal too
    if policy is RestartPolicy.ON_ABORT:
        return unclean_signal
    return False  # on-watchdog: activator has no watchdog


def instance_name(number: int, peer: Peer) -> str:
    """The instance of an Accept=yes connection's service, as systemd names it:
    ``N-LOCAL-REMOTE`` for IP (``3-127.0.0.1:7007-127.0.0.1:41234``), ``N-PID-UID`` for Unix."""
    if peer.proto == "UNIX":
        pid = "unknown" if peer.pid is None else str(peer.pid)
        uid = "unknown" if peer.uid is None else str(peer.uid)
        return f"{number}-{pid}-{uid}"

    def end(address: str | None, port: int | None) -> str:
        host = (address or "unknown").partition("%")[0]  # no scope: '%' is not a unit name char
        return f"{host}:{port if port is not None else 0}"

    local = end(peer.local_addr, peer.local_port)
    return f"{number}-{local}-{end(peer.remote_addr, peer.remote_port)}"


def describe_peer(peer: Peer | None) -> str | None:
    """A peer as logs show it: ``127.0.0.1:41234``, ``[::1]:41234``, ``unix:uid=0,pid=12``."""
    if peer is None:
        return None
    if peer.proto == "UNIX":
        return f"unix:uid={_or_unknown(peer.uid)},pid={_or_unknown(peer.pid)}"
    host = peer.remote_addr or "unknown"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{_or_unknown(peer.remote_port)}"


def _or_unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def peer_ip(peer: Peer) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if peer.proto == "UNIX" or peer.remote_addr is None:
        return None
    try:
        return ipaddress.ip_address(peer.remote_addr.partition("%")[0])
    except ValueError:
        return None


def writes_to_log(service: ServiceUnit) -> bool:
    """Whether the service's stdout or stderr goes to activator's log (``journal``, ``kmsg``)."""
    stdout = service.standard_output.kind
    stderr = service.standard_error.kind
    if stderr == "inherit":
        stderr = stdout
    return stdout in _LOG_KINDS or stderr in _LOG_KINDS
