"""The spawn plan: environment, argv expansion, descriptors, identity and the mount order."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from activator import values as v
from activator.model import ExecCommand, ServiceUnit, build_service
from activator.plan import (
    DEFAULT_PATH,
    Descriptors,
    HostFacts,
    Identity,
    Peer,
    PlanError,
    build_plan,
    public_directories,
    replace_env_argv,
    stdio_files,
)
from activator.sandbox import (
    Mount,
    MountKind,
    RLimitSetting,
    SpawnPlan,
    plan_from_wire,
    plan_to_wire,
)
from activator.units import parse_unit_name, parse_unit_text
from tests.strategies import services

INVOCATION = "0123456789abcdef0123456789abcdef"
#: Every sandbox covers the host's cgroup tree with an empty, sealed tmpfs.
CGROUPS = "/sys/fs/cgroup"
DYNAMIC = Identity(61234, 61234, "run-u1", "run-u1")
ROOT = Identity(0, 0, "root", "root", home="/root", shell="/bin/sh", dynamic=False)
ALICE = Identity(1000, 1000, "alice", "alice", home="/home/alice", shell="/bin/bash", dynamic=False)
TRUE = ExecCommand("/bin/true", ("true",))
RO, RW, TMPFS, BIND = MountKind.READ_ONLY, MountKind.READ_WRITE, MountKind.TMPFS, MountKind.BIND


def unit(*lines: str, name: str = "test.service") -> ServiceUnit:
    text = "\n".join(["[Service]", *lines]) + "\n"
    if not any(line.startswith("ExecStart=") for line in lines):
        text += "ExecStart=/bin/true\n"
    service, _ = build_service(
        parse_unit_name(name), [parse_unit_text(text, name, unit_type="service")]
    )
    return service


def plan(service: ServiceUnit, identity: Identity = DYNAMIC, **kwargs: object) -> SpawnPlan:
    return build_plan(service, identity, invocation=INVOCATION, **kwargs)  # type: ignore[arg-type]


def targets(p: SpawnPlan, kind: MountKind | None = None) -> list[str]:
    return [m.target for m in p.mounts if kind is None or m.kind is kind]


# ---------------------------------------------------------------------------------------------
# A model of what the spawner does with a mount list: which mount a path ends up on, and its state.


@attrs.define
class _Sim:
    target: str
    ro: bool
    gone: bool = False
    hidden: bool = False


def _under(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent + "/")


def _covering(stack: list[_Sim], path: str) -> _Sim:
    visible = [
        (len(m.target), i, m)
        for i, m in enumerate(stack)
        if not m.hidden and _under(path, m.target)
    ]
    return max(visible, key=lambda item: (item[0], item[1]))[2]


def simulate(mounts: tuple[Mount, ...], path: str) -> str:
    """``rw``, ``ro`` or ``gone`` for ``path`` after ``mounts``, the host being one writable
    file system. READ_ONLY and READ_WRITE of a path that is not a mount point bind it onto itself
    first (the spawner's contract)."""
    stack = [_Sim("/", ro=False)]
    for m in mounts:
        if m.kind in (MountKind.MKDIR, MountKind.SYMLINK):
            continue
        if m.kind in (RO, RW):
            top = [s for s in stack if not s.hidden and s.target == m.target]
            if not top:
                cover = _covering(stack, m.target)
                stack.append(_Sim(m.target, ro=cover.ro, gone=cover.gone))
                top = [stack[-1]]
            top[-1].ro = m.kind is RO
            if m.recursive:
                for s in stack:
                    if not s.hidden and s.target != m.target and _under(s.target, m.target):
                        s.ro = m.kind is RO
            continue
        for s in stack:
            if s.target != m.target and _under(s.target, m.target):
                s.hidden = True
        gone = m.kind is MountKind.INACCESSIBLE
        stack.append(_Sim(m.target, ro=gone or m.kind is MountKind.BIND_READ_ONLY, gone=gone))
    cover = _covering(stack, path)
    return "gone" if cover.gone else "ro" if cover.ro else "rw"


# ---------------------------------------------------------------------------------------------
# Properties over every valid unit


@st.composite
def invocations(draw: st.DrawFn) -> tuple[ServiceUnit, Identity, Descriptors]:
    """A unit, an identity that fits it, and descriptors that satisfy its standard streams."""
    service = draw(services())
    if service.dynamic_user:
        identity = Identity(draw(st.integers(61184, 65519)), 0, "u", "u")
        identity = attrs.evolve(identity, gid=identity.uid)
    else:
        identity = draw(st.sampled_from([ROOT, ALICE]))
    kinds = [
        s.kind for s in (service.standard_input, service.standard_output, service.standard_error)
    ]
    n_sockets = 1 if "socket" in kinds else draw(st.integers(0, 3))
    names = draw(st.sampled_from([(), tuple(f"s{n}" for n in range(n_sockets))]))
    files = tuple((path, 10 + n) for n, (path, _) in enumerate(stdio_files(service)))
    terminal = any(kind.startswith("tty") for kind in kinds)
    descriptors = Descriptors(
        sockets=tuple(range(3, 3 + n_sockets)),
        socket_names=names,
        stdin=0 if terminal else None,
        log=draw(st.sampled_from([None, 2])),
        files=files,
        terminal=terminal,
    )
    return service, identity, descriptors


def writable_named(service: ServiceUnit) -> set[str]:
    """Paths the unit names as writable."""
    out = {e.path.rstrip("/") or "/" for e in service.read_write_paths}
    out |= {b.destination.rstrip("/") or "/" for b in service.bind_paths}
    out |= {t.path for t in service.temporary_file_system if "ro" not in t.options.split(",")}
    if service.private_tmp:
        out |= {"/tmp", "/var/tmp"}
    bases = {"state": "/var/lib/", "cache": "/var/cache/", "logs": "/var/log/"}
    if service.runtime_directory_preserve is not v.RuntimeDirectoryPreserve.NO:
        bases["runtime"] = "/run/"  # a preserved runtime directory outlives the UID: private
    for kind, paths in public_directories(service).items():
        for path in paths:
            if service.dynamic_user and kind in bases:  # the real directory, not the symlink
                path = bases[kind] + "private/" + path.removeprefix(bases[kind])
            out.add(path)
    return out


def read_only_named(service: ServiceUnit) -> tuple[set[str], set[str]]:
    """Paths the unit names read-only, and those it names inaccessible."""
    ro = {e.path.rstrip("/") or "/" for e in service.read_only_paths}
    ro |= {b.destination.rstrip("/") or "/" for b in service.bind_read_only_paths}
    ro |= {t.path for t in service.temporary_file_system if "ro" in t.options.split(",")}
    gone = {e.path.rstrip("/") or "/" for e in service.inaccessible_paths}
    homes = {"/home", "/root", "/run/user"}
    if service.protect_home in (v.ProtectHome.READ_ONLY, v.ProtectHome.TMPFS):
        ro |= homes
    if service.protect_home is v.ProtectHome.YES:
        gone |= homes
    ro |= {
        v.ProtectSystem.NO: set(),
        v.ProtectSystem.YES: {"/usr", "/boot", "/efi"},
        v.ProtectSystem.FULL: {"/usr", "/boot", "/efi", "/etc"},
        v.ProtectSystem.STRICT: {"/"},
    }[service.protect_system]
    if service.private_devices:
        ro.add("/dev")
    return ro, gone


@given(invocations())
def test_every_plan(case: tuple[ServiceUnit, Identity, Descriptors]) -> None:
    """One test for every property, so that the costly units are generated once."""
    service, identity, descriptors = case
    if len(service.exec_start) > 1:
        with pytest.raises(PlanError, match="one command per invocation"):
            plan(service, identity, descriptors=descriptors)
        service = attrs.evolve(service, exec_start=service.exec_start[:1])
    command = service.exec_start[0]
    if command.expand_environment and not replace_env_argv(command.argv, {}):
        with pytest.raises(PlanError, match="expands to no arguments"):
            plan(service, identity, descriptors=descriptors, extra_env=[])
        service = attrs.evolve(service, exec_start=(TRUE,))
    p = plan(service, identity, descriptors=descriptors)
    check_well_formed(p, service, identity)
    check_writable_and_read_only(p, service)
    strict = attrs.evolve(service, protect_system=v.ProtectSystem.STRICT)
    check_strict(plan(strict, identity, descriptors=descriptors), strict)


def check_well_formed(p: SpawnPlan, service: ServiceUnit, identity: Identity) -> None:
    assert plan_from_wire(plan_to_wire(p)) == p
    names = [name for name, _ in p.env]
    assert len(names) == len(set(names))
    assert names[0] == "PATH" or "PATH" in service.unset_environment
    fds = [target for target, _ in p.fd_map]
    assert len(fds) == len(set(fds))
    assert (p.uid, p.gid, p.groups) == (identity.uid, identity.gid, identity.groups)
    assert p.new_pid
    assert p.new_mount
    assert p.new_ipc
    assert p.new_net == service.private_network
    assert p.no_new_privileges == (service.no_new_privileges or identity.uid != 0)
    assert not p.keep_capabilities or identity.uid == 0
    assert all(m.nosuid for m in p.mounts if m.kind is not MountKind.MKDIR)
    for m in p.mounts:  # a mount point is made only right before its mount
        if m.kind is MountKind.MKDIR:
            after = p.mounts[p.mounts.index(m) + 1]
            assert after.target == m.target
            assert after.kind is not MountKind.MKDIR


def check_writable_and_read_only(p: SpawnPlan, service: ServiceUnit) -> None:
    ro, gone = read_only_named(service)
    for path in writable_named(service):
        if path in ro | gone or any(_under(path, g) and path != g for g in gone):
            continue
        if service.protect_system is v.ProtectSystem.STRICT:
            root = p.mounts.index(Mount(RO, "/", nodev=False))
            assert [i for i, m in enumerate(p.mounts) if m.target == path] > [root]
        assert simulate(p.mounts, path) == "rw", path
    for path in ro:
        if not any(_under(path, g) for g in gone):
            assert simulate(p.mounts, path) == "ro", path
    for path in gone:
        assert simulate(p.mounts, path) == "gone", path


def check_strict(p: SpawnPlan, service: ServiceUnit) -> None:
    """Under ProtectSystem=strict nothing is writable but what the unit names and the API
    file systems."""
    writable = writable_named(service) | {"/proc", "/dev/shm", "/dev/mqueue"}
    if service.protect_home is v.ProtectHome.NO:
        writable |= {"/home", "/root", "/run/user"}
    for probe in ("/etc", "/usr/bin", "/var/lib/other", "/var/lib/private", "/run", "/srv/x", "/"):
        if not any(_under(probe, w) for w in writable):
            assert simulate(p.mounts, probe) in ("ro", "gone"), probe


# ---------------------------------------------------------------------------------------------
# Mount lists


def test_dynamic_user_state_directory_gives_exactly_this_sandbox() -> None:
    # Issue 4: activator run --pipe -p DynamicUser=yes -p StateDirectory=wuff sh -c ...
    service = unit("DynamicUser=yes", "StateDirectory=wuff")
    p = plan(service, descriptors=Descriptors(stdin=0, stdout=1, stderr=2))
    private = "/var/lib/private"
    assert p.mounts == (
        Mount(RO, "/", nodev=False),
        Mount(RW, "/dev", recursive=False, nodev=False),
        Mount(MountKind.MQUEUE, "/dev/mqueue", optional=True, noexec=True),
        Mount(TMPFS, "/dev/shm", options="mode=1777"),
        Mount(MountKind.PROC, "/proc", noexec=True),
        Mount(RW, "/sys", recursive=False, nodev=False),
        Mount(TMPFS, CGROUPS, options="mode=0755", optional=True, noexec=True),
        Mount(TMPFS, "/tmp", options="mode=1777"),
        Mount(TMPFS, private, options="mode=0755", noexec=True),
        Mount(MountKind.MKDIR, f"{private}/wuff", options="0755"),
        Mount(BIND, f"{private}/wuff", source=f"{private}/wuff"),
        Mount(TMPFS, "/var/tmp", options="mode=1777"),
        Mount(RO, CGROUPS, optional=True, recursive=False, nodev=False),
        Mount(RO, private, recursive=False, nodev=False),
    )
    assert ("STATE_DIRECTORY", "/var/lib/wuff") in p.env
    assert p.fd_map == ((0, 0), (1, 1), (2, 2))
    assert p.no_new_privileges
    assert not p.keep_capabilities


def test_nested_and_several_directories_per_directive() -> None:
    service = unit(
        "DynamicUser=yes",
        "StateDirectory=foobar/customerxyz other",
        "CacheDirectory=foobar",
        "LogsDirectory=foobar foobar/sub",
        "RuntimeDirectory=run/x",
    )
    p = plan(service)
    steps = [(m.kind, m.target) for m in p.mounts if m.target.startswith(("/var/", "/run"))]
    assert steps == [
        (BIND, "/run/run/x"),
        (TMPFS, "/var/cache/private"),
        (MountKind.MKDIR, "/var/cache/private/foobar"),
        (BIND, "/var/cache/private/foobar"),
        (TMPFS, "/var/lib/private"),
        (MountKind.MKDIR, "/var/lib/private/foobar/customerxyz"),
        (BIND, "/var/lib/private/foobar/customerxyz"),
        (MountKind.MKDIR, "/var/lib/private/other"),
        (BIND, "/var/lib/private/other"),
        (TMPFS, "/var/log/private"),
        (MountKind.MKDIR, "/var/log/private/foobar"),
        (BIND, "/var/log/private/foobar"),
        # foobar/sub's mount point is in the host's foobar, bound just before: no MKDIR.
        (BIND, "/var/log/private/foobar/sub"),
        (TMPFS, "/var/tmp"),
        (RO, "/var/cache/private"),
        (RO, "/var/lib/private"),
        (RO, "/var/log/private"),
    ]
    env = dict(p.env)
    assert env["STATE_DIRECTORY"] == "/var/lib/foobar/customerxyz:/var/lib/other"
    assert env["RUNTIME_DIRECTORY"] == "/run/run/x"
    assert simulate(p.mounts, "/var/lib/private/foobar") == "ro"
    assert simulate(p.mounts, "/var/lib/private/foobar/customerxyz/f") == "rw"


def test_static_user_directories_are_bound_in_place() -> None:
    service = unit(
        "User=alice", "ProtectSystem=strict", "StateDirectory=app", "ReadWritePaths=/srv/data"
    )
    p = plan(service, ALICE)
    assert Mount(BIND, "/var/lib/app", source="/var/lib/app") in p.mounts
    assert Mount(RW, "/srv/data", nodev=False) in p.mounts
    assert not any("private" in m.target for m in p.mounts)
    for path in ("/var/lib/app", "/srv/data/x", "/home/alice"):  # ProtectHome=no: homes writable
        assert simulate(p.mounts, path) == "rw"
    assert simulate(p.mounts, "/var/lib/other") == "ro"
    assert p.no_new_privileges  # every non-root handler
    assert dict(p.env)["HOME"] == "/home/alice"


def test_private_tmp() -> None:
    assert targets(plan(unit()), TMPFS) == ["/dev/shm", CGROUPS]
    p = plan(unit("PrivateTmp=yes"), ROOT)
    assert [m for m in p.mounts if m.target in ("/tmp", "/var/tmp")] == [
        Mount(TMPFS, "/tmp", options="mode=1777"),
        Mount(TMPFS, "/var/tmp", options="mode=1777"),
    ]
    assert p.keep_capabilities
    assert not p.no_new_privileges


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("no", []),
        ("yes", [(MountKind.INACCESSIBLE, p, "") for p in ("/home", "/root", "/run/user")]),
        ("read-only", [(RO, p, "") for p in ("/home", "/root", "/run/user")]),
        (
            "tmpfs",
            [
                (TMPFS, "/home", "mode=0755"),
                (TMPFS, "/root", "mode=0700"),
                (TMPFS, "/run/user", "mode=0755"),
            ]
            + [(RO, p, "") for p in ("/home", "/root", "/run/user")],
        ),
    ],
)
def test_protect_home(level: str, expected: list[tuple[MountKind, str, str]]) -> None:
    p = plan(unit(f"ProtectHome={level}"), ALICE)
    homes = [m for m in p.mounts if m.target in ("/home", "/root", "/run/user")]
    assert [(m.kind, m.target, m.options) for m in homes] == expected
    assert all(m.optional for m in homes if m.kind is not RO or level != "tmpfs")
    if level == "tmpfs":  # sealed after everything inside, itself only
        assert p.mounts[-4:-1] == tuple(
            Mount(RO, h, optional=True, recursive=False, nodev=False)
            for h in ("/home", "/root", "/run/user")
        )
    state = {"no": "rw", "yes": "gone", "read-only": "ro", "tmpfs": "ro"}[level]
    assert simulate(p.mounts, "/home/alice") == state


def test_protect_home_under_dynamic_user_is_read_only_and_redundant_remounts_go() -> None:
    p = plan(unit("DynamicUser=yes"))
    assert "/home" not in targets(p)  # ProtectHome=read-only under a read-only /
    assert simulate(p.mounts, "/home/alice") == "ro"


def test_private_devices() -> None:
    p = plan(unit("PrivateDevices=yes"), ALICE)
    dev = [(m.kind, m.target) for m in p.mounts if m.target.startswith("/dev")]
    assert dev == [
        (MountKind.DEVICES, "/dev"),
        (MountKind.MKDIR, "/dev/mqueue"),
        (MountKind.MQUEUE, "/dev/mqueue"),
        (MountKind.MKDIR, "/dev/shm"),
        (TMPFS, "/dev/shm"),
        (RO, "/dev"),
    ]
    assert p.mounts[-2] == Mount(RO, "/dev", recursive=False, nodev=False)
    strict = plan(unit("PrivateDevices=yes", "ProtectSystem=strict"), ALICE)
    assert (RW, "/dev") not in [(m.kind, m.target) for m in strict.mounts]


def test_protect_system_levels() -> None:
    def ro(level: str) -> list[str]:
        found = targets(plan(unit(f"ProtectSystem={level}"), ROOT), RO)
        return [path for path in found if path != CGROUPS]

    assert ro("no") == []
    assert ro("yes") == ["/boot", "/efi", "/usr"]
    assert ro("full") == ["/boot", "/efi", "/etc", "/usr"]
    assert ro("strict") == ["/"]
    full = plan(unit("ProtectSystem=full"), ROOT)
    assert [m.optional for m in full.mounts if m.kind is RO and m.target != CGROUPS] == [
        True,
        True,
        False,
        False,
    ]


def test_path_directives() -> None:
    service = unit(
        "ProtectSystem=strict",
        "ReadWritePaths=/srv -/opt/maybe",
        "ReadOnlyPaths=/srv/conf /srv/",
        "InaccessiblePaths=-/srv/secret",
        "BindPaths=/data:/srv/data:norbind -/dev/fuse",
        "BindReadOnlyPaths=/etc/app:/srv/app",
        "TemporaryFileSystem=/var/empty:ro,size=1M,noexec /scratch:mode=0700",
        "BindPaths=/x:/scratch/in",
    )
    p = plan(service, ALICE)
    by_target: dict[str, Mount] = {}
    for m in p.mounts:
        if m.kind is not MountKind.MKDIR:
            by_target.setdefault(m.target, m)
    # /srv is named writable and read-only: read-only wins, as in systemd, and / is already.
    assert "/srv" not in by_target
    assert simulate(p.mounts, "/srv/f") == "ro"
    assert by_target["/opt/maybe"] == Mount(RW, "/opt/maybe", optional=True, nodev=False)
    assert by_target["/srv/secret"] == Mount(MountKind.INACCESSIBLE, "/srv/secret", optional=True)
    assert by_target["/srv/data"] == Mount(BIND, "/srv/data", source="/data", recursive=False)
    assert by_target["/dev/fuse"] == Mount(
        BIND, "/dev/fuse", source="/dev/fuse", optional=True, nodev=False
    )
    assert by_target["/srv/app"] == Mount(MountKind.BIND_READ_ONLY, "/srv/app", source="/etc/app")
    assert by_target["/var/empty"] == Mount(TMPFS, "/var/empty", options="size=1M", noexec=True)
    assert p.mounts[-1] == Mount(RO, "/var/empty", recursive=False, nodev=False)
    assert by_target["/scratch"] == Mount(TMPFS, "/scratch", options="mode=0700")
    index = p.mounts.index(by_target["/scratch/in"])
    assert p.mounts[index - 1] == Mount(MountKind.MKDIR, "/scratch/in", options="0755")
    assert simulate(p.mounts, "/srv/data/f") == "rw"
    assert simulate(p.mounts, "/srv/app/f") == "ro"
    assert simulate(p.mounts, "/srv/secret") == "gone"
    assert simulate(p.mounts, "/scratch/f") == "rw"


def test_parents_come_before_children() -> None:
    service = unit(
        "ReadOnlyPaths=/a/b/c /a", "ReadWritePaths=/a/b/c/d /a/b", "InaccessiblePaths=/a/b-c"
    )
    order = [m.target for m in plan(service, ROOT).mounts if m.target.startswith("/a")]
    assert order == ["/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/b-c"]


# ---------------------------------------------------------------------------------------------
# Command line


def test_replace_env_argv_as_systemd_test_env_util() -> None:
    # systemd 252's src/test/test-env-util.c, test_replace_env_argv.
    env = {"FOO": "BAR BAR", "BAR": "waldo"}
    line = [
        "FOO$FOO", "FOO$FOOFOO", "FOO${FOO}$FOO", "FOO${FOO}", "${FOO}", "$FOO", "$FOO$FOO",
        "${FOO}${BAR}", "${FOO", "FOO$$${FOO}", "$$FOO${FOO}", "${FOO:-${BAR}}",
        "${QUUX:-${FOO}}", "${FOO:+${BAR}}", "${QUUX:+${BAR}}", "${FOO:+|${BAR}|}}",
        "${FOO:+|${BAR}{|}",
    ]  # fmt: skip
    assert replace_env_argv(line, env) == (
        "FOO$FOO", "FOO$FOOFOO", "FOOBAR BAR$FOO", "FOOBAR BAR", "BAR BAR", "BAR", "BAR",
        "BAR BARwaldo", "${FOO", "FOO$BAR BAR", "$FOOBAR BAR", "${FOO:-waldo}",
        "${QUUX:-BAR BAR}", "${FOO:+waldo}", "${QUUX:+waldo}", "${FOO:+|waldo|}}",
        "${FOO:+|waldo{|}",
    )  # fmt: skip


def test_replace_env_argv_as_the_manual() -> None:
    # systemd.service(5), "Command lines" (values set directly: the manual's Environment= line
    # predates quotes inside words being removed).
    env = {"ONE": "'one'", "TWO": "'two two' too", "THREE": ""}
    assert replace_env_argv(["/bin/echo", "${ONE}", "${TWO}", "${THREE}"], env) == (
        "/bin/echo", "'one'", "'two two' too", "",
    )  # fmt: skip
    assert replace_env_argv(["/bin/echo", "$ONE", "$TWO", "$THREE"], env) == (
        "/bin/echo", "one", "two two", "too",
    )  # fmt: skip
    env = {"ONE": "one", "TWO": "two two"}
    assert replace_env_argv(["echo", "$ONE", "$TWO", "${TWO}"], env) == (
        "echo", "one", "two", "two", "two two",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["$UNSET"], ()),
        (["$"], ()),
        (["$HOME/x"], ()),  # the whole rest of the word is the name, as systemd's code reads it
        (["${UNSET}x"], ("x",)),
        (["a$$b", "$$"], ("a$b", "$")),
        (["$SPLIT"], ("a b", "c\\d", "e\nf", "x")),
    ],
)
def test_replace_env_argv_edges(words: list[str], expected: tuple[str, ...]) -> None:
    env = {"HOME": "/root", "SPLIT": "  'a b'  c\\\\d\te\\\n\"f\" 'x\\"}
    assert replace_env_argv(words, env) == expected


def test_argv_expands_with_the_final_environment_unless_colon() -> None:
    service = unit(
        "Environment=GREETING=hi 'LIST=a b'",
        "ExecStart=/bin/echo $GREETING ${USER} $LIST $$ ${INVOCATION_ID}",
        "StateDirectory=s",
        "DynamicUser=yes",
    )
    p = plan(service)
    assert p.path == "/bin/echo"
    assert p.argv == ("/bin/echo", "hi", "run-u1", "a", "b", "$", INVOCATION)
    literal = plan(unit("ExecStart=:/bin/echo $GREETING $$"))
    assert literal.argv == ("/bin/echo", "$GREETING", "$$")
    assert plan(unit("ExecStart=@/bin/sh $UNSET -c x")).argv == ("-c", "x")
    with pytest.raises(
        PlanError, match=r"test.service: ExecStart=: the command line expands to no"
    ):
        plan(unit("ExecStart=@/bin/sh $UNSET"))


def test_bare_names_and_resolved_paths() -> None:
    assert plan(unit("ExecStart=sort -u")).path == "sort"
    resolved = plan(unit("ExecStart=sort -u"), resolved_path="/usr/bin/sort")
    assert (resolved.path, resolved.argv) == ("/usr/bin/sort", ("sort", "-u"))


def test_several_commands_are_refused() -> None:
    service = unit("Type=oneshot", "ExecStart=/bin/true", "ExecStart=/bin/false")
    with pytest.raises(PlanError, match=r"test\.service: ExecStart=: 2 commands"):
        plan(service)


# ---------------------------------------------------------------------------------------------
# Environment


def test_environment_order_and_values() -> None:
    service = unit(
        "DynamicUser=yes", "Environment=A=1 B=2", "RuntimeDirectory=r", "LogsDirectory=l"
    )
    p = plan(service, descriptors=Descriptors(sockets=(0, 1), socket_names=("web", "admin")))
    assert p.env == (
        ("PATH", DEFAULT_PATH),
        ("A", "1"),
        ("B", "2"),
        ("USER", "run-u1"),
        ("LOGNAME", "run-u1"),
        ("HOME", "/"),
        ("SHELL", "/usr/sbin/nologin"),
        ("INVOCATION_ID", INVOCATION),
        ("RUNTIME_DIRECTORY", "/run/r"),
        ("LOGS_DIRECTORY", "/var/log/l"),
        ("LISTEN_FDS", "2"),
        ("LISTEN_PID", ""),
        ("LISTEN_FDNAMES", "web:admin"),
    )
    assert p.fd_map == ((3, 0), (4, 1))


def test_unit_and_environment_files_win_then_unset_applies() -> None:
    service = unit(
        "Environment=PATH=/opt/bin HOME=/srv KEEP=x DROP=1 MAYBE=no",
        "UnsetEnvironment=DROP MAYBE=yes FROMFILE=1 USER",
    )
    p = plan(service, ALICE, extra_env=[("KEEP", "file"), ("FROMFILE", "1"), ("SHELL", "/bin/zsh")])
    env = dict(p.env)
    assert env["PATH"] == "/opt/bin"
    assert env["HOME"] == "/srv"
    assert env["SHELL"] == "/bin/zsh"
    assert env["KEEP"] == "file"
    assert env["MAYBE"] == "no"
    assert "DROP" not in env
    assert "FROMFILE" not in env
    assert "USER" not in env
    assert list(env)[:2] == ["PATH", "HOME"]
    with pytest.raises(ValueError, match="valid name"):
        plan(unit(), extra_env=[("1X", "y")])
    with pytest.raises(ValueError, match="invocation id"):
        build_plan(unit(), DYNAMIC, invocation="nope")


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (
            Peer("TCP", "192.0.2.1", 40000, "192.0.2.2", 80),
            [
                ("REMOTE_ADDR", "192.0.2.1"), ("REMOTE_PORT", "40000"), ("PROTO", "TCP"),
                ("TCPREMOTEIP", "192.0.2.1"), ("TCPREMOTEPORT", "40000"),
                ("TCPLOCALIP", "192.0.2.2"), ("TCPLOCALPORT", "80"),
            ],
        ),
        (
            Peer("TCP6", "2001:db8::1", 5, "::1", 7),
            [
                ("REMOTE_ADDR", "2001:db8::1"), ("REMOTE_PORT", "5"), ("PROTO", "TCP6"),
                ("TCP6REMOTEIP", "2001:db8::1"), ("TCP6REMOTEPORT", "5"),
                ("TCP6LOCALIP", "::1"), ("TCP6LOCALPORT", "7"),
                ("TCPREMOTEIP", "2001:db8::1"), ("TCPREMOTEPORT", "5"),
                ("TCPLOCALIP", "::1"), ("TCPLOCALPORT", "7"),
            ],
        ),
        (
            Peer("UNIX", local_addr="/run/echo.sock", uid=1000, gid=100, pid=4242),
            [
                ("PROTO", "IPC"), ("IPCREMOTEEUID", "1000"), ("IPCREMOTEEGID", "100"),
                ("IPCREMOTEPID", "4242"), ("IPCLOCALPATH", "/run/echo.sock"),
            ],
        ),
    ],
)  # fmt: skip
def test_peer_environment(peer: Peer, expected: list[tuple[str, str]]) -> None:
    p = plan(unit(), peer=peer)
    assert list(p.env[6:]) == expected
    with pytest.raises(ValueError, match="proto"):
        Peer("UDP")


# ---------------------------------------------------------------------------------------------
# Standard streams


def test_socket_as_standard_streams_is_inetd_style() -> None:
    service = unit("StandardInput=socket", name="echo@1.service")
    p = plan(service, descriptors=Descriptors(sockets=(0,), socket_names=("connection",), log=1))
    assert p.fd_map == ((0, 0), (1, 0), (2, 0))  # no fd 3, no LISTEN_FDS, as systemd
    assert not any(name.startswith("LISTEN_") for name, _ in p.env)
    err = plan(
        unit("StandardInput=socket", "StandardError=journal"),
        descriptors=Descriptors(sockets=(5,), log=1),
    )
    assert err.fd_map == ((0, 5), (1, 5), (2, 1))
    with pytest.raises(
        PlanError, match=r"echo@1.service: StandardInput=socket: needs exactly one socket \(got 2\)"
    ):
        plan(service, descriptors=Descriptors(sockets=(0, 1)))
    with pytest.raises(
        PlanError, match=r"StandardOutput=socket: needs exactly one socket \(got 0\)"
    ):
        plan(unit("StandardOutput=socket"))


def test_log_null_and_files() -> None:
    assert plan(unit()).fd_map == ()  # journal with no log: /dev/null
    assert plan(unit(), descriptors=Descriptors(log=4)).fd_map == ((1, 4), (2, 4))
    assert plan(unit("StandardOutput=null"), descriptors=Descriptors(log=4)).fd_map == ()
    assert plan(
        unit("StandardOutput=kmsg+console", "StandardError=null"), descriptors=Descriptors(log=4)
    ).fd_map == ((1, 4),)
    service = unit(
        "StandardInput=file:/in", "StandardOutput=append:/out", "StandardError=truncate:/err"
    )
    assert stdio_files(service) == (("/in", "read"), ("/out", "append"), ("/err", "truncate"))
    files = (("/in", 0), ("/out", 1), ("/err", 2))
    assert plan(service, descriptors=Descriptors(files=files)).fd_map == ((0, 0), (1, 1), (2, 2))
    with pytest.raises(PlanError, match="StandardOutput=append:/out: the file was not opened"):
        plan(service, descriptors=Descriptors(files=files[:1]))
    same = unit("StandardInput=file:/f", "StandardOutput=file:/f", "StandardError=file:/f")
    assert stdio_files(same) == (("/f", "readwrite"),)


def test_explicit_streams_and_terminal() -> None:
    pipe = plan(unit("StandardInput=socket"), descriptors=Descriptors(stdin=0, stdout=1, stderr=2))
    assert pipe.fd_map == ((0, 0), (1, 1), (2, 2))
    assert not pipe.controlling_tty
    pty = plan(
        unit("StandardInput=tty", "StandardOutput=tty"),
        descriptors=Descriptors(stdin=0, terminal=True),
    )
    assert pty.fd_map == ((0, 0), (1, 0), (2, 0))
    assert pty.controlling_tty
    with pytest.raises(PlanError, match="StandardInput=tty: activator opens no terminal"):
        plan(unit("StandardInput=tty"))
    with pytest.raises(PlanError, match="controlling terminal"):
        plan(unit(), descriptors=Descriptors(terminal=True))
    with pytest.raises(PlanError, match="FileDescriptorName='a:b'"):
        plan(unit(), descriptors=Descriptors(sockets=(0,), socket_names=("a:b",)))
    with pytest.raises(PlanError, match="1 socket names for 2 sockets"):
        plan(unit(), descriptors=Descriptors(sockets=(0, 1), socket_names=("a",)))


# ---------------------------------------------------------------------------------------------
# Limits, directory, identity


def test_limits_and_process_settings() -> None:
    service = unit(
        "LimitNOFILE=64:128", "LimitCPU=2min", "LimitCORE=infinity", "Nice=5", "UMask=0077"
    )
    p = plan(service)
    assert p.rlimits == (
        RLimitSetting(0, 120, 120),
        RLimitSetting(4, -1, -1),
        RLimitSetting(7, 64, 128),
    )
    assert plan(unit()).rlimits == ()  # no host facts: inherited
    systemd = RLimitSetting(7, 1024, 524288)
    assert plan(unit(), host=HostFacts(nofile_hard=-1)).rlimits == (systemd,)
    assert plan(unit(), host=HostFacts(nofile_hard=20000)).rlimits == (
        RLimitSetting(7, 1024, 20000),
    )
    assert plan(unit(), host=HostFacts(nofile_hard=512)).rlimits == (RLimitSetting(7, 512, 512),)
    assert plan(service, host=HostFacts(nofile_hard=100)).rlimits == p.rlimits  # the unit's wins
    assert (p.nice, p.umask) == (5, 0o077)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (None, ("/", False)),
        ("WorkingDirectory=~", ("/home/alice", False)),
        ("WorkingDirectory=-/srv", ("/srv", True)),
    ],
)
def test_working_directory(line: str | None, expected: tuple[str, bool]) -> None:
    p = plan(unit(*(line,) if line else ()), ALICE)
    assert (p.working_directory, p.working_directory_optional) == expected


def test_identity_and_privileges() -> None:
    alice = attrs.evolve(ALICE, groups=(27, 100))
    p = plan(
        unit("User=alice", "PrivateNetwork=yes"),
        alice,
        cgroup_procs=("/sys/fs/cgroup/x/cgroup.procs",),
    )
    assert (p.uid, p.gid, p.groups, p.new_net) == (1000, 1000, (27, 100), True)
    assert p.cgroup_procs == ("/sys/fs/cgroup/x/cgroup.procs",)
    assert p.no_new_privileges
    assert not p.keep_capabilities
    root = plan(unit(), ROOT, host=HostFacts())
    assert root.keep_capabilities
    assert not root.no_new_privileges
    assert plan(unit("NoNewPrivileges=yes"), ROOT).no_new_privileges


def test_public_directories() -> None:
    service = unit("DynamicUser=yes", "StateDirectory=a b/c", "RuntimeDirectory=r")
    assert public_directories(service) == {
        "runtime": ("/run/r",),
        "state": ("/var/lib/a", "/var/lib/b/c"),
    }


def test_a_preserved_runtime_directory_of_a_dynamic_user_is_bound_from_run_private() -> None:
    service = unit("DynamicUser=yes", "RuntimeDirectory=keep", "RuntimeDirectoryPreserve=yes")
    mounts = plan(service).mounts
    assert Mount(BIND, "/run/private/keep", source="/run/private/keep") in mounts
    assert Mount(TMPFS, "/run/private", options="mode=0755", noexec=True) in mounts
    assert not [m for m in mounts if m.target == "/run/keep"]


def test_every_sandbox_hides_the_hosts_cgroup_tree() -> None:
    for service in (unit(), unit("DynamicUser=yes"), unit("ProtectSystem=strict")):
        mounts = plan(service).mounts
        assert Mount(TMPFS, CGROUPS, options="mode=0755", optional=True, noexec=True) in mounts
        assert simulate(mounts, "/sys/fs/cgroup/activator") in ("gone", "ro")
