"""Pure converters for the values of systemd directives: text in, typed value out, and back.

Rule 1: this package does no I/O and reads no clock. Its modules import only ``re``,
``ipaddress``, ``signal`` (for its name table), ``enum``, ``typing``, ``attrs`` and each other; it
knows no unit file and no section, only how one value is spelled.

Rule 2: every ``parse_*`` takes the value text, already stripped of surrounding whitespace, and
returns an immutable value or raises ``ValueError(reason)``. The reason is a short phrase in attrs'
"must be X (got Y)" wording, where Y is the offending part only: the caller prints
``path:line: Key='value': reason``, so we never repeat the whole value. An empty value is an error
everywhere: ``Key=`` resets a list, and the caller handles that before calling us.

Rule 3: every parsed value has a ``render_*`` inverse that gives canonical text, and
``parse(render(v)) == v`` for every valid ``v``. :data:`INFINITY` (``None``) means "infinity" in
every converter that accepts it.

Rule 4: the semantics are systemd 252's, and each converter names the systemd function it copies.
Where we differ we are stricter, never laxer: we refuse what systemd would accept with a surprising
meaning (a leading ``+``, ``5:`` for a limit, a scope on an IPv4 address), and a comment says so.
Text that came from bytes which are not UTF-8 carries them as surrogate escapes
(``surrogateescape``), so a word always encodes back to the exact bytes systemd would produce.

Rule 5: the public API is what this file re-exports; callers write ``from activator import values
as v`` and never import a private module. The private modules are:

- ``_common``: the helpers several modules share (white space, control characters, strict decimal
  integers, UTF-8 with surrogate escapes). They live there only, never copied.
- ``_numbers``: booleans, time spans, sizes, percentages and limits, resource limits, integers,
  nice levels, modes and signals.
- ``_net``: listening addresses and IP prefixes.
- ``_words``: splitting and quoting words; user, group and environment variable names.
- ``_paths``: absolute and relative paths, and the entries of the path directives.
- ``_choices``: the enumerations and the standard streams.
"""

from __future__ import annotations

from ._choices import BindIPv6Only as BindIPv6Only
from ._choices import IOSpec as IOSpec
from ._choices import ProtectHome as ProtectHome
from ._choices import ProtectSystem as ProtectSystem
from ._choices import RestartPolicy as RestartPolicy
from ._choices import RuntimeDirectoryPreserve as RuntimeDirectoryPreserve
from ._choices import ServiceType as ServiceType
from ._choices import parse_bind_ipv6_only as parse_bind_ipv6_only
from ._choices import parse_protect_home as parse_protect_home
from ._choices import parse_protect_system as parse_protect_system
from ._choices import parse_restart_policy as parse_restart_policy
from ._choices import parse_runtime_directory_preserve as parse_runtime_directory_preserve
from ._choices import parse_service_type as parse_service_type
from ._choices import parse_standard_input as parse_standard_input
from ._choices import parse_standard_output as parse_standard_output
from ._choices import render_io_spec as render_io_spec
from ._net import AbstractListen as AbstractListen
from ._net import InetListen as InetListen
from ._net import IPNetwork as IPNetwork
from ._net import ListenAddress as ListenAddress
from ._net import SocketKind as SocketKind
from ._net import UnixListen as UnixListen
from ._net import parse_ip_prefixes as parse_ip_prefixes
from ._net import parse_listen as parse_listen
from ._net import render_ip_prefixes as render_ip_prefixes
from ._net import render_listen as render_listen
from ._numbers import INFINITY as INFINITY
from ._numbers import Percent as Percent
from ._numbers import RLimit as RLimit
from ._numbers import parse_boolean as parse_boolean
from ._numbers import parse_cpu_quota as parse_cpu_quota
from ._numbers import parse_integer as parse_integer
from ._numbers import parse_memory_limit as parse_memory_limit
from ._numbers import parse_mode as parse_mode
from ._numbers import parse_nice as parse_nice
from ._numbers import parse_rlimit as parse_rlimit
from ._numbers import parse_signal as parse_signal
from ._numbers import parse_size as parse_size
from ._numbers import parse_tasks_max as parse_tasks_max
from ._numbers import parse_timespan as parse_timespan
from ._numbers import render_boolean as render_boolean
from ._numbers import render_limit as render_limit
from ._numbers import render_mode as render_mode
from ._numbers import render_rlimit as render_rlimit
from ._numbers import render_signal as render_signal
from ._numbers import render_size as render_size
from ._numbers import render_timespan as render_timespan
from ._paths import BindEntry as BindEntry
from ._paths import PathEntry as PathEntry
from ._paths import TmpfsEntry as TmpfsEntry
from ._paths import parse_bind_entry as parse_bind_entry
from ._paths import parse_bind_paths as parse_bind_paths
from ._paths import parse_path_entry as parse_path_entry
from ._paths import parse_tmpfs_entry as parse_tmpfs_entry
from ._paths import render_bind_entry as render_bind_entry
from ._paths import render_path_entry as render_path_entry
from ._paths import render_tmpfs_entry as render_tmpfs_entry
from ._paths import validate_absolute_path as validate_absolute_path
from ._paths import validate_relative_directory as validate_relative_directory
from ._paths import validate_resolved_directory as validate_resolved_directory
from ._words import parse_env_assignment as parse_env_assignment
from ._words import parse_env_name as parse_env_name
from ._words import parse_environment_file as parse_environment_file
from ._words import parse_user_name as parse_user_name
from ._words import quote_word as quote_word
from ._words import split_words as split_words
