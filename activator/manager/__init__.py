"""The super-server: every socket unit listening, every connection an invocation, reload, drain.

Modules: ``_core`` (the :class:`Manager`), ``_state`` (its records), ``_rules`` (pure decisions:
``Restart=``, instance names, peers) and ``_events`` (what it logs).

Rule 1: one connection's failure is its own. Each connection runs in a task of its own that
catches everything :func:`activator.invocation.run_invocation` can end with (it returns an
:class:`~activator.invocation.Outcome` for every failure), and an accept loop survives every
error of ``accept()``: EMFILE, ENFILE, ENOBUFS and ENOMEM back off and retry.

Rule 2: a listening socket lives as long as its listen spec. A reload compares specs
(:class:`activator.listener.ListenSpec`): a socket whose spec did not change is never closed, so
no connection is refused because of a reload; its accept loop is restarted only when the socket
unit changed. Live invocations belong to the manager, not to their socket's loop, so a reload
or a removed socket never cuts a connection short.

Rule 3: the event loop never blocks: loading units, binding sockets and resolving socket owners
run in worker threads.

Theory of operation: :meth:`Manager.serve` loads the catalog, binds every socket of every socket
unit (using sockets passed in by socket activation of activator itself first), and runs one
``SocketState`` per socket unit in the ``loops`` nursery. For Accept=yes, one task per listening
socket accepts while connections are queued (and waits until it is readable when none is), checks
the rate limits for each (``PollLimit*=`` and ``TriggerLimit*=``: past the burst, accepting pauses
until the window ends, and connections wait in the kernel's backlog), admits each connection
(:mod:`activator.admission`) and starts its invocation in the ``invocations`` nursery. For
Accept=no, one task waits until any socket of the unit is readable (or a start is asked for), then
runs the service with every socket passed, restarting it as ``Restart=`` says, and waits again once
it is gone. SIGHUP reloads (:meth:`Manager.reload`); SIGTERM and SIGINT drain: the loops stop,
services get ``KillSignal=``, connections get ``TimeoutStopSec=`` to finish and are then killed,
every lease is released, and Unix sockets with ``RemoveOnStop=`` are removed.
"""

from ._core import Manager as Manager
from ._events import log_problems as log_problems
from ._rules import describe_peer as describe_peer
from ._rules import instance_name as instance_name
from ._rules import should_restart as should_restart
from ._state import Hooks as Hooks
from ._state import Live as Live
from ._state import ManagerError as ManagerError
from ._state import ReloadReport as ReloadReport
