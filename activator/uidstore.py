"""The kernel-facing side of the UID pool: lease lock files and the in-use probes.

Rule 1: a UID is leased by whoever holds the ``flock`` of ``/run/activator/uid/<UID>`` (and, where
systemd's ``/run/systemd/dynamic-uid/`` exists, of ``/run/systemd/dynamic-uid/<UID>`` too, so
activator and systemd's own DynamicUser never share a UID). The lock is bound to an open file
description, so it dies with the process that holds it: a lock file nobody holds is a crash
leftover, never a live lease.

Rule 2: only the holder of a lock unlinks its file, and it unlinks before it closes; a taker
checks ``st_nlink`` after its ``flock`` and retries when it locked a file that was unlinked in
between (the protocol of systemd's ``pick_uid`` in ``src/core/dynamic-user.c``). We never delete a
systemd lock file we do not hold.

Rule 3: a UID is in use while a process runs with it (real, effective, saved or filesystem UID or
GID, or a supplementary group: GID and UID share the number), while a SysV IPC object, a POSIX
shared memory file or message queue is owned or was created by it, while it owns a kernel key
other than its two bare user keyrings (kernel keys count as an IPC object, as systemd's RemoveIPC
scope counts what a UID leaves in the kernel), or while NSS knows a user, a group or a user's
primary group with that number. The probes report the first reason in that order: PROCESS, IPC,
NSS.

Rule 4: every function here blocks (files, ``/proc``, NSS): the async layer calls them in worker
threads. NSS lookups from this process must never resolve activator's own dynamic users, which
:func:`bypass_own_userdb` arranges once at start.

Theory of operation: :func:`acquire` takes one UID's locks and writes the lease record (JSON) into
our file; :func:`update` rewrites it once the cgroup is known; :func:`release` unlinks and closes.
At start, :func:`find_stale` locks every lease file nobody holds (the leftovers of a crash) and
reports the UIDs whose locks live processes hold. :func:`scan` checks a whole range in one pass per
source; :func:`probe` checks one UID. :func:`remove_ipc` is RemoveIPC= on the host, for a UID being
released; :func:`has_keys` tells whether its keyrings need a clear first (only a process of the UID
can clear them: the spawner does, ``Spawner.clear_keyrings``).

Kernel keys: ``/proc/key-users`` has a line per UID that owns any key, ``UID: usage nkeys/nikeys
qnkeys/maxkeys qnbytes/maxbytes``; root reads it, but cannot list another UID's keys (/proc/keys
shows only keys the reader may view, with no override for root). The first lookup of ``@u`` or
``@us`` by a process of the UID makes its two user keyrings, ``_uid.N`` and ``_uid_ses.N``, and
they stay (they belong to the user namespace, and the host's never dies): a UID that ever looked
shows 2 keys for good. Those are "bare": exactly 2 keys charging only their names (length + 1
each) and at most the 4 bytes (``KEYQUOTA_LINK_BYTES``) of the link ``_uid_ses`` holds to
``_uid`` as made (a clear of ``@us`` drops it). Measured on Linux 6.18 for UID 65112: ``2 2/2 2/200
30/20000`` as made, 26 bytes once cleared. Any other key adds a key (and its bytes), so a UID is
free of keys when it has none, or exactly its bare keyrings (:func:`keyrings_only`). The one
case this cannot tell apart: a UID that never made its keyrings but owns two other keys whose
names and payloads total at most those 30 bytes, somewhere else (another UID's keyring that lets
others write into it); such keys reach no one but the writer and that keyring's owner.

NSS and enumeration: :func:`scan` enumerates users and groups (``getpwall``/``getgrall``). Sources
that cannot enumerate (LDAP, sssd without ``enumerate``, winbind) hide their users from that, so
when ``/etc/nsswitch.conf`` names any source other than ``files``, ``systemd``, ``db`` or
``altfiles``, :func:`scan` also looks up each UID of the range with ``getpwuid``/``getgrgid``.
Measured on the development machine (files + systemd, Debian 12): one lookup costs about 87 µs,
so both lookups for the 4336 UIDs of the default pool cost 0.75 s (1.6 s with the machine
busy), against 0.3 ms for the two enumerations; with only enumerable sources the lookups find
nothing more, and are skipped. :func:`probe` always looks its one UID up.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import grp
import json
import logging
import os
import pwd
import stat
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, NoReturn

import attrs

from activator.uidpool import SkipReason

logger = logging.getLogger(__name__)

#: One file per leased UID, named by the number, holding the lease record as JSON.
LEASE_DIRECTORY: Final = "/run/activator/uid"
#: systemd's DynamicUser lock files, also named by the number; used only if the directory exists.
SYSTEMD_DIRECTORY: Final = "/run/systemd/dynamic-uid"
#: activator's userdb Varlink service, the name of its socket in /run/systemd/userdb/.
USERDB_SERVICE: Final = "io.activator.DynamicUser"
#: Where POSIX shared memory objects live.
SHM_DIRECTORY: Final = "/dev/shm"
#: Where POSIX message queues are visible, when an mqueue filesystem is mounted there.
MQUEUE_DIRECTORY: Final = "/dev/mqueue"
#: The SysV IPC tables of this IPC namespace.
SYSVIPC_DIRECTORY: Final = "/proc/sysvipc"
#: NSS sources whose users and groups all show up when enumerated.
ENUMERABLE_NSS_SOURCES: Final = frozenset({"files", "systemd", "db", "altfiles"})
#: The kernel's per-UID key accounting.
KEY_USERS: Final = "/proc/key-users"
#: What a keyring link costs its owner's quota (``KEYQUOTA_LINK_BYTES``, security/keys/internal.h).
_KEYRING_LINK_BYTES: Final = 4
#: What a new anonymous session keyring costs: its name, "_ses", and the NUL.
_SESSION_KEYRING_BYTES: Final = len("_ses") + 1

_LOCK_FLAGS: Final = os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
#: Deeper trees under /dev/shm are not walked (a handler has its own /dev/shm anyway).
_MAX_DEPTH: Final = 64
_IPC_RMID: Final = 0
_IPC_STAT: Final = 2
#: Bigger than any of glibc's shmid_ds, msqid_ds and semid_ds.
_IPC_DS_SIZE: Final = 512
_SYSTEMD_TRUE: Final = frozenset({"1", "yes", "y", "true", "t", "on"})
_SYSTEMD_FALSE: Final = frozenset({"0", "no", "n", "false", "f", "off"})


def _fail(action: str, path: str, error: OSError) -> NoReturn:
    """Raise the same errno again, with a message naming what failed on which path."""
    msg = f"{action} {path}: {error.strerror}"
    raise OSError(error.errno, msg) from None


# --- lease locks ------------------------------------------------------------------------------


@attrs.define(eq=False)
class LeaseLock:
    """An acquired lease: the open, ``flock``-ed descriptors of its lock files.

    Attributes:
        uid: the leased UID (the GID has the same number).
        path: our lock file.
        fd: its descriptor; -1 once released.
        systemd_fd: the descriptor of systemd's lock file, or None when that directory does not
            exist (or, for a stale lease, when systemd now holds that UID).
        systemd_path: systemd's lock file, when ``systemd_fd`` is held.
    """

    uid: int
    path: str
    fd: int
    systemd_fd: int | None
    systemd_path: str | None = None


def _lock(path: str) -> int | None:
    """Open (creating) and ``flock`` one lock file; None when another holder has it."""
    while True:
        try:
            fd = os.open(path, _LOCK_FLAGS, 0o600)
        except OSError as error:
            _fail("open", path, error)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as error:
            os.close(fd)
            _fail("lock", path, error)
        try:
            st = os.fstat(fd)
        except OSError as error:
            os.close(fd)
            _fail("stat", path, error)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            msg = f"lock {path}: not a regular file"
            raise OSError(errno.EINVAL, msg)
        if st.st_nlink > 0:
            return fd
        # We locked a file its holder unlinked between our open and our flock: that file is
        # nobody's any more, and the name may already be a new file. Try again.
        os.close(fd)


def _write(fd: int, path: str, data: bytes) -> None:
    """Replace a lock file's content (pwrite, then cut what is left of a longer old record)."""
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
        os.ftruncate(fd, len(data))
    except OSError as error:
        _fail("write", path, error)


def _encode(record: Mapping[str, object]) -> bytes:
    return (json.dumps(dict(record), sort_keys=True) + "\n").encode()


def _make_directory(directory: str) -> None:
    if os.path.isdir(directory):
        return
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        os.chmod(directory, 0o755)  # whatever the umask
    except OSError as error:
        _fail("mkdir", directory, error)


def _unlink_and_close(path: str, fd: int) -> None:
    # Unlink while still holding the lock, as systemd does: a process that opened the name before
    # the unlink gets the lock only after our close, and then sees st_nlink == 0 and retries.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        _fail("unlink", path, error)
    finally:
        os.close(fd)


def abandon(lock: LeaseLock) -> None:
    """Let go of a lease without giving it up: close the descriptors and keep the files, so
    the lease is stale for the next start, which reclaims it (kills its cgroup, removes what
    it left under /run, clears its keys). For a UID kept because its teardown failed. Idempotent.
    """
    if lock.systemd_fd is not None:
        systemd_fd, lock.systemd_fd = lock.systemd_fd, None
        os.close(systemd_fd)
    if lock.fd >= 0:
        fd, lock.fd = lock.fd, -1
        os.close(fd)


def acquire(
    uid: int,
    record: Mapping[str, object],
    *,
    directory: str = LEASE_DIRECTORY,
    systemd_directory: str = SYSTEMD_DIRECTORY,
) -> LeaseLock | None:
    """Lease ``uid`` on this host: take its locks and write ``record`` into our lock file.

    Our lock file is ``directory/<uid>`` (the directory is made, 0755, if missing); systemd's
    ``systemd_directory/<uid>`` is locked too when that directory exists, as systemd's own
    DynamicUser does, so neither hands out a UID the other holds. The record is JSON, not
    fsynced (``/run`` is tmpfs: it dies with the boot, and so do the leases).

    Args:
        uid: the UID to lease.
        record: the lease record (JSON types only).
        directory: our lock directory.
        systemd_directory: systemd's lock directory.

    Returns:
        The held lock, or None when another open file (another process, or another lease of
        this one) holds either lock; nothing is left taken then.

    Raises:
        OSError: the directory or a lock file cannot be made, opened, locked or written; the
            message names the path.
        TypeError: the record is not JSON-serializable.
    """
    data = _encode(record)
    _make_directory(directory)
    path = os.path.join(directory, str(uid))
    fd = _lock(path)
    if fd is None:
        return None
    lock = LeaseLock(uid, path, fd, None)
    try:
        if os.path.isdir(systemd_directory):
            systemd_path = os.path.join(systemd_directory, str(uid))
            systemd_fd = _lock(systemd_path)
            if systemd_fd is None:
                release(lock)
                return None
            lock.systemd_fd, lock.systemd_path = systemd_fd, systemd_path
        _write(fd, path, data)
    except BaseException:
        release(lock)
        raise
    return lock


def update(lock: LeaseLock, record: Mapping[str, object]) -> None:
    """Rewrite a held lease's record (once the invocation's cgroup is known, say).

    Raises:
        ValueError: the lock was released.
        OSError: the file cannot be written.
    """
    if lock.fd < 0:
        msg = f"lease of UID {lock.uid} ({lock.path}) is already released"
        raise ValueError(msg)
    _write(lock.fd, lock.path, _encode(record))


def release(lock: LeaseLock) -> None:
    """Give a lease up: unlink our lock file and systemd's, then close them. Idempotent.

    Raises:
        OSError: a file cannot be unlinked (the descriptors are closed all the same).
    """
    if lock.fd < 0:
        return
    try:
        if lock.systemd_fd is not None and lock.systemd_path is not None:
            systemd_fd, lock.systemd_fd = lock.systemd_fd, None
            _unlink_and_close(lock.systemd_path, systemd_fd)
    finally:
        fd, lock.fd = lock.fd, -1
        _unlink_and_close(lock.path, fd)


# --- crash leftovers --------------------------------------------------------------------------


@attrs.define(eq=False)
class StaleLease:
    """A lease file whose owner is gone; we hold its lock now.

    The caller kills whatever still runs of the lease, then calls :func:`release` on ``lock``.

    Attributes:
        lock: the lock, held by us.
        record: the lease record, or None when it cannot be read.
        problem: why the record is None (empty file, not JSON, not an object).
    """

    lock: LeaseLock
    record: dict[str, object] | None
    problem: str | None = None


def _uid_name(name: str) -> int | None:
    """The UID a lock file's name stands for, if it is a canonical decimal UID."""
    if not name.isascii() or not name.isdigit() or str(int(name)) != name:
        return None
    uid = int(name)
    return uid if uid < 0xFFFFFFFF else None


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_record(fd: int, path: str) -> tuple[dict[str, object] | None, str | None]:
    try:
        data = _read_all(fd)
    except OSError as error:
        return None, f"read {path}: {error.strerror}"
    if not data.strip():
        return None, f"{path} is empty (a lease being made, or a crash before its record)"
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{path} is not JSON: {error}"
    if not isinstance(record, dict):
        return None, f"{path} holds a JSON {type(record).__name__}, not an object"
    return record, None


def _try_stale(path: str) -> int | None:
    """Lock an existing lease file: its descriptor when we got the lock; None when the file
    vanished or was released meanwhile. Raises BlockingIOError when someone holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as error:
        _fail("open", path, error)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError as error:
        os.close(fd)
        _fail("lock", path, error)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        msg = f"lock {path}: not a regular file"
        raise OSError(errno.EINVAL, msg)
    if st.st_nlink == 0:
        os.close(fd)  # released between our listing and our lock: free, not stale
        return None
    return fd


def _held_elsewhere(path: str) -> bool:
    """Whether another open file holds the lock of ``path`` (a shared lock, dropped at once,
    is enough to tell; it never deletes or writes the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False  # gone, or a symlink (systemd's direct: links): no lock there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as error:
        _fail("lock", path, error)
    finally:
        os.close(fd)
    return False


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as error:
        _fail("list", directory, error)


def find_stale(
    *, directory: str = LEASE_DIRECTORY, systemd_directory: str = SYSTEMD_DIRECTORY
) -> tuple[list[StaleLease], set[int]]:
    """Find the leases of a crashed activator, and the UIDs live processes hold.

    Each file of ``directory`` whose lock we can take is stale: it is returned with its lock held
    by us (and systemd's lock of that UID too, when ``systemd_directory`` exists and nobody holds
    it), for the caller to kill what still runs of it and then :func:`release` it. A file whose
    lock another open file holds (another activator, or a lease of this process) puts its UID
    in the returned set; so does each file of ``systemd_directory`` whose lock is held (systemd's
    own dynamic users). systemd's files are never written here, and none is deleted but the
    ones this call locks for stale leases, by their :func:`release`. Names that are not UIDs
    are logged and left alone.

    Returns:
        (the stale leases, the UIDs leased elsewhere); a UID is never in both.

    Raises:
        OSError: a directory or lock file cannot be read or locked (the message names it).
    """
    stale: list[StaleLease] = []
    elsewhere: set[int] = set()
    has_systemd = os.path.isdir(systemd_directory)
    try:
        for name in sorted(_listdir(directory)):
            uid = _uid_name(name)
            path = os.path.join(directory, name)
            if uid is None:
                logger.warning("%s: not a UID, left alone", path)
                continue
            try:
                fd = _try_stale(path)
            except BlockingIOError:
                elsewhere.add(uid)
                continue
            if fd is None:
                continue
            lock = LeaseLock(uid, path, fd, None)
            record, problem = _read_record(fd, path)
            stale.append(StaleLease(lock, record, problem))
            if has_systemd:
                # Hold systemd's lock too until the leftovers are gone, so systemd's DynamicUser
                # cannot hand the UID out while they run (systemd does not look at processes).
                systemd_path = os.path.join(systemd_directory, name)
                systemd_fd = _lock(systemd_path)
                if systemd_fd is None:
                    logger.warning(
                        "%s: systemd holds UID %d, which a crashed lease held", path, uid
                    )
                else:
                    lock.systemd_fd, lock.systemd_path = systemd_fd, systemd_path
        if has_systemd:
            ours = {item.lock.uid for item in stale}
            for name in _listdir(systemd_directory):
                uid = _uid_name(name)
                if uid is None or uid in ours:
                    continue  # systemd keeps "direct:" symlinks here too
                if _held_elsewhere(os.path.join(systemd_directory, name)):
                    elsewhere.add(uid)
    except BaseException:
        # Drop the locks but keep the files: their records are needed to reclaim them later.
        for item in stale:
            os.close(item.lock.fd)
            if item.lock.systemd_fd is not None:
                os.close(item.lock.systemd_fd)
        raise
    return stale, elsewhere


# --- in-use probes ----------------------------------------------------------------------------


def _in_range(values: Iterable[int], first: int, last: int) -> Iterator[int]:
    return (value for value in values if first <= value <= last)


def _status_ids(data: bytes) -> Iterator[int]:
    """The UIDs and GIDs of one /proc/PID/status: real, effective, saved, filesystem, groups."""
    for key in (b"\nUid:", b"\nGid:", b"\nGroups:"):
        start = data.find(key)
        if start < 0:
            continue
        end = data.find(b"\n", start + 1)
        for field in data[start + len(key) : end if end >= 0 else None].split():
            yield int(field)


def _read_proc(name: str) -> bytes | None:
    """One /proc file, whole; None when its process is gone."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as error:
        _fail("open", name, error)
    try:
        chunks = []
        while chunk := os.read(fd, 16384):
            chunks.append(chunk)
    except ProcessLookupError:
        return None
    except OSError as error:
        _fail("read", name, error)
    finally:
        os.close(fd)
    return b"".join(chunks)


def process_ids(first: int, last: int) -> set[int]:
    """The IDs of ``[first, last]`` some process runs with (any UID or GID field, or a
    supplementary group). A process that exits during the scan is skipped.

    Threads are not looked at one by one: glibc keeps every thread's IDs the same, and only a
    privileged raw ``setresuid`` system call could set one thread apart.
    """
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError as error:
        _fail("list", "/proc", error)
    for name in entries:
        if name.isdigit() and (data := _read_proc(f"/proc/{name}/status")) is not None:
            found.update(_in_range(_status_ids(data), first, last))
    return found


@attrs.frozen
class SysvObject:
    """One SysV IPC object of /proc/sysvipc: its kind (shm, msg, sem), id and owners."""

    kind: str
    id: int
    uid: int
    gid: int
    cuid: int
    cgid: int

    def owners(self) -> tuple[int, int, int, int]:
        """Owner and creator, UID and GID."""
        return (self.uid, self.gid, self.cuid, self.cgid)


def sysv_objects(directory: str = SYSVIPC_DIRECTORY) -> list[SysvObject]:
    """Every SysV shared memory segment, message queue and semaphore set of this IPC namespace,
    segments marked for removal but still attached included."""
    objects: list[SysvObject] = []
    for kind, id_column in (("shm", "shmid"), ("msg", "msqid"), ("sem", "semid")):
        path = f"{directory}/{kind}"
        try:
            data = _read_small(path)
        except FileNotFoundError:
            continue  # a kernel without SysV IPC
        except OSError as error:
            _fail("read", path, error)
        # Raw reads: called at every release, and a table is usually only its header line.
        lines = data.decode("ascii", "replace").splitlines()
        if len(lines) < 2:
            continue
        header = lines[0].split()
        columns = [header.index(name) for name in (id_column, "uid", "gid", "cuid", "cgid")]
        for line in lines[1:]:
            fields = line.split()
            if len(fields) < len(header):
                continue
            ipc_id, uid, gid, cuid, cgid = (int(fields[column]) for column in columns)
            objects.append(SysvObject(kind, ipc_id, uid, gid, cuid, cgid))
    return objects


def _read_small(path: str) -> bytes:
    """A whole (small, /proc) file in a few raw reads, without a Python file object."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _unescape_mount_point(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def is_mqueue_mount(directory: str) -> bool:
    """Whether an mqueue filesystem is mounted on ``directory`` (per /proc/self/mountinfo)."""
    wanted = os.path.normpath(directory)
    try:
        with open("/proc/self/mountinfo") as file:
            lines = file.read().splitlines()
    except OSError as error:
        _fail("read", "/proc/self/mountinfo", error)
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if fields[separator + 1] == "mqueue" and _unescape_mount_point(fields[4]) == wanted:
            return True
    return False


def _open_directory(name: str, dir_fd: int | None = None) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, dir_fd=dir_fd)


def _tree_owners(root: str) -> set[int]:
    """The owner UIDs and GIDs of everything below ``root`` (not following symlinks); entries
    that vanish during the walk are skipped; a missing root has none."""
    found: set[int] = set()
    try:
        root_fd = _open_directory(root)
    except (FileNotFoundError, NotADirectoryError):
        return found
    except OSError as error:
        _fail("open", root, error)
    stack = [(root_fd, root, 0)]
    try:
        while stack:
            fd, path, depth = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        found.update((st.st_uid, st.st_gid))
                        if stat.S_ISDIR(st.st_mode) and depth < _MAX_DEPTH:
                            try:
                                child = _open_directory(entry.name, fd)
                            except OSError:
                                continue  # gone or replaced meanwhile
                            stack.append((child, f"{path}/{entry.name}", depth + 1))
            except OSError as error:
                _fail("list", path, error)
            finally:
                os.close(fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return found


# --- kernel keys ----------------------------------------------------------------------------


@attrs.frozen
class KeyUsage:
    """One line of /proc/key-users: what the kernel charges one UID for the keys it owns.

    Attributes:
        keys: every key the UID owns (``nkeys``), its keyrings included.
        quota_keys: the keys charged to its quota (``qnkeys``).
        quota_bytes: the bytes charged to its quota (``qnbytes``): names, payloads, links.
    """

    keys: int
    quota_keys: int
    quota_bytes: int


def keyrings_only(uid: int, usage: KeyUsage | None, *, sessions: int = 0) -> bool:
    """Whether ``usage`` (of ``uid``; None: no line) is no key at all, or only the UID's two bare
    user keyrings (see the module docstring).

    With ``sessions``, up to that many empty anonymous session keyrings (``_ses``, 5 bytes
    each) are allowed besides: a handler's own, which the kernel frees only after an RCU grace
    period and its key garbage collector have run, measured at 60-80 ms after the handler was
    reaped. Nothing is reachable through one: no process holds it, nothing links it, and it
    holds nothing (anything in it would add bytes).
    """
    if usage is None:
        return True
    digits = len(str(uid))
    names = len("_uid.") + digits + 1 + len("_uid_ses.") + digits + 1
    if usage.keys != usage.quota_keys:
        return False  # a key outside the quota: none of ours
    for extra in range(sessions + 1):
        keys, size = usage.keys - extra, usage.quota_bytes - extra * _SESSION_KEYRING_BYTES
        if (keys, size) == (0, 0) or (keys == 2 and names <= size <= names + _KEYRING_LINK_BYTES):
            return True
    return False


def _parse_key_user(line: bytes) -> tuple[int, KeyUsage] | None:
    """``UID: usage nkeys/nikeys qnkeys/maxkeys qnbytes/maxbytes``; None for anything else."""
    fields = line.replace(b"/", b" ").split()
    if len(fields) != 8 or not fields[0].endswith(b":"):
        return None
    try:
        uid = int(fields[0][:-1])
        usage = KeyUsage(int(fields[2]), int(fields[4]), int(fields[6]))
    except ValueError:
        return None
    return uid, usage


def _read_key_users(path: str) -> bytes:
    # Missing: a kernel without keys. Read with os.read: 27 µs against 32 µs through open().
    return _read_proc(path) or b""


def key_users(path: str = KEY_USERS) -> dict[int, KeyUsage]:
    """Every UID that owns a kernel key, with what it is charged.

    Raises:
        OSError: the file cannot be read (a missing one is a kernel without keys: empty).
    """
    found: dict[int, KeyUsage] = {}
    for line in _read_key_users(path).splitlines():
        if (parsed := _parse_key_user(line)) is not None:
            found[parsed[0]] = parsed[1]
    return found


def key_usage(uid: int, path: str = KEY_USERS) -> KeyUsage | None:
    """What ``uid`` is charged for its keys, or None when it owns none.

    One read of /proc/key-users and a search for the UID's line (the kernel prints it as
    ``%5u:``), without parsing the other lines.
    """
    data = b"\n" + _read_key_users(path)
    start = data.find(b"\n" + str(uid).rjust(5).encode() + b":")
    if start < 0:
        return None
    end = data.find(b"\n", start + 1)
    parsed = _parse_key_user(data[start + 1 : end if end >= 0 else None])
    return None if parsed is None else parsed[1]


def key_count(uid: int, path: str = KEY_USERS) -> int:
    """How many kernel keys ``uid`` owns (``nkeys``), its user keyrings included."""
    usage = key_usage(uid, path)
    return 0 if usage is None else usage.keys


def has_keys(uid: int, path: str = KEY_USERS, *, sessions: int = 0) -> bool:
    """Whether ``uid`` owns a kernel key other than its bare user keyrings (and ``sessions``
    empty session keyrings, see :func:`keyrings_only`).

    One read of /proc/key-users: 30 µs on the development machine (28 lines; the kernel's
    side dominates), 110 µs for a 4336-line file (every UID of the default pool).
    """
    return not keyrings_only(uid, key_usage(uid, path), sessions=sessions)


def key_ids(first: int, last: int, path: str = KEY_USERS) -> set[int]:
    """The UIDs of ``[first, last]`` that own a kernel key other than their bare keyrings."""
    return {
        uid
        for uid, usage in key_users(path).items()
        if first <= uid <= last and not keyrings_only(uid, usage)
    }


def ipc_ids(
    first: int,
    last: int,
    *,
    shm_directory: str = SHM_DIRECTORY,
    mqueue_directory: str = MQUEUE_DIRECTORY,
) -> set[int]:
    """The IDs of ``[first, last]`` owning an IPC object: SysV shm, msg or sem (owner or creator,
    UID or GID), anything under ``shm_directory``, a message queue in ``mqueue_directory`` (only
    when an mqueue filesystem is mounted there: POSIX queues are invisible otherwise), a kernel
    key other than the UID's bare user keyrings (:func:`key_ids`)."""
    found = key_ids(first, last)
    for obj in sysv_objects():
        found.update(_in_range(obj.owners(), first, last))
    found.update(_in_range(_tree_owners(shm_directory), first, last))
    if os.path.isdir(mqueue_directory) and is_mqueue_mount(mqueue_directory):
        found.update(_in_range(_tree_owners(mqueue_directory), first, last))
    return found


def nss_per_uid_needed(path: str = "/etc/nsswitch.conf") -> bool:
    """Whether the passwd or group line of nsswitch.conf names a source that may not enumerate
    (anything but files, systemd, db and altfiles). No file means glibc's default: files."""
    try:
        with open(path) as file:
            text = file.read()
    except FileNotFoundError:
        return False
    except OSError as error:
        _fail("read", path, error)
    for line in text.splitlines():
        database, _, sources = line.split("#", 1)[0].partition(":")
        if database.strip() not in {"passwd", "group"}:
            continue
        for source in sources.split():
            if not source.startswith("[") and source not in ENUMERABLE_NSS_SOURCES:
                return True
    return False


def nss_ids(first: int, last: int, *, per_uid: bool, skip: Iterable[int] = ()) -> set[int]:
    """The IDs of ``[first, last]`` NSS knows: users, groups, users' primary groups.

    Enumerates both databases; with ``per_uid``, also asks ``getpwuid``/``getgrgid`` for each
    ID not found so far and not in ``skip`` (for sources that cannot enumerate).
    """
    found: set[int] = set()
    for user in pwd.getpwall():
        found.update(_in_range((user.pw_uid, user.pw_gid), first, last))
    for group in grp.getgrall():
        found.update(_in_range((group.gr_gid,), first, last))
    if per_uid:
        known = found | set(skip)
        for number in range(first, last + 1):
            if number not in known and _nss_knows(number):
                found.add(number)
    return found


def _nss_knows(number: int) -> bool:
    try:
        pwd.getpwuid(number)
    except KeyError:
        pass
    else:
        return True
    try:
        grp.getgrgid(number)
    except KeyError:
        return False
    return True


def scan(
    first: int,
    last: int,
    *,
    shm_directory: str = SHM_DIRECTORY,
    mqueue_directory: str = MQUEUE_DIRECTORY,
    per_uid_nss: bool | None = None,
) -> dict[int, SkipReason]:
    """Check every UID of ``[first, last]`` at once, one pass per source.

    Args:
        first, last: the range, both included.
        shm_directory, mqueue_directory: where POSIX IPC objects live.
        per_uid_nss: also look each UID up in NSS (see the module docstring); None decides from
            /etc/nsswitch.conf.

    Returns:
        The UIDs in use, each with the first reason found, in the order PROCESS, IPC, NSS.
        Free UIDs are absent. (A lock is not looked at here: :func:`acquire` is the test.)
    """
    found: dict[int, SkipReason] = dict.fromkeys(process_ids(first, last), SkipReason.PROCESS)
    for number in ipc_ids(
        first, last, shm_directory=shm_directory, mqueue_directory=mqueue_directory
    ):
        found.setdefault(number, SkipReason.IPC)
    if per_uid_nss is None:
        per_uid_nss = nss_per_uid_needed()
    for number in nss_ids(first, last, per_uid=per_uid_nss, skip=found):
        found.setdefault(number, SkipReason.NSS)
    return found


def probe_many(
    uids: Iterable[int],
    *,
    shm_directory: str = SHM_DIRECTORY,
    mqueue_directory: str = MQUEUE_DIRECTORY,
    per_uid_nss: bool | None = None,
) -> dict[int, SkipReason | None]:
    """Check a batch of UIDs with one pass per source, as :func:`scan` does (one pass costs
    about what one :func:`probe` does: the /proc walk dominates both); per-UID NSS lookups, when
    wanted (None decides from /etc/nsswitch.conf), only for the batch.

    Returns:
        Each UID of the batch with the first reason it is in use, or None when it is free.
    """
    wanted = sorted(set(uids))
    if not wanted:
        return {}
    found = scan(
        wanted[0],
        wanted[-1],
        shm_directory=shm_directory,
        mqueue_directory=mqueue_directory,
        per_uid_nss=False,
    )
    result = {uid: found.get(uid) for uid in wanted}
    if per_uid_nss is None:
        per_uid_nss = nss_per_uid_needed()
    if per_uid_nss:
        for uid in wanted:
            if result[uid] is None and _nss_knows(uid):
                result[uid] = SkipReason.NSS
    return result


def probe(
    uid: int, *, shm_directory: str = SHM_DIRECTORY, mqueue_directory: str = MQUEUE_DIRECTORY
) -> SkipReason | None:
    """Check one UID fully: processes, IPC, then NSS (``getpwuid``, ``getgrgid``, and the
    primary groups of enumerated users).

    Returns:
        The first reason it is in use, or None when it is free (of everything but locks).
    """
    if process_ids(uid, uid):
        return SkipReason.PROCESS
    if ipc_ids(uid, uid, shm_directory=shm_directory, mqueue_directory=mqueue_directory):
        return SkipReason.IPC
    if _nss_knows(uid) or any(user.pw_gid == uid for user in pwd.getpwall()):
        return SkipReason.NSS
    return None


# --- RemoveIPC ----------------------------------------------------------------------------------


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    libc.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    libc.semctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return libc


def _sysv_ctl(libc: ctypes.CDLL, kind: str, ipc_id: int, command: int, buffer: object) -> int:
    if kind == "shm":
        result: int = libc.shmctl(ipc_id, command, buffer)
    elif kind == "msg":
        result = libc.msgctl(ipc_id, command, buffer)
    else:
        result = libc.semctl(ipc_id, 0, command, buffer)
    return result


def _remove_sysv(libc: ctypes.CDLL, obj: SysvObject, uid: int) -> bool:
    """Remove one object if it still is the UID's (its id may have been reused since we read
    /proc/sysvipc); False when it is gone or someone else's now."""
    buffer = ctypes.create_string_buffer(_IPC_DS_SIZE)
    if _sysv_ctl(libc, obj.kind, obj.id, _IPC_STAT, buffer) < 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.EIDRM):
            return False
        msg = f"stat {obj.kind} {obj.id}: {os.strerror(code)}"
        raise OSError(code, msg)
    # struct ipc_perm opens every *_ds: key, uid, gid, cuid, cgid (4 bytes each).
    owners = (ctypes.c_uint32 * 5).from_buffer(buffer)[1:5]
    if uid not in owners:
        return False
    if _sysv_ctl(libc, obj.kind, obj.id, _IPC_RMID, None) < 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.EIDRM):
            return False
        msg = f"remove {obj.kind} {obj.id}: {os.strerror(code)}"
        raise OSError(code, msg)
    return True


def _remove_owned(fd: int, path: str, uid: int, depth: int) -> int:
    """Remove what ``uid`` owns (UID or GID) below the directory open as ``fd``, depth first,
    by names relative to open directories (a swapped-in symlink leads nowhere)."""
    removed = 0
    try:
        with os.scandir(fd) as iterator:
            entries = list(iterator)
    except OSError as error:
        _fail("list", path, error)
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        owned = uid in (st.st_uid, st.st_gid)
        child_path = f"{path}/{entry.name}"
        try:
            if stat.S_ISDIR(st.st_mode):
                if depth < _MAX_DEPTH:
                    child = _open_directory(entry.name, fd)
                    try:
                        removed += _remove_owned(child, child_path, uid, depth + 1)
                    finally:
                        os.close(child)
                if owned:
                    try:
                        os.rmdir(entry.name, dir_fd=fd)
                        removed += 1
                    except OSError as error:
                        if error.errno != errno.ENOTEMPTY:
                            raise
                        logger.warning("%s: owned by UID %d, not empty, left", child_path, uid)
            elif owned:
                os.unlink(entry.name, dir_fd=fd)
                removed += 1
        except FileNotFoundError:
            continue
        except OSError as error:
            _fail("remove", child_path, error)
    return removed


def _remove_tree(root: str, uid: int) -> int:
    try:
        fd = _open_directory(root)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    except OSError as error:
        _fail("open", root, error)
    try:
        return _remove_owned(fd, root, uid, 0)
    finally:
        os.close(fd)


def remove_ipc(
    uid: int, *, shm_directory: str = SHM_DIRECTORY, mqueue_directory: str = MQUEUE_DIRECTORY
) -> int:
    """RemoveIPC= on the host, for a UID being released: remove every SysV shared memory segment,
    message queue and semaphore set it owns or created (as UID or as GID: they share the number),
    and every POSIX shared memory file and message queue (and directory) it owns.

    Call it only once no process of the UID is left, or it races with their new objects.

    Returns:
        How many objects were removed.

    Raises:
        OSError: an object cannot be removed (the message names it).
    """
    libc = _libc()
    removed = sum(_remove_sysv(libc, obj, uid) for obj in sysv_objects() if uid in obj.owners())
    removed += _remove_tree(shm_directory, uid)
    if os.path.isdir(mqueue_directory) and is_mqueue_mount(mqueue_directory):
        removed += _remove_tree(mqueue_directory, uid)
    return removed


# --- NSS --------------------------------------------------------------------------------------


def bypass_own_userdb(service: str = USERDB_SERVICE) -> None:
    """Make this process's NSS lookups (and its children's) skip activator's userdb service.

    nss-systemd reads ``$SYSTEMD_BYPASS_USERDB`` at each lookup (``userdb_start_query`` in
    systemd's ``src/shared/userdb.c``): a true boolean skips every userdb service, anything
    else is a colon-separated list of service names (socket names in /run/systemd/userdb/) to
    skip. nss-systemd never goes through the io.systemd.Multiplexer (it passes
    USERDB_EXCLUDE_NSS), so skipping our socket is enough. Call it once at start, before any
    thread does a lookup (and again with the name of any other socket this process serves);
    what activator spawns must get its own environment.
    """
    name = "SYSTEMD_BYPASS_USERDB"
    current = os.environ.get(name)
    if current is None or current.strip().lower() in _SYSTEMD_FALSE:
        os.environ[name] = service
    elif current.strip().lower() in _SYSTEMD_TRUE:
        return  # every userdb service is skipped already
    elif service not in current.split(":"):
        os.environ[name] = f"{current}:{service}" if current else service
