"""The unit model: directives, defaults, implications, errors, and the render/parse round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator import values as v
from activator.errors import ConfigError, Problem, Severity
from activator.model import (
    ExecCommand,
    Listen,
    ServiceUnit,
    SocketUnit,
    build_service,
    build_socket,
    render_service,
    render_socket,
)
from activator.units import UnitText, parse_unit_name, parse_unit_text
from tests.strategies import services, sockets


def texts(name: str, *files: str) -> list[UnitText]:
    unit_type = name.rpartition(".")[2]
    return [
        parse_unit_text(text, f"{name}.d/{i}.conf" if i else name, unit_type=unit_type)
        for i, text in enumerate(files)
    ]


def service(name: str, *files: str) -> tuple[ServiceUnit, list[Problem]]:
    return build_service(parse_unit_name(name), texts(name, *files))


def socket(name: str, *files: str) -> tuple[SocketUnit, list[Problem]]:
    return build_socket(parse_unit_name(name), texts(name, *files))


def errors_of(name: str, *files: str) -> list[str]:
    build = build_socket if name.endswith(".socket") else build_service
    with pytest.raises(ConfigError) as e:
        build(parse_unit_name(name), texts(name, *files))
    return [str(p) for p in e.value.problems if p.is_error]


# --- the classic examples ----------------------------------------------------------------------


def test_plain_dynamic_user_service_gets_systemds_implied_sandbox() -> None:
    unit, warnings = service(
        "dynamic-user-test.service", "[Service]\nExecStart=/usr/bin/sleep 4711\nDynamicUser=yes\n"
    )
    assert warnings == []
    assert unit.exec_start == (ExecCommand("/usr/bin/sleep", ("/usr/bin/sleep", "4711")),)
    assert unit.dynamic_user
    assert unit.protect_system is v.ProtectSystem.STRICT
    assert unit.protect_home is v.ProtectHome.READ_ONLY
    assert unit.private_tmp
    assert unit.remove_ipc
    assert unit.no_new_privileges
    assert unit.restrict_suid_sgid
    # Nothing else changes: systemd's defaults.
    assert unit.type is v.ServiceType.SIMPLE
    assert unit.timeout_stop_sec == 90_000_000
    assert unit.tasks_max == v.Percent(1500)
    assert unit.standard_output == v.IOSpec("journal")


def test_exec_arguments_may_hold_newlines_but_not_the_program_or_nul() -> None:
    unit, _ = service("x.service", '[Service]\nExecStart=/bin/sh -c "echo a\\necho b"\n')
    assert unit.exec_start[0].argv == ("/bin/sh", "-c", "echo a\necho b")
    assert service("x.service", render_service(unit))[0] == unit
    assert errors_of("x.service", '[Service]\nExecStart="/bin/s\\th"\n') == [
        "x.service:2: ExecStart='\"/bin/s\\\\th\"': must not contain control characters"
    ]
    assert errors_of("x.service", '[Service]\nExecStart=/bin/echo "a\\x00"\n')[0].endswith(
        "invalid escape '\\x00'"
    )


def test_waldo_socket_pairs_with_a_template_per_connection() -> None:
    sock, _ = socket("waldo.socket", "[Socket]\nListenStream=2048\nAccept=yes\n")
    assert sock.listen == (Listen(v.SocketKind.STREAM, v.InetListen(None, 2048, None)),)
    assert sock.activates.name == "waldo@.service"
    assert sock.fd_name == "waldo.socket"
    # Accept=yes raises systemd's rate-limit defaults.
    assert (sock.poll_limit_burst, sock.trigger_limit_burst) == (150, 200)
    handler, _ = service(
        "waldo@0-1.service", "[Service]\nExecStart=-/usr/bin/myservicebinary\nDynamicUser=yes\n"
    )
    assert handler.exec_start == (
        ExecCommand("/usr/bin/myservicebinary", ("/usr/bin/myservicebinary",), ignore_failure=True),
    )


def test_template_state_directory_resolves_per_instance() -> None:
    unit, _ = service(
        "foobar@customerxyz.service",
        "[Service]\nExecStart=/usr/bin/foobar %i\nDynamicUser=yes\nStateDirectory=foobar/%i\n",
    )
    assert unit.state_directory == ("foobar/customerxyz",)
    assert unit.directory_environment == {"STATE_DIRECTORY": "/var/lib/foobar/customerxyz"}
    assert unit.exec_start[0].argv == ("/usr/bin/foobar", "customerxyz")


def test_socket_pairing_follows_systemd() -> None:
    plain, _ = socket("foo.socket", "[Socket]\nListenStream=1\n")
    assert plain.activates.name == "foo.service"
    instance, _ = socket("foo@bar.socket", "[Socket]\nListenStream=/run/foo/%i.sock\n")
    assert instance.activates.name == "foo@bar.service"
    assert instance.listen[0].address == v.UnixListen("/run/foo/bar.sock")
    other, _ = socket("foo.socket", "[Socket]\nListenStream=1\nService=bar.service\n")
    assert other.activates.name == "bar.service"
    # A customer's socket runs the customer's instance for every connection (activator's rule).
    customer, _ = socket("foo@bar.socket", "[Socket]\nListenStream=1\nAccept=yes\n")
    assert customer.activates.name == "foo@bar.service"


# --- list and scalar semantics, drop-ins -------------------------------------------------------


def test_lists_accumulate_and_an_empty_assignment_resets() -> None:
    unit, _ = service(
        "a.service",
        "[Service]\nExecStart=/bin/a\nEnvironment=A=1 B=2\nReadOnlyPaths=/x\n",
        '[Service]\nEnvironment=\nEnvironment=C=3 "D=with space"\nReadOnlyPaths=-/y\n',
    )
    assert unit.environment == (("C", "3"), ("D", "with space"))
    assert unit.read_only_paths == (v.PathEntry("/x", False), v.PathEntry("/y", True))


def test_dropin_overrides_scalars_and_can_replace_exec_start() -> None:
    unit, _ = service(
        "a.service",
        "[Service]\nExecStart=/bin/a\nUser=alice\nNice=5\nTasksMax=10\n",
        "[Service]\nExecStart=\nExecStart=/bin/b --flag\nUser=bob\nNice=\nTasksMax=\n",
    )
    assert unit.exec_start == (ExecCommand("/bin/b", ("/bin/b", "--flag")),)
    assert unit.user == "bob"
    # For these keys systemd 252 puts the default back on an empty value.
    assert unit.nice is None
    assert unit.tasks_max == v.Percent(1500)


@pytest.mark.parametrize("key", ["PrivateTmp", "DynamicUser", "ProtectSystem", "Type", "UMask"])
def test_an_empty_value_never_silently_weakens_a_setting(key: str) -> None:
    # systemd ignores "PrivateTmp=" in a drop-in and keeps the earlier value (and refuses the
    # unit for "DynamicUser="); activator refuses the line, so nothing is reset by surprise.
    found = errors_of(
        "a.service",
        f"[Service]\nExecStart=/bin/a\n{key}=yes\n".replace("Type=yes", "Type=simple")
        .replace("UMask=yes", "UMask=0077")
        .replace("ProtectSystem=yes", "ProtectSystem=strict"),
        f"[Service]\n{key}=\n",
    )
    assert found == [
        f"a.service.d/1.conf:2: {key}='': must not be empty (systemd would ignore the line and "
        "keep an earlier value; remove the line, or give the value)"
    ]


def test_empty_description_is_a_value() -> None:
    unit, _ = service("a.service", "[Unit]\nDescription=x\nDescription=\n[Service]\nExecStart=/a\n")
    assert unit.description == ""


def test_old_directive_names_still_work_with_a_warning() -> None:
    unit, warnings = service(
        "a.service",
        "[Service]\nExecStart=/a\nReadOnlyDirectories=/srv\nMemoryLimit=1M\n",
    )
    assert unit.read_only_paths == (v.PathEntry("/srv", False),)
    assert unit.memory_max == 1024 * 1024
    assert [str(w) for w in warnings] == [
        "a.service:3: ReadOnlyDirectories='/srv': ReadOnlyDirectories= is deprecated, please use "
        "ReadOnlyPaths= instead",
        "a.service:4: MemoryLimit='1M': MemoryLimit= is deprecated, please use MemoryMax= instead",
    ]


def test_timeout_stop_zero_means_no_timeout_as_in_systemd() -> None:
    unit, _ = service("a.service", "[Service]\nExecStart=/a\nTimeoutStopSec=0\n")
    assert unit.timeout_stop_sec is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ExecStart=--/bin/true", "must be"),
        ("ExecStart=@@/bin/true x", "must be"),
        ("ExecStart=/bin/", "program path names a directory (got '/bin/')"),
        ("ExecStart=..", "program must be an absolute path or a file name (got '..')"),
        ("ReadWritePaths=\\x2fsrv", "backslash escapes are not decoded in this directive"),
        ("TemporaryFileSystem=/a\\x20b", "backslash escapes are not decoded in this directive"),
        ('SupplementaryGroups="adm"', "(got '\"adm\"')"),
        ("NoExecPaths=/", "NoExecPaths= restricts the process"),
        ("StateDirectory=a\\xffb", "must be valid UTF-8"),
        ("Environment=A=\\xff", "must be valid UTF-8"),
        ("ExecStart=/bin/echo \\xff", "must be valid UTF-8"),
        ("LimitMEMLOCK=1M", "LimitMEMLOCK= restricts the process"),
    ],
)
def test_values_systemd_reads_differently_are_refused(line: str, reason: str) -> None:
    found = errors_of(
        "a.service",
        f"[Service]\nExecStart=/bin/a\n{line}\n".replace(
            "ExecStart=/bin/a\nExecStart=", "ExecStart="
        ),
    )
    assert len(found) == 1, found
    assert reason in found[0]


def test_later_environment_assignments_win() -> None:
    unit, _ = service("a.service", "[Service]\nExecStart=/bin/a\nEnvironment=A=1 B=2 A=3\n")
    assert unit.environment == (("A", "3"), ("B", "2"))


def test_exec_prefixes_and_quoting() -> None:
    unit, _ = service(
        "a.service",
        "[Service]\nType=oneshot\n"
        "ExecStart=-:@/bin/sh sh -c 'echo \"$X\"; exit 1'\n"
        'ExecStart=echo a\\x20b "%%i"\n',
    )
    assert unit.exec_start == (
        ExecCommand("/bin/sh", ("sh", "-c", 'echo "$X"; exit 1'), True, False),
        ExecCommand("echo", ("echo", "a b", "%i")),
    )


def test_specifiers_expand_per_word_so_instances_cannot_add_arguments() -> None:
    # "a\x20b" escapes a space; as an instance it unescapes to one word, never two.
    unit, _ = service("t@a\\x20b.service", "[Service]\nExecStart=/bin/echo %I\n")
    assert unit.exec_start[0].argv == ("/bin/echo", "a b")


def test_stdio_follows_service_fix_stdio() -> None:
    inetd, _ = service("a.service", "[Service]\nExecStart=/bin/a\nStandardInput=socket\n")
    assert (inetd.standard_output.kind, inetd.standard_error.kind) == ("inherit", "inherit")
    plain, _ = service("a.service", "[Service]\nExecStart=/bin/a\nStandardOutput=inherit\n")
    assert (plain.standard_output.kind, plain.standard_error.kind) == ("journal", "inherit")


# --- errors and warnings -----------------------------------------------------------------------


def test_invalid_sandbox_value_is_an_error_with_file_line_key_and_value() -> None:
    assert errors_of(
        "a.service", "[Service]\nExecStart=/bin/a\nProtectSystem=sometimes\nPrivateTmp=maybe\n"
    ) == [
        "a.service:3: ProtectSystem='sometimes': must be one of 'no', 'yes', 'full', 'strict' "
        "(got 'sometimes')",
        "a.service:4: PrivateTmp='maybe': must be a boolean like 'yes' or 'no' (got 'maybe')",
    ]


def test_every_error_is_reported_not_just_the_first() -> None:
    found = errors_of(
        "x.socket",
        "[Socket]\nListenStream=99999\nListenStream=relative/path\nMaxConnections=0\n"
        "ListenDatagram=@ok\n"
        "Backlog=-1\nSocketMode=999\n",
    )
    assert [line.split(":", 2)[1] for line in found] == ["2", "3", "4", "6", "7"]
    assert found[0].startswith("x.socket:2: ListenStream='99999': ")
    assert "65535" in found[0]


def test_socket_without_listen_and_service_without_exec_are_refused() -> None:
    assert errors_of("a.socket", "[Socket]\nAccept=yes\n") == [
        "a.socket: Unit has no Listen setting (ListenStream=, ListenDatagram=, ...). Refusing."
    ]
    assert errors_of("a.service", "[Service]\nUser=x\n") == [
        "a.service: Service has no ExecStart= setting. Refusing."
    ]


def test_more_than_one_exec_start_needs_oneshot() -> None:
    assert errors_of("a.service", "[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n") == [
        "a.service:3: ExecStart='/bin/b': Service has more than one ExecStart= setting, which is "
        "only allowed for Type=oneshot services. Refusing."
    ]


def test_accept_yes_refuses_datagrams_and_service() -> None:
    assert errors_of(
        "a.socket", "[Socket]\nAccept=yes\nListenDatagram=53\nService=b.service\n"
    ) == [
        "a.socket:3: ListenDatagram='53': Unit configured for accepting sockets, but sockets are "
        "non-accepting (datagram). Refusing.",
        "a.socket:4: Service='b.service': Service= is only allowed with Accept=no",
    ]


def test_address_filters_need_accept_yes() -> None:
    assert errors_of(
        "a.socket", "[Socket]\nListenStream=80\nIPAddressDeny=any\nIPAddressAllow=localhost\n"
    ) == [
        "a.socket:3: IPAddressDeny='any': IPAddressAllow=/IPAddressDeny= need Accept=yes in "
        "activator (it checks the peer when it accepts; with Accept=no the service accepts by "
        "itself). Refusing.",
        "a.socket:4: IPAddressAllow='localhost': IPAddressAllow=/IPAddressDeny= need Accept=yes "
        "in activator (it checks the peer when it accepts; with Accept=no the service accepts by "
        "itself). Refusing.",
    ]
    unit, _ = socket("a.socket", "[Socket]\nListenStream=80\nAccept=yes\nIPAddressDeny=any\n")
    assert len(unit.ip_address_deny) == 2


def test_privileged_exec_prefixes_are_refused() -> None:
    found = errors_of("a.service", "[Service]\nExecStart=+/bin/a\n")
    assert found[0].startswith("a.service:2: ExecStart='+/bin/a': prefix '+' runs the command")


def test_unimplemented_sandboxing_directives_are_errors() -> None:
    found = errors_of(
        "a.service", "[Service]\nExecStart=/bin/a\nSystemCallFilter=@system-service\n"
    )
    assert found == [
        "a.service:3: SystemCallFilter='@system-service': SystemCallFilter= restricts the process "
        "(sandboxing, identity or a resource limit) and activator does not implement it; "
        "refusing to run the unit with less isolation than it asks for"
    ]


def test_unknown_keys_are_warnings_in_systemds_words() -> None:
    _, warnings = service(
        "a.service", "[Unit]\nAfter=network.target\n[Service]\nExecStart=/a\nX-Mine=1\n"
    )
    assert [(str(w), w.severity) for w in warnings] == [
        ("a.service:2: Unknown key name 'After' in section 'Unit', ignoring.", Severity.WARNING)
    ]


def test_dynamic_user_overrides_a_weaker_sandbox_with_a_warning() -> None:
    unit, warnings = service(
        "a.service", "[Service]\nExecStart=/a\nDynamicUser=yes\nPrivateTmp=no\nProtectHome=tmpfs\n"
    )
    assert unit.private_tmp
    assert unit.protect_home is v.ProtectHome.TMPFS  # stricter than read-only: kept
    assert [str(w) for w in warnings] == [
        "a.service:4: PrivateTmp='no': overridden: DynamicUser=yes implies PrivateTmp=yes"
    ]


def test_dynamic_user_needs_a_name() -> None:
    assert errors_of("a.service", "[Service]\nExecStart=/a\nDynamicUser=yes\nUser=1000\n") == [
        "a.service:4: User='1000': DynamicUser=yes needs a user name, not a numeric UID"
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("StateDirectory=../etc", "must not contain '..'"),
        ("StateDirectory=/etc", "must be relative"),
        ("ExecStart=/bin/a %u", "unknown specifier '%u'"),
        ("User=%i", "(got 'x.y')"),  # the instance "x.y" is no valid user name
    ],
)
def test_values_are_checked_after_specifiers(line: str, reason: str) -> None:
    found = errors_of("t@x.y.service", f"[Service]\nExecStart=/a\n{line}\n")
    assert len(found) == 1
    assert reason in found[0]


def test_instance_that_unescapes_to_a_path_escape_is_refused() -> None:
    found = errors_of("t@..-x.service", "[Service]\nExecStart=/a\nStateDirectory=%I\n")
    assert found[0].startswith("t@..-x.service:3: StateDirectory='%I': ")


# --- properties --------------------------------------------------------------------------------


@given(services())
def test_rendered_service_parses_back_to_the_same_model(unit: ServiceUnit) -> None:
    text = render_service(unit)
    rebuilt, warnings = build_service(
        unit.name, [parse_unit_text(text, "r.service", unit_type="service")]
    )
    assert rebuilt == unit, text
    assert warnings == []


@given(sockets())
def test_rendered_socket_parses_back_to_the_same_model(unit: SocketUnit) -> None:
    text = render_socket(unit)
    rebuilt, warnings = build_socket(
        unit.name, [parse_unit_text(text, "r.socket", unit_type="socket")]
    )
    assert rebuilt == unit, text
    assert warnings == []


@given(st.binary(max_size=400), st.sampled_from(["a.service", "a@b.socket", "c@d.service"]))
def test_random_bytes_give_a_unit_or_config_error_and_nothing_else(data: bytes, name: str) -> None:
    from activator.catalog import build_catalog
    from activator.units import UnitDirectory

    directory = UnitDirectory("/u", frozenset({name}))
    catalog = build_catalog([directory], {f"/u/{name}": data})
    assert all(isinstance(p, Problem) for p in catalog.problems)
    assert all(p.path.startswith("/u/") for p in catalog.problems)
    assert (name in catalog.units or name in catalog.templates) != (name in catalog.failed)


@st.composite
def mutated_units(draw: st.DrawFn) -> tuple[str, str]:
    """A rendered valid unit with random edits: lines dropped, duplicated, cut or replaced."""
    if draw(st.booleans()):
        unit_text, name = render_service(draw(services())), "m@x.service"
    else:
        unit_text, name = render_socket(draw(sockets())), "m@x.socket"
    lines = unit_text.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "cut", "replace", "insert"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif action == "replace":
            key = lines[i].partition("=")[0]
            lines[i] = f"{key}={draw(st.text(max_size=20))}"
        else:
            lines.insert(i, draw(st.text(max_size=30)))
        if not lines:
            lines = [""]
    return "\n".join(lines), name


@given(mutated_units())
def test_mutated_units_build_or_fail_with_config_errors_only(case: tuple[str, str]) -> None:
    text, name = case
    unit_name = parse_unit_name(name)
    build = build_service if unit_name.suffix == "service" else build_socket
    try:
        build(unit_name, [parse_unit_text(text, name, unit_type=unit_name.suffix)])
    except ConfigError as e:
        for problem in e.problems:
            assert problem.path == name
            assert problem.reason


def test_every_directive_in_scope_is_read() -> None:
    from activator.model import SERVICE_DIRECTIVES, SOCKET_DIRECTIVES

    socket_keys = [
        "ListenStream",
        "ListenDatagram",
        "ListenSequentialPacket",
        "Accept",
        "Service",
        "FileDescriptorName",
        "MaxConnections",
        "MaxConnectionsPerSource",
        "Backlog",
        "BindIPv6Only",
        "ReusePort",
        "FreeBind",
        "KeepAlive",
        "NoDelay",
        "DeferAcceptSec",
        "SocketUser",
        "SocketGroup",
        "SocketMode",
        "DirectoryMode",
        "RemoveOnStop",
        "PollLimitIntervalSec",
        "PollLimitBurst",
        "TriggerLimitIntervalSec",
        "TriggerLimitBurst",
        "IPAddressAllow",
        "IPAddressDeny",
    ]
    service_keys = [
        "Type",
        "ExecStart",
        "Environment",
        "EnvironmentFile",
        "UnsetEnvironment",
        "WorkingDirectory",
        "StandardInput",
        "StandardOutput",
        "StandardError",
        "DynamicUser",
        "User",
        "Group",
        "SupplementaryGroups",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateNetwork",
        "ProtectSystem",
        "ProtectHome",
        "RemoveIPC",
        "NoNewPrivileges",
        "RestrictSUIDSGID",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "BindPaths",
        "BindReadOnlyPaths",
        "TemporaryFileSystem",
        "RuntimeDirectory",
        "StateDirectory",
        "CacheDirectory",
        "LogsDirectory",
        "RuntimeDirectoryMode",
        "StateDirectoryMode",
        "CacheDirectoryMode",
        "LogsDirectoryMode",
        "RuntimeDirectoryPreserve",
        "UMask",
        "Nice",
        "LimitNOFILE",
        "LimitNPROC",
        "LimitAS",
        "LimitCPU",
        "LimitFSIZE",
        "LimitCORE",
        "LimitDATA",
        "LimitSTACK",
        "MemoryMax",
        "TasksMax",
        "CPUQuota",
        "RuntimeMaxSec",
        "TimeoutStopSec",
        "KillSignal",
        "Restart",
        "RestartSec",
    ]
    assert {("Socket", k) for k in socket_keys} <= SOCKET_DIRECTIVES.keys()
    assert {("Service", k) for k in service_keys} <= SERVICE_DIRECTIVES.keys()
    for table in (SOCKET_DIRECTIVES, SERVICE_DIRECTIVES):
        assert {("Unit", "Description"), ("Install", "WantedBy")} <= table.keys()


# --- directories of instances (issue 9: per-connection instances) ---------------------------


CONNECTION = "foo@1-127.0.0.1:7007-127.0.0.1:41234.service"


def test_a_connections_instance_name_with_colons_makes_its_directory_names() -> None:
    """systemd splits ``SOURCE[:DESTINATION]`` before it resolves specifiers: the colons of an
    Accept=yes connection's instance name are part of ``name/%i``, not a symlink form."""
    text = "[Service]\nExecStart=/bin/true\nRuntimeDirectory=name/%i name-%i\nStateDirectory=%N\n"
    unit, _ = service(CONNECTION, text)
    instance = "1-127.0.0.1:7007-127.0.0.1:41234"
    assert unit.runtime_directory == (f"name/{instance}", f"name-{instance}")
    assert unit.state_directory == (f"foo@{instance}",)
    # A colon written in the value is still systemd 250's symlink form, refused.
    assert errors_of(CONNECTION, "[Service]\nExecStart=/bin/true\nCacheDirectory=a:%i\n") == [
        f"{CONNECTION}:3: CacheDirectory='a:%i': symlink form 'a:%i' is not supported"
    ]


@pytest.mark.parametrize(
    "key", ["RuntimeDirectory", "StateDirectory", "CacheDirectory", "LogsDirectory"]
)
def test_an_instance_whose_unescaped_name_holds_a_slash_is_refused_in_directories(key: str) -> None:
    """``%I`` of ``u@a-b`` is ``a/b``: ``u/%I`` would put u@a-b's directory inside u@a's."""
    assert errors_of("u@a-b.service", f"[Service]\nExecStart=/bin/true\n{key}=u/%I\n") == [
        f"u@a-b.service:3: {key}='u/%I': %I gives 'a/b': an instance's directory may not nest in "
        "another's; use %i"
    ]
    # %i, an escaped dash, and a literal "%I" ("%%I") are fine.
    unit, _ = service("u@a-b.service", f"[Service]\nExecStart=/bin/true\n{key}=u/%i u/%%I\n")
    unit_escaped, _ = service("u@a\\x2db.service", f"[Service]\nExecStart=/bin/true\n{key}=u/%I\n")
    field = {"RuntimeDirectory": "runtime", "StateDirectory": "state"}.get(key, key[:-9].lower())
    assert getattr(unit, f"{field}_directory") == ("u/a-b", "u/%I")
    assert getattr(unit_escaped, f"{field}_directory") == ("u/a-b",)
    # Every connection's instance (N-LOCAL-REMOTE) unescapes with slashes: %I is refused there.
    assert (
        "%I gives '1/127.0.0.1:7007/127.0.0.1:41234'"
        in errors_of(CONNECTION, f"[Service]\nExecStart=/bin/true\n{key}=x/%I\n")[0]
    )
