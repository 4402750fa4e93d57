"""The unit model: frozen, validated ``.socket`` and ``.service`` units with systemd's defaults.

Rule 1: a model object is complete and valid by construction. Every field has systemd's default,
every implication (DynamicUser=yes forces a sandbox) is already applied, and everything later
(pool, plan, spawner) reads fields and never re-parses text.

Rule 2: fail closed. Any value that does not parse is an error, not a warning: stricter than
systemd, which logs and ignores most bad values, because an ignored ``ProtectSystem=`` or
``ReadOnlyPaths=`` silently runs a handler with less isolation than its author asked for. For the
same reason, systemd's sandboxing and identity directives that activator does not implement are
errors (``UNSUPPORTED_SECURITY``), while its other directives we do not implement are warnings.

Rule 3: the model is its own text. ``render_service``/``render_socket`` write a unit that
``build_service``/``build_socket`` read back to an equal model (tested with hypothesis).

Theory of operation: a unit's assignments (fragment, then drop-ins, from ``units``) are applied in
order through ``DIRECTIVES``: a table from (section, key) to the field it sets, how its value is
parsed and whether it accumulates. Scalar directives take the last value; list directives append,
and an empty assignment resets the list, as in systemd. ``%`` specifiers are resolved per word,
after splitting, so an instance name never changes the number of words of a command line.
Then ``_finish_*`` fills defaults that depend on other fields and checks cross-field rules.

Layout: ``_units`` holds the model classes, ``_directives`` the table from keys to fields and the
value adapters, ``_build`` applies assignments and the cross-field rules, ``_render`` writes a
model back as unit text, ``_sharing`` tells which directories the instances of a template share.
"""

from activator.model._build import DYNAMIC_USER_IMPLIES as DYNAMIC_USER_IMPLIES
from activator.model._build import build_service as build_service
from activator.model._build import build_socket as build_socket
from activator.model._directives import SERVICE_DIRECTIVES as SERVICE_DIRECTIVES
from activator.model._directives import SOCKET_DIRECTIVES as SOCKET_DIRECTIVES
from activator.model._directives import UNSUPPORTED_SECURITY as UNSUPPORTED_SECURITY
from activator.model._directives import Directive as Directive
from activator.model._render import render_service as render_service
from activator.model._render import render_socket as render_socket
from activator.model._sharing import SharedDirectories as SharedDirectories
from activator.model._sharing import every_directory as every_directory
from activator.model._sharing import shared_directories as shared_directories
from activator.model._units import EXEC_SEARCH_PATH as EXEC_SEARCH_PATH
from activator.model._units import SECOND as SECOND
from activator.model._units import ExecCommand as ExecCommand
from activator.model._units import IPNetwork as IPNetwork
from activator.model._units import Listen as Listen
from activator.model._units import ServiceUnit as ServiceUnit
from activator.model._units import SocketUnit as SocketUnit
from activator.model._units import Unit as Unit
