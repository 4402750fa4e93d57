"""Prometheus metrics of activator, above all the pressure on the UID pool, and their endpoint.

Modules: ``_collect`` (the :class:`Metrics`: a registry of activator's own, the hooks that count
what happens, and a collector that reads the pool, leases and live invocations at scrape time)
and ``_http`` (:func:`serve_metrics`: ``GET /metrics`` and ``GET /healthz`` over HTTP/1.x on
activator's own trio loop).

Rule 1: counting costs the hot path a counter increment; states are read only when scraped.

Rule 2: label values are bounded by the units files (unit names, the template for per-connection
instances, fixed reason sets): never peers, never UIDs.

Rule 3: the endpoint answers under a flood of activator connections: it shares the loop, but a
scrape is one short task, and its own clients are bounded in number, size and time.

The metric names are a contract (dashboards and alert rules in ``deploy/`` use them): every name
has the ``activator_`` prefix, base units in its name, and a HELP text.
"""

from ._collect import Metrics as Metrics
from ._collect import Probes as Probes
from ._collect import exit_labels as exit_labels
from ._collect import invocation_result as invocation_result
from ._collect import spawner_probes as spawner_probes
from ._collect import unit_label as unit_label
from ._http import HttpError as HttpError
from ._http import HttpLimits as HttpLimits
from ._http import Request as Request
from ._http import parse_request as parse_request
from ._http import respond as respond
from ._http import serve_metrics as serve_metrics
from ._http import start_metrics as start_metrics
