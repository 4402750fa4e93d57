"""The model classes: every field a unit can set, with systemd's default.

Rule 1: value objects only (``@attrs.frozen``); a field's default is systemd's, and defaults that
depend on other fields are filled in by ``_build``, never computed on read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TypeAlias

import attrs

from activator import values as v
from activator.units import SYSTEM_DIRECTORIES, UnitName

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Where binaries named without a path are looked up, as systemd 239+ does for ExecStart=.
EXEC_SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

SECOND = 1_000_000  # timespans are microseconds, as in systemd

_NULL = v.IOSpec("null")
_JOURNAL = v.IOSpec("journal")
_INHERIT = v.IOSpec("inherit")
# systemd-system.conf DefaultTasksMax=15% (of the kernel's pid limit).
_DEFAULT_TASKS_MAX = v.Percent(1500)


@attrs.frozen
class ExecCommand:
    """One ``ExecStart=`` command line.

    Attributes:
        path: the program: absolute, or a bare name looked up in ``EXEC_SEARCH_PATH`` at spawn time.
        argv: the arguments the program sees, ``argv[0]`` included (the ``@`` prefix sets it).
        ignore_failure: the ``-`` prefix: a non-zero exit is not a failure.
        expand_environment: False with the ``:`` prefix: ``$VAR`` is passed through literally.
    """

    path: str
    argv: tuple[str, ...]
    ignore_failure: bool = False
    expand_environment: bool = True


@attrs.frozen
class Listen:
    """One ``Listen*=`` line of a socket unit."""

    kind: v.SocketKind
    address: v.ListenAddress


@attrs.frozen
class ServiceUnit:
    """A ``.service`` unit (or one instance of a template), with every default filled in."""

    name: UnitName
    description: str = ""
    wanted_by: tuple[str, ...] = ()
    # [Service]: what runs
    type: v.ServiceType = v.ServiceType.SIMPLE
    exec_start: tuple[ExecCommand, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    environment_files: tuple[v.PathEntry, ...] = ()
    unset_environment: tuple[str, ...] = ()
    working_directory: v.PathEntry | None = None
    standard_input: v.IOSpec = _NULL
    standard_output: v.IOSpec = _JOURNAL
    standard_error: v.IOSpec = _INHERIT
    # identity
    dynamic_user: bool = False
    user: str | None = None
    group: str | None = None
    supplementary_groups: tuple[str, ...] = ()
    # sandbox
    private_tmp: bool = False
    private_devices: bool = False
    private_network: bool = False
    protect_system: v.ProtectSystem = v.ProtectSystem.NO
    protect_home: v.ProtectHome = v.ProtectHome.NO
    remove_ipc: bool = False
    no_new_privileges: bool = False
    restrict_suid_sgid: bool = False
    read_write_paths: tuple[v.PathEntry, ...] = ()
    read_only_paths: tuple[v.PathEntry, ...] = ()
    inaccessible_paths: tuple[v.PathEntry, ...] = ()
    bind_paths: tuple[v.BindEntry, ...] = ()
    bind_read_only_paths: tuple[v.BindEntry, ...] = ()
    temporary_file_system: tuple[v.TmpfsEntry, ...] = ()
    # directories
    runtime_directory: tuple[str, ...] = ()
    state_directory: tuple[str, ...] = ()
    cache_directory: tuple[str, ...] = ()
    logs_directory: tuple[str, ...] = ()
    runtime_directory_mode: int = 0o755
    state_directory_mode: int = 0o755
    cache_directory_mode: int = 0o755
    logs_directory_mode: int = 0o755
    runtime_directory_preserve: v.RuntimeDirectoryPreserve = v.RuntimeDirectoryPreserve.NO
    # process limits
    umask: int = 0o022
    nice: int | None = None
    limit_nofile: v.RLimit | None = None
    limit_nproc: v.RLimit | None = None
    limit_as: v.RLimit | None = None
    limit_cpu: v.RLimit | None = None
    limit_fsize: v.RLimit | None = None
    limit_core: v.RLimit | None = None
    limit_data: v.RLimit | None = None
    limit_stack: v.RLimit | None = None
    memory_max: int | v.Percent | None = None
    tasks_max: int | v.Percent | None = _DEFAULT_TASKS_MAX
    cpu_quota: v.Percent | None = None
    # lifetime
    runtime_max_sec: int | None = None
    timeout_stop_sec: int | None = 90 * SECOND
    kill_signal: int = 15
    restart: v.RestartPolicy = v.RestartPolicy.NO
    restart_sec: int | None = SECOND // 10

    @property
    def directory_environment(self) -> Mapping[str, str]:
        """``RUNTIME_DIRECTORY`` and friends as systemd sets them: public paths, ``:``-joined."""
        out = {}
        for var, specifier, dirs in (
            ("RUNTIME_DIRECTORY", "t", self.runtime_directory),
            ("STATE_DIRECTORY", "S", self.state_directory),
            ("CACHE_DIRECTORY", "C", self.cache_directory),
            ("LOGS_DIRECTORY", "L", self.logs_directory),
        ):
            if dirs:
                base = SYSTEM_DIRECTORIES[specifier]  # the same roots as %t %S %C %L
                out[var] = ":".join(f"{base}/{d}" for d in dirs)
        return out


@attrs.frozen
class SocketUnit:
    """A ``.socket`` unit, with every default filled in."""

    name: UnitName
    description: str = ""
    wanted_by: tuple[str, ...] = ()
    listen: tuple[Listen, ...] = ()
    accept: bool = False
    service: UnitName | None = None
    file_descriptor_name: str | None = None
    max_connections: int = 64
    max_connections_per_source: int | None = None
    backlog: int = 4294967295
    bind_ipv6_only: v.BindIPv6Only = v.BindIPv6Only.DEFAULT
    reuse_port: bool = False
    free_bind: bool = False
    keep_alive: bool = False
    no_delay: bool = False
    defer_accept_sec: int = 0
    socket_user: str | None = None
    socket_group: str | None = None
    socket_mode: int = 0o666
    directory_mode: int = 0o755
    remove_on_stop: bool = False
    # The defaults of these four depend on Accept= (systemd 255 for PollLimit, 252 for Trigger).
    poll_limit_interval_sec: int | None = 2 * SECOND
    poll_limit_burst: int = 15
    trigger_limit_interval_sec: int | None = 2 * SECOND
    trigger_limit_burst: int = 20
    ip_address_allow: tuple[IPNetwork, ...] = ()
    ip_address_deny: tuple[IPNetwork, ...] = ()

    @property
    def activates(self) -> UnitName:
        """The service this socket starts: ``Service=``, else ``foo.service``, or ``foo@.service``
        for Accept=yes (one instance per connection), as systemd pairs them.

        A template instance (``foo@alice.socket``) starts its own instance (``foo@alice.service``)
        with Accept=yes too: each connection runs as the customer's instance and user, where
        systemd would name a fresh instance per connection."""
        if self.service is not None:
            return self.service
        if self.accept and not self.name.instance:
            return UnitName(self.name.prefix, "", "service")
        return self.name.with_suffix("service")

    @property
    def fd_name(self) -> str:
        """``FileDescriptorName=``, defaulting to the socket unit's name as in systemd."""
        return self.file_descriptor_name or self.name.name


Unit: TypeAlias = ServiceUnit | SocketUnit
