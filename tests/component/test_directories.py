"""Runtime, state, cache and logs directories on a real filesystem, as root.

Most tests work below ``tmp_path`` (``root=``), so nothing under the real /var/lib is touched;
one test uses the real /var/lib with a unique name and removes what it made.
"""

from __future__ import annotations

import os
import resource
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from activator import values as v
from activator.directories import (
    DirectoryError,
    prepare_directories,
    remove_runtime_directories,
    state_directory_owner,
)
from activator.model import ServiceUnit
from activator.units import parse_unit_name

pytestmark = pytest.mark.root

UID = 61234
OTHER = 61235


def service(**fields: Any) -> ServiceUnit:
    unit = ServiceUnit(name=parse_unit_name("wuff.service"))
    return attrs.evolve(unit, **fields)


def dynamic(**fields: Any) -> ServiceUnit:
    return service(dynamic_user=True, **fields)


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def make_tree(top: Path, uid: int) -> list[Path]:
    """A small tree owned by ``uid``: files, a subdirectory, a set-user-ID file, a set-group-ID
    directory, and symlinks pointing out of the tree (which must not be followed)."""
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "sgid").mkdir()
    os.chmod(top / "sgid", 0o2775)
    (top / "a").write_text("a")
    (top / "sub" / "b").write_text("b")
    (top / "sub" / "deeper" / "c").write_text("c")
    (top / "suid").write_text("#!/bin/sh\n")
    os.chmod(top / "suid", 0o4755)
    (top / "passwd").symlink_to("/etc/passwd")
    (top / "etc").symlink_to("/etc")
    entries = [top, *sorted(top.rglob("*"))]
    for path in entries:
        os.lchown(path, uid, uid)
    os.chmod(top / "suid", 0o4755)  # chown cleared it
    return entries


def test_dynamic_state_directory_is_a_symlink_into_the_boundary(tmp_path: Path) -> None:
    unit = dynamic(state_directory=("wuff",), state_directory_mode=0o750)

    stats = prepare_directories(unit, UID, UID, root=str(tmp_path))

    lib = tmp_path / "var" / "lib"
    assert os.readlink(lib / "wuff") == "private/wuff"
    assert owner(lib / "wuff") == (0, 0)
    assert (owner(lib / "private"), mode(lib / "private")) == ((0, 0), 0o700)
    assert (owner(lib / "private" / "wuff"), mode(lib / "private" / "wuff")) == ((UID, UID), 0o750)
    assert (lib / "wuff").resolve() == lib / "private" / "wuff"
    assert (stats.files, stats.skipped) == (1, False)


def test_nested_name_links_relative_from_its_parent(tmp_path: Path) -> None:
    unit = dynamic(state_directory=("foobar/customerxyz",))

    prepare_directories(unit, UID, UID, root=str(tmp_path))

    lib = tmp_path / "var" / "lib"
    public = lib / "foobar" / "customerxyz"
    private = lib / "private" / "foobar" / "customerxyz"
    assert os.readlink(public) == "../private/foobar/customerxyz"  # as systemd links it
    assert public.resolve() == private
    for parent in (lib / "foobar", lib / "private" / "foobar"):
        assert (owner(parent), mode(parent)) == ((0, 0), 0o755)
    assert (owner(private), mode(private)) == ((UID, UID), 0o755)


@pytest.mark.parametrize("names", [("reva", "reva/b"), ("reva/b", "reva")])
def test_a_name_inside_another_of_the_same_directive_lives_only_in_the_boundary(
    tmp_path: Path, names: tuple[str, str]
) -> None:
    unit = dynamic(state_directory=names)

    prepare_directories(unit, UID, UID, root=str(tmp_path))

    lib = tmp_path / "var" / "lib"
    assert os.readlink(lib / "reva") == "private/reva"
    for path in (lib / "private" / "reva", lib / "private" / "reva" / "b"):
        assert owner(path) == (UID, UID)
    assert (lib / "reva" / "b").resolve() == lib / "private" / "reva" / "b"
    # A symlink the handler plants there is never followed by the next set-up.
    (lib / "private" / "reva" / "b").rmdir()
    (lib / "private" / "reva" / "b").symlink_to(tmp_path)
    with pytest.raises(DirectoryError, match="reva/b"):
        prepare_directories(unit, OTHER, OTHER, root=str(tmp_path))
    assert owner(tmp_path) == (0, 0)


def test_every_kind_and_several_names(tmp_path: Path) -> None:
    unit = dynamic(
        runtime_directory=("r1", "r2"),
        state_directory=("s1", "s2"),
        cache_directory=("c",),
        logs_directory=("l",),
        logs_directory_mode=0o700,
    )

    stats = prepare_directories(unit, UID, UID, root=str(tmp_path))

    # RuntimeDirectory= is removed at the end (RuntimeDirectoryPreserve=no): no boundary needed.
    for name in ("r1", "r2"):
        assert owner(tmp_path / "run" / name) == (UID, UID)
        assert not (tmp_path / "run" / name).is_symlink()
    for base, name in (("lib", "s1"), ("lib", "s2"), ("cache", "c"), ("log", "l")):
        var = tmp_path / "var" / base
        assert os.readlink(var / name) == f"private/{name}"
        assert (owner(var / "private"), mode(var / "private")) == ((0, 0), 0o700)
        assert owner(var / "private" / name) == (UID, UID)
    assert mode(tmp_path / "var" / "log" / "private" / "l") == 0o700
    assert (stats.files, stats.skipped) == (6, False)


def test_preserved_runtime_directory_of_a_dynamic_user_is_behind_a_boundary(
    tmp_path: Path,
) -> None:
    unit = dynamic(
        runtime_directory=("kept",), runtime_directory_preserve=v.RuntimeDirectoryPreserve.YES
    )

    prepare_directories(unit, UID, UID, root=str(tmp_path))

    run = tmp_path / "run"
    assert os.readlink(run / "kept") == "private/kept"
    assert (owner(run / "private"), mode(run / "private")) == ((0, 0), 0o700)
    assert owner(run / "private" / "kept") == (UID, UID)


def test_static_user_gets_plain_directories(tmp_path: Path) -> None:
    unit = service(user="someone", state_directory=("plain",), state_directory_mode=0o711)

    prepare_directories(unit, UID, UID, root=str(tmp_path))

    path = tmp_path / "var" / "lib" / "plain"
    assert path.is_dir()
    assert not path.is_symlink()
    assert (owner(path), mode(path)) == ((UID, UID), 0o711)
    assert not (tmp_path / "var" / "lib" / "private").exists()


def test_chown_of_a_tree_owned_by_another_uid_does_not_follow_symlinks(tmp_path: Path) -> None:
    private = tmp_path / "var" / "lib" / "private"
    private.mkdir(parents=True, mode=0o700)
    entries = make_tree(private / "wuff", OTHER)
    passwd, etc = os.stat("/etc/passwd"), os.stat("/etc")

    stats = prepare_directories(dynamic(state_directory=("wuff",)), UID, UID, root=str(tmp_path))

    assert (stats.files, stats.skipped) == (len(entries), False)
    assert stats.seconds > 0
    assert {path.name: owner(path) for path in entries} == {
        path.name: (UID, UID) for path in entries
    }
    # The symlinks themselves changed owner; what they point to did not.
    for target, before in (("/etc/passwd", passwd), ("/etc", etc)):
        after = os.stat(target)
        assert (after.st_uid, after.st_gid, after.st_mode) == (
            before.st_uid,
            before.st_gid,
            before.st_mode,
        )
    # No set-user-ID or set-group-ID for a dynamic user.
    assert mode(private / "wuff" / "suid") == 0o755
    assert mode(private / "wuff" / "sgid") == 0o775
    assert (private / "wuff" / "sub" / "deeper" / "c").read_text() == "c"


def test_chown_is_skipped_when_the_owner_is_already_right(tmp_path: Path) -> None:
    unit = dynamic(state_directory=("wuff",))
    prepare_directories(unit, UID, UID, root=str(tmp_path))
    leaf = tmp_path / "var" / "lib" / "private" / "wuff"
    (leaf / "f").write_text("x")
    os.chown(leaf / "f", OTHER, OTHER)

    again = prepare_directories(unit, UID, UID, root=str(tmp_path))

    # systemd's shortcut: a top directory with the right owner means the tree is not walked.
    assert (again.files, again.skipped) == (0, True)
    assert owner(leaf / "f") == (OTHER, OTHER)
    moved = prepare_directories(unit, OTHER, OTHER, root=str(tmp_path))
    assert (moved.files, moved.skipped) == (2, False)
    assert owner(leaf) == owner(leaf / "f") == (OTHER, OTHER)


def test_a_failed_walk_leaves_the_top_with_its_old_owner_and_is_redone(tmp_path: Path) -> None:
    private = tmp_path / "var" / "lib" / "private"
    private.mkdir(parents=True, mode=0o700)
    make_tree(private / "wuff", OTHER)
    stuck = private / "wuff" / "sub" / "b"
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    unit = dynamic(state_directory=("wuff",))
    try:
        with pytest.raises(DirectoryError) as caught:
            prepare_directories(unit, UID, UID, root=str(tmp_path))
        assert str(caught.value) == f"chown {stuck}: Operation not permitted"
        assert caught.value.path == str(stuck)
        assert owner(private / "wuff") == (OTHER, OTHER)  # the walk did not commit
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)

    stats = prepare_directories(unit, UID, UID, root=str(tmp_path))

    assert not stats.skipped
    assert owner(stuck) == owner(private / "wuff") == (UID, UID)


def test_state_directory_owner(tmp_path: Path) -> None:
    unit = dynamic(state_directory=("first", "second"), cache_directory=("cache",))
    assert state_directory_owner(unit, root=str(tmp_path)) is None

    prepare_directories(
        attrs.evolve(unit, state_directory=("second",)), UID, UID, root=str(tmp_path)
    )
    assert state_directory_owner(unit, root=str(tmp_path)) == UID
    prepare_directories(unit, OTHER, OTHER, root=str(tmp_path))
    assert state_directory_owner(unit, root=str(tmp_path)) == OTHER

    plain = service(state_directory=("plain",))
    prepare_directories(plain, UID, UID, root=str(tmp_path))
    assert state_directory_owner(plain, root=str(tmp_path)) == UID


def test_runtime_directory_is_created_and_removed(tmp_path: Path) -> None:
    unit = dynamic(runtime_directory=("rt", "nested/rt"), runtime_directory_mode=0o700)
    outside = tmp_path / "outside"
    outside.write_text("keep me")

    prepare_directories(unit, UID, UID, root=str(tmp_path))
    run = tmp_path / "run"
    assert (owner(run / "rt"), mode(run / "rt")) == ((UID, UID), 0o700)
    assert owner(run / "nested" / "rt") == (UID, UID)
    (run / "rt" / "sub").mkdir()
    (run / "rt" / "sub" / "file").write_text("x")
    (run / "rt" / "link").symlink_to(outside)
    (run / "rt" / "dirlink").symlink_to(tmp_path)

    remove_runtime_directories(unit, root=str(tmp_path))

    assert not (run / "rt").exists()
    assert not (run / "nested" / "rt").exists()
    assert (run / "nested").is_dir()  # parents stay, as systemd leaves them
    assert outside.read_text() == "keep me"
    remove_runtime_directories(unit, root=str(tmp_path))  # already gone: fine


def test_a_tree_deeper_than_the_descriptor_limit_is_removed(tmp_path: Path) -> None:
    # A handler may nest directories deeper than the activator's RLIMIT_NOFILE and than
    # PATH_MAX: removal must still finish, or the UID's files outlive its lease.
    unit = dynamic(runtime_directory=("deep",))
    prepare_directories(unit, UID, UID, root=str(tmp_path))
    fd = os.open(tmp_path / "run" / "deep", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        remove_runtime_directories(unit, root=str(tmp_path))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not (tmp_path / "run" / "deep").exists()


@pytest.mark.parametrize(
    "preserve", [v.RuntimeDirectoryPreserve.YES, v.RuntimeDirectoryPreserve.RESTART]
)
def test_preserved_runtime_directory_is_kept(
    tmp_path: Path, preserve: v.RuntimeDirectoryPreserve
) -> None:
    unit = service(runtime_directory=("rt",), runtime_directory_preserve=preserve)
    prepare_directories(unit, UID, UID, root=str(tmp_path))

    remove_runtime_directories(unit, root=str(tmp_path))

    assert owner(tmp_path / "run" / "rt") == (UID, UID)


def test_public_directory_moves_into_the_boundary_and_back(tmp_path: Path) -> None:
    lib = tmp_path / "var" / "lib"
    prepare_directories(service(state_directory=("wuff",)), UID, UID, root=str(tmp_path))
    (lib / "wuff" / "data").write_text("kept")

    prepare_directories(dynamic(state_directory=("wuff",)), OTHER, OTHER, root=str(tmp_path))
    assert os.readlink(lib / "wuff") == "private/wuff"
    assert (lib / "private" / "wuff" / "data").read_text() == "kept"
    assert owner(lib / "private" / "wuff" / "data") == (OTHER, OTHER)

    prepare_directories(service(state_directory=("wuff",)), UID, UID, root=str(tmp_path))
    assert not (lib / "wuff").is_symlink()
    assert (lib / "wuff" / "data").read_text() == "kept"
    assert not (lib / "private" / "wuff").exists()


def test_a_symlink_pointing_elsewhere_is_an_error(tmp_path: Path) -> None:
    lib = tmp_path / "var" / "lib"
    lib.mkdir(parents=True)
    (lib / "wuff").symlink_to("/etc")

    for unit in (dynamic(state_directory=("wuff",)), service(state_directory=("wuff",))):
        with pytest.raises(DirectoryError, match=f"^{lib}/wuff: is a symlink to /etc"):
            prepare_directories(unit, UID, UID, root=str(tmp_path))
    assert os.stat("/etc").st_uid == 0


def test_a_symlinked_parent_is_not_followed(tmp_path: Path) -> None:
    lib = tmp_path / "var" / "lib"
    lib.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (lib / "foobar").symlink_to(elsewhere)

    with pytest.raises(DirectoryError, match=f"^open {lib}/foobar: is not a directory"):
        prepare_directories(
            service(state_directory=("foobar/customerxyz",)), UID, UID, root=str(tmp_path)
        )
    assert list(elsewhere.iterdir()) == []


def test_a_boundary_with_the_wrong_owner_or_mode_is_fixed(tmp_path: Path) -> None:
    private = tmp_path / "var" / "lib" / "private"
    private.mkdir(parents=True)
    os.chown(private, OTHER, OTHER)
    os.chmod(private, 0o755)

    prepare_directories(dynamic(state_directory=("wuff",)), UID, UID, root=str(tmp_path))

    assert (owner(private), mode(private)) == ((0, 0), 0o700)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for 3 inodes (its root is one), unmounted at the end."""
    where = tmp_path / "tiny"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=3", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_errors_name_the_operation_the_path_and_the_errno(tiny_fs: Path) -> None:
    unit = dynamic(state_directory=("wuff",))

    with pytest.raises(DirectoryError) as caught:
        prepare_directories(unit, UID, UID, root=str(tiny_fs))

    # var and var/lib took the two free inodes.
    assert str(caught.value) == f"mkdir {tiny_fs}/var/lib/private: No space left on device"


def test_a_boundary_that_is_not_a_directory_is_an_error(tmp_path: Path) -> None:
    lib = tmp_path / "var" / "lib"
    lib.mkdir(parents=True)
    (lib / "private").write_text("")

    with pytest.raises(DirectoryError, match=f"^open {lib}/private: is not a directory"):
        prepare_directories(dynamic(state_directory=("wuff",)), UID, UID, root=str(tmp_path))


def test_the_real_var_lib() -> None:
    name = f"activator-test-{os.getpid()}"
    unit = dynamic(state_directory=(name,))
    public, private = Path("/var/lib", name), Path("/var/lib/private", name)
    boundary_existed = Path("/var/lib/private").exists()
    try:
        stats = prepare_directories(unit, UID, UID)

        assert os.readlink(public) == f"private/{name}"
        assert (owner(Path("/var/lib/private")), mode(Path("/var/lib/private"))) == ((0, 0), 0o700)
        assert owner(private) == (UID, UID)
        assert not stats.skipped
        assert state_directory_owner(unit) == UID
    finally:
        public.unlink(missing_ok=True)
        if private.exists():
            private.rmdir()
        if not boundary_existed:
            Path("/var/lib/private").rmdir()
