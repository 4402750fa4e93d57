"""Runtime, state, cache and logs directories of an invocation, owned by its UID.

Rule 1: a directory an invocation gets is owned by its UID and GID and has its ``*DirectoryMode=``
before the handler starts, or :func:`prepare_directories` raises :class:`DirectoryError` and the
handler does not start.

Rule 2: files of a dynamic UID are reachable only through a boundary directory
(``/var/lib/private``, ``/var/cache/private``, ``/var/log/private``, and ``/run/private`` for a
preserved runtime directory): root:root 0700, created or fixed on every call. The public path
(``/var/lib/NAME``) is a root-owned relative symlink into it.

Rule 3: below the system roots (``/run``, ``/var/lib``, ``/var/cache``, ``/var/log``, trusted as
they are), no symlink is ever followed: every path component is opened with ``O_NOFOLLOW``
relative to its parent's descriptor, and the recursive chown and removal work on descriptors and
never change what a symlink points to. A file a handler left behind cannot make root chown or
delete anything outside the directory (``fs.protected_hardlinks``, on by default, keeps hard links
to other users' files out).

Theory of operation: this follows systemd's ``setup_exec_directory()`` (src/core/execute.c,
252) and ``path_chown_recursive()`` (src/shared/chown-recursive.c):

1. The public parents of ``NAME`` (``foobar`` for ``foobar/customerxyz``) are created root-owned
   0755. With ``DynamicUser=yes`` (for RuntimeDirectory= only when ``RuntimeDirectoryPreserve=``
   is not ``no``, as systemd: a runtime directory removed at the end never outlives the UID), the
   boundary is created or fixed, the same parents are made inside it, and the directory lives at
   ``private/NAME``; the public path becomes the symlink ``NAME -> private/NAME``, or
   ``foobar/customerxyz -> ../private/foobar/customerxyz`` for a nested name. A plain directory at
   the public path from an earlier run without DynamicUser= is moved into ``private/`` when no
   private one exists yet; the reverse move happens when DynamicUser= was turned off. Any other
   symlink at the public path is an error naming it: activator does not follow it.
2. The directory gets its mode, then, if its own owner is not ``uid:gid`` (or, for a dynamic
   user, it has set-user-ID or set-group-ID bits), the whole tree is chowned, depth first. The
   directory itself comes last, so its owner commits the walk: a walk that fails half-way leaves
   the top directory with its old owner, the handler does not start, and the next call walks the
   whole tree again (chown is idempotent). A tree whose top is right is not walked at all (the
   shortcut systemd takes); the pool prefers the UID that already owns the state directory
   (:func:`state_directory_owner`), so the walk is rare.
3. The walk changes symlinks themselves (``lchown``), never their targets, does not descend into
   other filesystems (a mount point inside the tree is left as it is), and for dynamic users
   clears set-user-ID and set-group-ID bits on directories (chown clears them on files). Unlike
   systemd it leaves POSIX ACLs alone: the boundary already keeps every other UID out, and an
   ACL the service set is its own business.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import time
from collections.abc import Iterator

import attrs

from activator import values as v
from activator.errors import ActivatorError
from activator.model import ServiceUnit
from activator.units import SYSTEM_DIRECTORIES

logger = logging.getLogger(__name__)

_BOUNDARY = "private"
_BOUNDARY_MODE = 0o700
_PARENT_MODE = 0o755
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NOATIME: the walk should not touch every atime of a large tree (root may always set it).
_WALK_DIR = _OPEN_DIR | os.O_NOATIME
# What chown keeps of a directory's mode: systemd strips set-user-ID and set-group-ID for dynamic
# users ("we really don't want SUID/SGID files for dynamic UID/GID assignments to exist").
_MASK_DYNAMIC = 0o1777
_MASK_STATIC = 0o7777


class DirectoryError(ActivatorError):
    """A directory could not be made, owned or removed.

    The message names the operation, the path and the errno text:
    ``mkdir /var/lib/private/x: No space left on device``.

    Attributes:
        path: the path at fault.
        errno: the errno, or None when the problem is not a failed system call.
    """

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


@attrs.frozen
class ChownStats:
    """What the ownership step of :func:`prepare_directories` did.

    Attributes:
        files: the files, directories and symlinks chowned.
        seconds: the time the walks took.
        skipped: True when every directory already had the right owner and nothing was walked.
    """

    files: int
    seconds: float
    skipped: bool


@attrs.frozen
class _Kind:
    directive: str
    base: str  # the system root: /run, /var/lib, /var/cache or /var/log


_RUNTIME = _Kind("RuntimeDirectory", SYSTEM_DIRECTORIES["t"])
_STATE = _Kind("StateDirectory", SYSTEM_DIRECTORIES["S"])
_CACHE = _Kind("CacheDirectory", SYSTEM_DIRECTORIES["C"])
_LOGS = _Kind("LogsDirectory", SYSTEM_DIRECTORIES["L"])


@attrs.frozen
class _Wanted:
    """One directory of one directive, with what it needs."""

    kind: _Kind
    name: str
    mode: int
    private: bool
    #: Inside another directory of the same directive (``StateDirectory=foo foo/bar``): with
    #: ``private``, made inside the private parent only, with no public symlink of its own
    #: (the parent's symlink leads to it), as systemd 250 and later do.
    nested: bool = False


def _wanted(service: ServiceUnit) -> list[_Wanted]:
    preserved = service.runtime_directory_preserve is not v.RuntimeDirectoryPreserve.NO
    out: list[_Wanted] = []
    for kind, names, mode, private in (
        (_RUNTIME, service.runtime_directory, service.runtime_directory_mode, preserved),
        (_STATE, service.state_directory, service.state_directory_mode, True),
        (_CACHE, service.cache_directory, service.cache_directory_mode, True),
        (_LOGS, service.logs_directory, service.logs_directory_mode, True),
    ):
        for name in names:
            parts = _parts(name)
            nested = any(
                other != name and _parts(other) == parts[: len(_parts(other))] for other in names
            )
            out.append(_Wanted(kind, name, mode, service.dynamic_user and private, nested))
    return out


def _base(root: str, kind: _Kind) -> str:
    return posixpath.join(root, kind.base.lstrip("/"))


def _error(error: OSError, op: str, path: str) -> DirectoryError:
    code = error.errno
    reason = os.strerror(code) if code is not None else str(error)
    return DirectoryError(f"{op} {path}: {reason}", path=path, errno=code)


def _parts(name: str) -> list[str]:
    # The model refuses absolute names and '..'; empty and '.' components are dropped as
    # path_join() does.
    return [part for part in name.split("/") if part not in ("", ".")]


# --- opening without following symlinks --------------------------------------------------------


def _open_base(base: str) -> int:
    """Open (and make) a system root such as ``/var/lib``; symlinks on the way are trusted."""
    try:
        os.makedirs(base, _PARENT_MODE, exist_ok=True)
    except OSError as error:
        raise _error(error, "mkdir", base) from error
    try:
        return os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise _error(error, "open", base) from error


def _open_dir(dir_fd: int, path: str, name: str) -> int:
    try:
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            msg = f"open {path}: is not a directory (symlinks are not followed here)"
            raise DirectoryError(msg, path=path, errno=error.errno) from error
        raise _error(error, "open", path) from error


def _make_dir(dir_fd: int, path: str, name: str, mode: int) -> tuple[int, bool]:
    """Open the directory ``name`` in ``dir_fd``, creating it root-owned with ``mode`` if missing.

    Returns:
        the new descriptor, and whether the directory was created.
    """
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
    except FileExistsError:
        created = False
    except OSError as error:
        raise _error(error, "mkdir", path) from error
    else:
        created = True
    fd = _open_dir(dir_fd, path, name)
    if created:
        # mkdir is subject to the umask and a set-group-ID parent: set both exactly.
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
        except OSError as error:
            os.close(fd)
            raise _error(error, "chmod", path) from error
    return fd, created


def _make_parents(dir_fd: int, path: str, parts: list[str]) -> tuple[int, str]:
    """Walk (and make, root-owned 0755) ``parts`` below ``dir_fd``.

    Returns:
        a new descriptor of the last directory (a dup of ``dir_fd`` when ``parts`` is empty), and
        its path.
    """
    fd = os.dup(dir_fd)
    for part in parts:
        path = f"{path}/{part}"
        try:
            child, _ = _make_dir(fd, path, part, _PARENT_MODE)
        finally:
            os.close(fd)
        fd = child
    return fd, path


def _open_parents(dir_fd: int, path: str, parts: list[str]) -> tuple[int, str] | None:
    """Walk ``parts`` below ``dir_fd`` without making anything; None if one is missing."""
    fd = os.dup(dir_fd)
    for part in parts:
        path = f"{path}/{part}"
        try:
            child = os.open(part, _OPEN_DIR, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        fd = child
    return fd, path


def _lstat(dir_fd: int, path: str, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _error(error, "stat", path) from error


def _readlink(dir_fd: int, path: str, name: str) -> str:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as error:
        raise _error(error, "readlink", path) from error


def _open_boundary(base_fd: int, base: str) -> int:
    """Open ``<base>/private``, creating it or fixing it to root:root 0700."""
    path = f"{base}/{_BOUNDARY}"
    fd, created = _make_dir(base_fd, path, _BOUNDARY, _BOUNDARY_MODE)
    if created:
        return fd
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_gid != 0 or stat.S_IMODE(st.st_mode) != _BOUNDARY_MODE:
            logger.warning(
                "%s was %o %d:%d, fixing to %o root:root",
                path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, _BOUNDARY_MODE,
            )  # fmt: skip
            os.fchown(fd, 0, 0)
            os.fchmod(fd, _BOUNDARY_MODE)
    except OSError as error:
        os.close(fd)
        raise _error(error, "chmod", path) from error
    return fd


# --- the public API ----------------------------------------------------------------------------


def state_directory_owner(service: ServiceUnit, *, root: str = "/") -> int | None:
    """The UID that owns the service's first existing state, cache or logs directory.

    The pool prefers it, so that :func:`prepare_directories` finds the tree already owned and
    does not walk it (systemd's ``PHASE_SUGGESTED`` looks at the same directories). With
    ``DynamicUser=yes`` the private path (``/var/lib/private/NAME``) is looked at, else the public
    one; a symlink is never followed. The caller checks that the UID is one it may lease.

    Args:
        service: the service.
        root: a prefix for every path (tests); ``/`` in production.

    Returns:
        the owner's UID, or None when no such directory exists.
    """
    for kind, names in (
        (_STATE, service.state_directory),
        (_CACHE, service.cache_directory),
        (_LOGS, service.logs_directory),
    ):
        for name in names:
            parts = _parts(name)
            if service.dynamic_user:
                parts = [_BOUNDARY, *parts]
            try:
                st = os.stat(posixpath.join(_base(root, kind), *parts), follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                return st.st_uid
    return None


def prepare_directories(service: ServiceUnit, uid: int, gid: int, *, root: str = "/") -> ChownStats:
    """Create the service's Runtime, State, Cache and Logs directories, owned by ``uid:gid``.

    Blocking (a recursive chown may take long): run it in a worker thread. See the module
    docstring for the layout and the guarantees.

    Args:
        service: the service; its ``*_directory`` names are relative paths.
        uid: the owner to give every directory.
        gid: the group to give every directory.
        root: a prefix for every path (tests); ``/`` in production.

    Returns:
        what the ownership step did, summed over all directories.

    Raises:
        DirectoryError: naming the path and the errno text; nothing after the failing directory
            is touched, and the failing directory keeps its old owner.
    """
    mask = _MASK_DYNAMIC if service.dynamic_user else _MASK_STATIC
    files = 0
    seconds = 0.0
    skipped = True
    for wanted in _wanted(service):
        stats = _prepare_one(wanted, uid, gid, mask, root)
        files += stats.files
        seconds += stats.seconds
        skipped = skipped and stats.skipped
    return ChownStats(files=files, seconds=seconds, skipped=skipped)


def remove_runtime_directories(service: ServiceUnit, *, root: str = "/") -> None:
    """Remove the service's runtime directories, unless ``RuntimeDirectoryPreserve=`` keeps them.

    ``yes`` and ``restart`` keep them (an invocation's end is not a restart, but activator has no
    restart of a running service to tell them apart by). A directory already gone is fine. The
    removal does not follow symlinks, and a symlink at the public path (a runtime directory once
    preserved under ``/run/private``) is removed, not what it points to.

    Raises:
        DirectoryError: naming the path and the errno text.
    """
    if service.runtime_directory_preserve is not v.RuntimeDirectoryPreserve.NO:
        return
    base = _base(root, _RUNTIME)
    for name in service.runtime_directory:
        parts = _parts(name)
        try:
            base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as error:
            raise _error(error, "open", base) from error
        try:
            opened = _open_parents(base_fd, base, parts[:-1])
        finally:
            os.close(base_fd)
        if opened is None:
            continue
        parent_fd, parent = opened
        try:
            _remove_tree(parent_fd, parent, parts[-1])
        finally:
            os.close(parent_fd)


def remove_owned_runtime_entries(uid: int, *, root: str = "/") -> list[str]:
    """Remove what ``uid`` owns directly under /run or one level below a root-owned directory
    there (``/run/NAME``, ``/run/foo/NAME``): the runtime directories of an invocation whose
    activator died before its teardown. The boundary ``/run/private`` is left alone (what
    lives there is preserved on purpose and unreachable). Returns the paths removed.

    Raises:
        DirectoryError: naming the path and the errno text.
    """
    base = _base(root, _RUNTIME)
    removed: list[str] = []
    try:
        base_fd = os.open(base, _OPEN_DIR)
    except FileNotFoundError:
        return removed
    except OSError as error:
        raise _error(error, "open", base) from error
    try:
        for name, parent_fd, parent in _runtime_candidates(base_fd, base):
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_uid == uid:
                _remove_tree(parent_fd, parent, name)
                removed.append(f"{parent}/{name}")
    finally:
        os.close(base_fd)
    return removed


def _runtime_candidates(base_fd: int, base: str) -> Iterator[tuple[str, int, str]]:
    """(name, parent fd, parent path) of /run's entries and of the entries of its root-owned
    subdirectories (symlinks never followed; /run/private skipped)."""
    for name in sorted(os.listdir(base_fd)):
        if name == "private":
            continue
        yield name, base_fd, base
        try:
            sub = os.open(name, _OPEN_DIR, dir_fd=base_fd)
        except OSError:
            continue  # not a directory, a symlink, gone, or unreadable
        try:
            if os.fstat(sub).st_uid == 0:
                for inner in sorted(os.listdir(sub)):
                    yield inner, sub, f"{base}/{name}"
        finally:
            os.close(sub)


# --- one directory -----------------------------------------------------------------------------


def _prepare_one(wanted: _Wanted, uid: int, gid: int, mask: int, root: str) -> ChownStats:
    base = _base(root, wanted.kind)
    parts = _parts(wanted.name)
    if not parts:
        msg = f"{wanted.kind.directive}={wanted.name!r}: no directory name"
        raise DirectoryError(msg, path=base)
    leaf = parts[-1]
    fds: list[int] = []
    try:
        base_fd = _open_base(base)
        fds.append(base_fd)
        if wanted.private and wanted.nested:
            # Below a directory of the same directive: only inside the boundary. The walk goes
            # through the lease's own directories without following any symlink.
            boundary_fd = _open_boundary(base_fd, base)
            fds.append(boundary_fd)
            private_fd, private_parent = _make_parents(
                boundary_fd, f"{base}/{_BOUNDARY}", parts[:-1]
            )
            fds.append(private_fd)
            path = f"{private_parent}/{leaf}"
            leaf_fd, _ = _make_dir(private_fd, path, leaf, wanted.mode)
            fds.append(leaf_fd)
            try:
                os.fchmod(leaf_fd, wanted.mode & mask)
            except OSError as error:
                raise _error(error, "chmod", path) from error
            return _chown_tree(leaf_fd, path, uid, gid, mask)
        public_fd, public_parent = _make_parents(base_fd, base, parts[:-1])
        fds.append(public_fd)
        public = f"{public_parent}/{leaf}"
        if wanted.private:
            boundary_fd = _open_boundary(base_fd, base)
            fds.append(boundary_fd)
            private_fd, private_parent = _make_parents(
                boundary_fd, f"{base}/{_BOUNDARY}", parts[:-1]
            )
            fds.append(private_fd)
            leaf_fd, path = _private_leaf(
                wanted, public_fd, public, private_fd, f"{private_parent}/{leaf}", leaf, parts
            )
        else:
            _migrate_back(base_fd, base, public_fd, public, leaf, parts)
            leaf_fd, _ = _make_dir(public_fd, public, leaf, wanted.mode)
            path = public
        fds.append(leaf_fd)
        try:
            # Under the mask, or the chown shortcut would never hold (systemd's quirk).
            os.fchmod(leaf_fd, wanted.mode & mask)
        except OSError as error:
            raise _error(error, "chmod", path) from error
        return _chown_tree(leaf_fd, path, uid, gid, mask)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _private_leaf(
    wanted: _Wanted,
    public_fd: int,
    public: str,
    private_fd: int,
    private: str,
    leaf: str,
    parts: list[str],
) -> tuple[int, str]:
    """Make ``private/NAME`` (moving a public directory there) and the public symlink to it."""
    target = _private_target(parts)
    public_st = _lstat(public_fd, public, leaf)
    private_st = _lstat(private_fd, private, leaf)
    if public_st is not None and stat.S_ISDIR(public_st.st_mode):
        if private_st is not None:
            msg = (
                f"{public}: is a directory, and {private} exists too; "
                f"{wanted.kind.directive}= with DynamicUser=yes needs {public} to be a symlink"
            )
            raise DirectoryError(msg, path=public)
        # systemd: "Apparently, service previously had DynamicUser= turned off, and has now
        # turned it on."
        logger.info("%s=: moving %s to %s (DynamicUser= turned on)", wanted.kind.directive,
                    public, private)  # fmt: skip
        try:
            os.rename(leaf, leaf, src_dir_fd=public_fd, dst_dir_fd=private_fd)
        except OSError as error:
            raise _error(error, "rename", public) from error
        public_st = None
    elif public_st is not None and stat.S_ISLNK(public_st.st_mode):
        _check_link(public_fd, public, leaf, target)  # before making anything
    elif public_st is not None:
        msg = f"{public}: exists and is neither a directory nor a symlink"
        raise DirectoryError(msg, path=public)
    fd, _ = _make_dir(private_fd, private, leaf, wanted.mode)
    if public_st is None:
        try:
            _link(public_fd, public, leaf, target)
        except BaseException:
            os.close(fd)
            raise
    return fd, private


def _private_target(parts: list[str]) -> str:
    """The public symlink's target: ``private/NAME``, ``../private/foobar/customerxyz``."""
    return "../" * (len(parts) - 1) + f"{_BOUNDARY}/" + "/".join(parts)


def _link(dir_fd: int, path: str, name: str, target: str) -> None:
    """Make the symlink ``path -> target`` (or accept one made since we looked)."""
    try:
        os.symlink(target, name, dir_fd=dir_fd)
    except FileExistsError:
        _check_link(dir_fd, path, name, target)
    except OSError as error:
        raise _error(error, "symlink", path) from error


def _check_link(dir_fd: int, path: str, name: str, target: str) -> None:
    st = _lstat(dir_fd, path, name)
    if st is None or not stat.S_ISLNK(st.st_mode):
        msg = f"{path}: expected a symlink to {target}"
        raise DirectoryError(msg, path=path)
    found = _readlink(dir_fd, path, name)
    if posixpath.normpath(found) != target:
        msg = f"{path}: is a symlink to {found}, expected {target}; activator does not follow it"
        raise DirectoryError(msg, path=path)


def _migrate_back(
    base_fd: int, base: str, public_fd: int, public: str, leaf: str, parts: list[str]
) -> None:
    """A symlink into ``private/`` at the public path, with DynamicUser= now off: move the
    private directory back, as systemd does. Any other symlink there is an error."""
    st = _lstat(public_fd, public, leaf)
    if st is None or not stat.S_ISLNK(st.st_mode):
        return
    target = _private_target(parts)
    found = _readlink(public_fd, public, leaf)
    if posixpath.normpath(found) != target:
        msg = f"{public}: is a symlink to {found}; activator does not follow it"
        raise DirectoryError(msg, path=public)
    opened = _open_parents(base_fd, base, [_BOUNDARY, *parts[:-1]])
    private = posixpath.join(base, _BOUNDARY, *parts)
    if opened is None:
        msg = f"{public}: is a symlink to {found}, which does not exist"
        raise DirectoryError(msg, path=public)
    private_fd, _ = opened
    try:
        logger.info("moving %s back to %s (DynamicUser= turned off)", private, public)
        try:
            os.unlink(leaf, dir_fd=public_fd)
        except OSError as error:
            raise _error(error, "unlink", public) from error
        try:
            os.rename(leaf, leaf, src_dir_fd=private_fd, dst_dir_fd=public_fd)
        except OSError as error:
            raise _error(error, "rename", private) from error
    finally:
        os.close(private_fd)


# --- walking a tree ----------------------------------------------------------------------------


@attrs.frozen
class _Entry:
    """One entry of a tree walk.

    Attributes:
        dir_fd: the directory that holds it (open while the entry is handled).
        path: its full path, for messages.
        name: its name in ``dir_fd``.
        fd: its own descriptor if it is a directory on the walked filesystem, else None.
        st: its stat if it is a directory, else None (files are not stat'ed: fewer system calls).
    """

    dir_fd: int
    path: str
    name: str
    fd: int | None
    st: os.stat_result | None


def _list(fd: int, path: str) -> list[tuple[str, bool]]:
    try:
        with os.scandir(fd) as entries:
            return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    except OSError as error:
        raise _error(error, "read", path) from error


def _walk(top_fd: int, top_path: str, top_dev: int) -> Iterator[_Entry]:
    """Yield every entry below ``top_fd``, depth first, each directory after its contents.

    Never follows a symlink; a directory on another filesystem is yielded with ``fd=None`` and
    not entered. Entries that vanish during the walk are skipped. One descriptor is open per level
    (a tree deeper than RLIMIT_NOFILE fails with "Too many open files", refusing to start rather
    than half-walking). Iterative, so depth is not bounded by Python's recursion limit.
    """
    # Each frame: the directory's fd and path, the names still to visit, and the entry to yield
    # for the directory itself once they are done (None for the top).
    stack: list[tuple[int, str, list[tuple[str, bool]], _Entry | None]] = [
        (top_fd, top_path, _list(top_fd, top_path), None)
    ]
    try:
        while stack:
            fd, path, pending, itself = stack[-1]
            if not pending:
                stack.pop()
                if itself is not None:
                    try:
                        yield itself
                    finally:
                        os.close(fd)
                continue
            name, is_dir = pending.pop()
            child = f"{path}/{name}"
            if not is_dir:
                yield _Entry(fd, child, name, None, None)
                continue
            try:
                child_fd = os.open(name, _WALK_DIR, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced since listed
                    yield _Entry(fd, child, name, None, None)
                    continue
                raise _error(error, "open", child) from error
            try:
                st = os.fstat(child_fd)
            except OSError as error:
                os.close(child_fd)
                raise _error(error, "stat", child) from error
            if st.st_dev != top_dev:
                os.close(child_fd)
                yield _Entry(fd, child, name, None, st)
                continue
            try:
                listing = _list(child_fd, child)
            except DirectoryError:
                os.close(child_fd)
                raise
            stack.append((child_fd, child, listing, _Entry(fd, child, name, child_fd, st)))
    finally:
        for fd, _, _, itself in stack:
            if itself is not None:
                os.close(fd)


def _chown_tree(fd: int, path: str, uid: int, gid: int, mask: int) -> ChownStats:
    """Chown the tree at ``fd`` to ``uid:gid``, unless its top already has that owner."""
    started = time.perf_counter()
    try:
        st = os.fstat(fd)
    except OSError as error:
        raise _error(error, "stat", path) from error
    if st.st_uid == uid and st.st_gid == gid and not stat.S_IMODE(st.st_mode) & ~mask:
        return ChownStats(files=0, seconds=time.perf_counter() - started, skipped=True)
    files = 0
    for entry in _walk(fd, path, st.st_dev):
        if entry.st is not None and entry.fd is None:
            continue  # a mount point: another filesystem is not ours to chown
        try:
            if entry.fd is not None and entry.st is not None:
                _chown_dir(entry.fd, entry.st, uid, gid, mask)
            else:
                # fchownat(AT_SYMLINK_NOFOLLOW): a symlink itself, never its target. For a
                # file, the kernel clears set-user-ID (and set-group-ID with group execute).
                os.chown(entry.name, uid, gid, dir_fd=entry.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise _error(error, "chown", entry.path) from error
        files += 1
    try:
        _chown_dir(fd, st, uid, gid, mask)  # last: the top's owner commits the walk
    except OSError as error:
        raise _error(error, "chown", path) from error
    files += 1
    return ChownStats(files=files, seconds=time.perf_counter() - started, skipped=False)


def _chown_dir(fd: int, st: os.stat_result, uid: int, gid: int, mask: int) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~mask:
        os.fchmod(fd, mode & mask)
    os.fchown(fd, uid, gid)


def _empty_flat(top: int, path: str) -> None:
    """Empty the directory ``top`` by flattening: files and empty directories are removed,
    the entries of a non-empty subdirectory are renamed up into ``top`` and the subdirectory
    removed; repeated until ``top`` is empty. Each pass lifts the tree by one level, so memory
    and descriptors stay bounded (a rename never crosses a filesystem: EXDEV names a mount
    point, which is an error). The tree's owner is gone (teardown runs after its last
    process), so nothing moves under the walk."""
    counter = 0
    while True:
        try:
            names = os.listdir(top)
        except OSError as error:
            raise _error(error, "read", path) from error
        if not names:
            return
        for name in names:
            try:
                os.unlink(name, dir_fd=top)
                continue
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                pass
            except OSError as error:
                if error.errno != errno.EPERM:  # EPERM: unlink() of a directory, on Linux
                    raise _error(error, "unlink", f"{path}/{name}") from error
            try:
                os.rmdir(name, dir_fd=top)
                continue
            except FileNotFoundError:
                continue
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise _error(error, "rmdir", f"{path}/{name}") from error
            try:
                sub = os.open(name, _WALK_DIR, dir_fd=top)
            except OSError as error:
                raise _error(error, "open", f"{path}/{name}") from error
            try:
                for inner in os.listdir(sub):
                    counter += 1
                    try:
                        os.rename(inner, f".activator-rm-{counter}", src_dir_fd=sub, dst_dir_fd=top)
                    except FileExistsError:
                        continue  # retried on the next pass under the next counter
                    except OSError as error:
                        raise _error(error, "rename", f"{path}/{name}/{inner}") from error
            finally:
                os.close(sub)


def _remove_tree(dir_fd: int, parent: str, name: str) -> None:
    """Remove ``name`` in ``dir_fd`` and everything below it (``rm -rf``, not following
    symlinks, not entering other filesystems), with at most three descriptors open whatever
    the depth: a handler may leave a tree deeper than the activator's descriptor limit."""
    path = f"{parent}/{name}"
    try:
        fd = os.open(name, _WALK_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise _error(error, "open", path) from error
        try:
            os.unlink(name, dir_fd=dir_fd)  # a symlink or a file: remove it, not its target
        except FileNotFoundError:
            pass
        except OSError as unlink_error:
            raise _error(unlink_error, "unlink", path) from unlink_error
        return
    try:
        _empty_flat(fd, path)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise _error(error, "rmdir", path) from error
