"""Hypothesis strategies for valid unit models (the attrs pattern: shared strategies in one place).

Every strategy here yields a model that ``build_*`` could have produced: canonical values, and the
cross-field rules (DynamicUser= implications, stdio defaults, Accept= defaults) already applied.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from hypothesis import strategies as st

from activator import values as v
from activator.model import (
    DYNAMIC_USER_IMPLIES,
    ExecCommand,
    Listen,
    ServiceUnit,
    SocketUnit,
)
from activator.units import UnitName

SAFE = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="\x85"
)


def _no_trailing_backslash(text: str) -> bool:
    # A value ending in an odd run of backslashes continues the line in unit syntax (in systemd
    # too); nothing can write one, so no model holds one.
    return (len(text) - len(text.rstrip("\\"))) % 2 == 0


#: Free text as one value: no control characters, no white space at either end.
free_text = st.text(SAFE, max_size=30).map(lambda s: s.strip(" ")).filter(_no_trailing_backslash)
#: One word of a command line or list: anything without control characters.
word = st.text(SAFE, min_size=1, max_size=12)
segment = st.text(st.sampled_from("abcxyz019_-.%: '\"\\"), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
abs_path = st.lists(segment, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
#: A path written as a whole value (WorkingDirectory=, EnvironmentFile=): unquoted, so it must not
#: end in white space (trimmed) or a backslash (a continuation), in systemd as here.
value_path = abs_path.filter(lambda p: p == p.rstrip(" ") and _no_trailing_backslash(p))
rel_dir = (
    st.lists(segment.filter(lambda s: ":" not in s), min_size=1, max_size=3)
    .map("/".join)
    .filter(lambda s: s.split("/")[0] != "private")
)
user_name = st.from_regex(r"[a-z_][a-z0-9_-]{0,30}", fullmatch=True)
numeric_id = st.integers(0, 60000).map(str)
prefix = st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True)
timespan = st.one_of(st.none(), st.integers(0, 10**13))
finite_timespan = st.integers(0, 10**10)
percent = st.integers(1, 10000).map(v.Percent)


def unit_names(suffix: str) -> st.SearchStrategy[UnitName]:
    instance = st.one_of(st.none(), st.from_regex(r"[a-z0-9][a-z0-9_.:-]{0,12}", fullmatch=True))
    return st.builds(UnitName, prefix, instance, st.just(suffix))


@st.composite
def exec_commands(draw: st.DrawFn) -> ExecCommand:
    path = draw(st.one_of(abs_path, st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)))
    args = draw(st.lists(word.filter(lambda w: w != ";"), max_size=4))
    argv0 = draw(st.one_of(st.just(path), word.filter(lambda w: w != ";")))
    return ExecCommand(
        path=path,
        argv=(argv0, *args),
        ignore_failure=draw(st.booleans()),
        expand_environment=draw(st.booleans()),
    )


env_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
#: Paths of directives that read backslashes as they are (activator refuses them there).
literal_path = abs_path.filter(lambda p: "\\" not in p)
path_entries = st.builds(v.PathEntry, literal_path, st.booleans())
value_path_entries = st.builds(v.PathEntry, value_path, st.booleans())
bind_entries = st.builds(v.BindEntry, abs_path, abs_path, st.booleans(), st.booleans())
tmpfs_entries = st.builds(
    v.TmpfsEntry,
    literal_path.filter(lambda p: ":" not in p),
    st.lists(
        st.sampled_from(["ro", "nosuid", "nodev", "noexec", "size=10M", "mode=0755"]),
        max_size=3,
        unique=True,
    ).map(",".join),
)


def _rlimit(kind: str) -> st.SearchStrategy[v.RLimit | None]:
    top = 2**40 if kind != "sec" else 10**6
    value = st.one_of(st.none(), st.integers(0, top))

    def ordered(pair: tuple[int | None, int | None]) -> v.RLimit:
        soft, hard = pair
        if hard is None or (soft is not None and soft <= hard):
            return v.RLimit(soft, hard)
        return v.RLimit(hard, soft)

    return st.one_of(st.none(), st.tuples(value, value).map(ordered))


stdio_in = st.one_of(
    st.sampled_from(["null", "tty", "tty-force", "tty-fail", "socket"]).map(v.IOSpec),
    value_path.map(lambda p: v.IOSpec("file", p)),
)
stdio_out = st.one_of(
    st.sampled_from(
        ["inherit", "null", "tty", "journal", "kmsg", "journal+console", "kmsg+console", "socket"]
    ).map(v.IOSpec),
    st.builds(v.IOSpec, st.sampled_from(["file", "append", "truncate"]), value_path),
)


@st.composite
def services(draw: st.DrawFn) -> ServiceUnit:
    """A valid service model, as ``build_service`` would return it."""
    service_type = draw(st.sampled_from(v.ServiceType))
    n_exec = draw(st.integers(1, 3)) if service_type is v.ServiceType.ONESHOT else 1
    dynamic = draw(st.booleans())
    ident = user_name if dynamic else st.one_of(user_name, numeric_id)
    fields: dict[str, Any] = {
        "description": draw(free_text),
        "wanted_by": tuple(
            draw(st.lists(st.sampled_from(["multi-user.target", "x.target"]), max_size=2))
        ),
        "type": service_type,
        "exec_start": tuple(draw(st.lists(exec_commands(), min_size=n_exec, max_size=n_exec))),
        "environment": tuple(
            draw(st.dictionaries(env_name, st.text(SAFE, max_size=10), max_size=3)).items()
        ),
        "environment_files": tuple(draw(st.lists(value_path_entries, max_size=2))),
        "unset_environment": tuple(draw(st.lists(env_name, max_size=2))),
        "working_directory": draw(st.one_of(st.none(), value_path_entries)),
        "standard_input": draw(stdio_in),
        "standard_output": draw(stdio_out),
        "standard_error": draw(stdio_out),
        "dynamic_user": dynamic,
        "user": draw(st.one_of(st.none(), ident)),
        "group": draw(st.one_of(st.none(), ident)),
        "supplementary_groups": tuple(draw(st.lists(user_name, max_size=2))),
        "private_tmp": draw(st.booleans()),
        "private_devices": draw(st.booleans()),
        "private_network": draw(st.booleans()),
        "protect_system": draw(st.sampled_from(v.ProtectSystem)),
        "protect_home": draw(st.sampled_from(v.ProtectHome)),
        "remove_ipc": draw(st.booleans()),
        "no_new_privileges": draw(st.booleans()),
        "restrict_suid_sgid": draw(st.booleans()),
        "read_write_paths": tuple(draw(st.lists(path_entries, max_size=2))),
        "read_only_paths": tuple(draw(st.lists(path_entries, max_size=2))),
        "inaccessible_paths": tuple(draw(st.lists(path_entries, max_size=2))),
        "bind_paths": tuple(draw(st.lists(bind_entries, max_size=2))),
        "bind_read_only_paths": tuple(draw(st.lists(bind_entries, max_size=2))),
        "temporary_file_system": tuple(draw(st.lists(tmpfs_entries, max_size=2))),
        "umask": draw(st.integers(0, 0o777)),
        "nice": draw(st.one_of(st.none(), st.integers(-20, 19))),
        "memory_max": draw(st.one_of(st.none(), st.integers(1, 2**40), percent)),
        "tasks_max": draw(st.one_of(st.none(), st.integers(1, 10**6), percent)),
        "cpu_quota": draw(st.one_of(st.none(), st.integers(1, 10**6).map(v.Percent))),
        "runtime_max_sec": draw(timespan),
        "timeout_stop_sec": draw(timespan.filter(lambda t: t != 0)),  # 0 reads as infinity
        "kill_signal": draw(st.sampled_from([1, 2, 3, 9, 10, 12, 15, 34, 40, 64])),
        "restart": draw(st.sampled_from(v.RestartPolicy)),
        "restart_sec": draw(timespan),
        "runtime_directory_preserve": draw(st.sampled_from(v.RuntimeDirectoryPreserve)),
    }
    for kind in ("runtime", "state", "cache", "logs"):
        fields[f"{kind}_directory"] = tuple(draw(st.lists(rel_dir, max_size=2)))
        fields[f"{kind}_directory_mode"] = draw(st.integers(0, 0o7777))
    for key, kind in (
        ("nofile", "number"), ("nproc", "number"), ("as", "size"), ("cpu", "sec"),
        ("fsize", "size"), ("core", "size"), ("data", "size"), ("stack", "size"),
    ):  # fmt: skip
        fields[f"limit_{key}"] = draw(_rlimit(kind))
    # systemd's service_fix_stdio: an inherited stdout of a one-way stdin goes to the journal.
    bidirectional = fields["standard_input"].kind in ("tty", "tty-force", "tty-fail", "socket")
    if not bidirectional and fields["standard_output"].kind == "inherit":
        fields["standard_output"] = v.IOSpec("journal")
    if dynamic:
        fields.update(DYNAMIC_USER_IMPLIES)
        if fields["protect_home"] is v.ProtectHome.NO:
            fields["protect_home"] = v.ProtectHome.READ_ONLY
    name = draw(unit_names("service"))
    return attrs.evolve(ServiceUnit(name=name), **fields)


def _inet(draw: st.DrawFn) -> v.InetListen:
    port = draw(st.integers(1, 65535))
    family = draw(st.sampled_from([None, 4, 6]))
    if family is None:
        return v.InetListen(None, port, None)
    if family == 4:
        host = str(ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1))))
    else:
        host = ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1))).compressed
    return v.InetListen(host, port, family)


@st.composite
def listen_addresses(draw: st.DrawFn, kind: v.SocketKind) -> v.ListenAddress:
    unix: st.SearchStrategy[v.ListenAddress] = value_path.filter(
        lambda p: len(p.encode()) <= 107
    ).map(v.UnixListen)
    abstract: st.SearchStrategy[v.ListenAddress] = (
        st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=20)
        .filter(lambda n: n == n.strip(" ") and _no_trailing_backslash(n))
        .map(v.AbstractListen)
    )
    if kind is v.SocketKind.SEQPACKET:
        return draw(st.one_of(unix, abstract))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return _inet(draw)
    return draw(unix if choice == 1 else abstract)


ip_networks = st.one_of(
    st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ).map(lambda n: ipaddress.IPv4Network(n)),
    st.builds(
        lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)


@st.composite
def sockets(draw: st.DrawFn) -> SocketUnit:
    """A valid socket model, as ``build_socket`` would return it."""
    accept = draw(st.booleans())
    kinds = [v.SocketKind.STREAM, v.SocketKind.SEQPACKET]
    if not accept:
        kinds.append(v.SocketKind.DATAGRAM)
    chosen = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3))
    listen = [Listen(kind, draw(listen_addresses(kind))) for kind in chosen]
    service_name = unit_names("service").filter(lambda n: not n.is_template)
    fields: dict[str, Any] = {
        "description": draw(free_text),
        "wanted_by": tuple(draw(st.lists(st.just("sockets.target"), max_size=1))),
        "listen": tuple(listen),
        "accept": accept,
        "service": None if accept else draw(st.one_of(st.none(), service_name)),
        "file_descriptor_name": draw(
            st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True))
        ),
        "max_connections": draw(st.integers(1, 2**32 - 1)),
        "max_connections_per_source": draw(st.one_of(st.none(), st.integers(1, 2**32 - 1))),
        "backlog": draw(st.integers(0, 2**32 - 1)),
        "bind_ipv6_only": draw(st.sampled_from(v.BindIPv6Only)),
        "reuse_port": draw(st.booleans()),
        "free_bind": draw(st.booleans()),
        "keep_alive": draw(st.booleans()),
        "no_delay": draw(st.booleans()),
        "remove_on_stop": draw(st.booleans()),
        "defer_accept_sec": draw(finite_timespan),
        "socket_user": draw(st.one_of(st.none(), user_name, numeric_id)),
        "socket_group": draw(st.one_of(st.none(), user_name, numeric_id)),
        "socket_mode": draw(st.integers(0, 0o7777)),
        "directory_mode": draw(st.integers(0, 0o7777)),
        "poll_limit_interval_sec": draw(timespan),
        "poll_limit_burst": draw(st.integers(0, 2**32 - 1)),
        "trigger_limit_interval_sec": draw(timespan),
        "trigger_limit_burst": draw(st.integers(0, 2**32 - 1)),
        # Only Accept=yes sockets may filter addresses (activator checks them when it accepts).
        "ip_address_allow": tuple(
            draw(st.lists(ip_networks, max_size=3 if accept else 0, unique=True))
        ),
        "ip_address_deny": tuple(
            draw(st.lists(ip_networks, max_size=3 if accept else 0, unique=True))
        ),
    }
    return attrs.evolve(SocketUnit(name=draw(unit_names("socket"))), **fields)
