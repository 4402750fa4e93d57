"""ctypes wrappers for the Linux calls Python 3.11's ``os`` lacks.

Rule 1: each wrapper is the system call, nothing more: same arguments, same order, and a failure
raises :class:`OSError` with the call's errno and the path it was about (``filename``), so the
caller's message reads ``mount /var/lib/private: Permission denied``.

Rule 2: only the spawner process and its forked children import this module (it loads libc
through ctypes); the trio side never does.

The calls of the new mount API (``open_tree``, ``move_mount``, ``fsopen``, ``fsconfig``,
``fsmount``, ``mount_setattr``) and ``close_range`` have the same numbers on every architecture
Linux added them to after 5.1 (the unified syscall table, alpha aside), so they are called by
number; the older calls go through their glibc wrappers. ``keyctl`` has no glibc wrapper (it is
libkeyutils') and an older number that differs between architectures: :data:`_SYS_KEYCTL` maps
the machines Debian builds for, and anywhere else :func:`keyctl` fails with EOPNOTSUPP (never
silently: a handler must not start with a keyring it shares).
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, Final

_libc = ctypes.CDLL(None, use_errno=True)

# Namespaces (sched.h).
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWNET: Final = 0x40000000
CLONE_NEWPID: Final = 0x20000000

# mount(2) flags (sys/mount.h).
MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
MNT_DETACH: Final = 0x2

# The new mount API (linux/mount.h).
AT_FDCWD: Final = -100
AT_EMPTY_PATH: Final = 0x1000
AT_RECURSIVE: Final = 0x8000
OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x4
FSOPEN_CLOEXEC: Final = 0x1
FSMOUNT_CLOEXEC: Final = 0x1
FSCONFIG_SET_STRING: Final = 1
FSCONFIG_CMD_CREATE: Final = 6
MOUNT_ATTR_RDONLY: Final = 0x1
MOUNT_ATTR_NOSUID: Final = 0x2
MOUNT_ATTR_NODEV: Final = 0x4
MOUNT_ATTR_NOEXEC: Final = 0x8

# prctl(2) options (linux/prctl.h) and capabilities (linux/capability.h).
PR_SET_PDEATHSIG: Final = 1
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522

CLOSE_RANGE_CLOEXEC: Final = 1 << 2

# keyctl(2) operations and special keyring IDs (linux/keyctl.h).
KEYCTL_JOIN_SESSION_KEYRING: Final = 1
KEYCTL_CLEAR: Final = 7
KEY_SPEC_SESSION_KEYRING: Final = -3
KEY_SPEC_USER_KEYRING: Final = -4
KEY_SPEC_USER_SESSION_KEYRING: Final = -5

_SYS_OPEN_TREE: Final = 428
_SYS_MOVE_MOUNT: Final = 429
_SYS_FSOPEN: Final = 430
_SYS_FSCONFIG: Final = 431
_SYS_FSMOUNT: Final = 432
_SYS_CLOSE_RANGE: Final = 436
_SYS_MOUNT_SETATTR: Final = 442
#: keyctl's number by ``uname -m`` and the process's word size (a 32-bit process on a 64-bit
#: kernel uses the 32-bit table): arch/*/entry/syscalls, include/uapi/asm-generic/unistd.h.
_SYS_KEYCTL_BY_MACHINE: Final = {
    ("x86_64", 64): 250,
    ("x86_64", 32): 288,
    ("i686", 32): 288,
    ("i386", 32): 288,
    ("aarch64", 64): 219,  # the generic table, as riscv64 and loongarch64
    ("riscv64", 64): 219,
    ("loongarch64", 64): 219,
    ("aarch64", 32): 311,
    ("armv8l", 32): 311,
    ("armv7l", 32): 311,
    ("ppc64le", 64): 271,
    ("ppc64", 64): 271,
    ("s390x", 64): 280,
}
_SYS_KEYCTL: Final = _SYS_KEYCTL_BY_MACHINE.get(
    (os.uname().machine, 8 * ctypes.sizeof(ctypes.c_void_p))
)


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


# Prototypes: ctypes then converts plain ints in C, with no Python-level c_int objects per call
# (the child drops 41 capabilities one prctl at a time). prctl and syscall are variadic in C;
# passing every argument as a full word is what the x86-64 and arm64 conventions do for them.
def _function(name: str, restype: type, *argtypes: type) -> Any:
    # CDLL[name] gives a fresh function pointer each time: syscall gets one per prototype.
    function = _libc[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


_int, _long, _ulong, _uint, _str, _ptr = (
    ctypes.c_int, ctypes.c_long, ctypes.c_ulong, ctypes.c_uint, ctypes.c_char_p, ctypes.c_void_p
)  # fmt: skip
_unshare = _function("unshare", _int, _int)
_setns = _function("setns", _int, _int, _int)
_mount = _function("mount", _int, _str, _str, _str, _ulong, _str)
_umount2 = _function("umount2", _int, _str, _int)
_prctl = _function("prctl", _int, _int, _ulong, _ulong, _ulong, _ulong)
_capset = _function("capset", _int, _ptr, _ptr)
_open_tree = _function("syscall", _long, _long, _long, _str, _ulong)
_move_mount = _function("syscall", _long, _long, _long, _str, _long, _str, _ulong)
_mount_setattr = _function("syscall", _long, _long, _long, _str, _ulong, _ptr, _ulong)
_fsopen = _function("syscall", _long, _long, _str, _ulong)
_fsconfig = _function("syscall", _long, _long, _long, _ulong, _str, _str, _long)
_fsmount = _function("syscall", _long, _long, _long, _ulong, _ulong)
_close_range = _function("syscall", _long, _long, _uint, _uint, _ulong)
_keyctl = _function("syscall", _long, _long, _long, _long, _ulong, _ulong, _ulong)


def _check(result: int, filename: str | None = None) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), filename)
    return result


def _path(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_unshare(flags))


def setns(fd: int, nstype: int) -> None:
    """setns(2)."""
    _check(_setns(fd, nstype))


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    """mount(2); an error names ``target``."""
    _check(_mount(_path(source), _path(target), _path(fstype), flags, _path(data)), target)


def umount2(target: str, flags: int) -> None:
    """umount2(2); an error names ``target``."""
    _check(_umount2(_path(target), flags), target)


def open_tree(path: str, flags: int, dirfd: int = AT_FDCWD) -> int:
    """open_tree(2): a descriptor of the mount at ``path``, a detached copy with OPEN_TREE_CLONE."""
    return _check(_open_tree(_SYS_OPEN_TREE, dirfd, _path(path), flags), path)


def move_mount(from_fd: int, to_path: str, *, to_dirfd: int = AT_FDCWD) -> None:
    """move_mount(2) of the detached tree ``from_fd`` onto ``to_path``; an error names it."""
    result = _move_mount(
        _SYS_MOVE_MOUNT, from_fd, b"", to_dirfd, _path(to_path), MOVE_MOUNT_F_EMPTY_PATH
    )
    _check(result, to_path)


def mount_setattr(
    path: str, *, attr_set: int = 0, attr_clr: int = 0, recursive: bool, dirfd: int = AT_FDCWD
) -> None:
    """mount_setattr(2) on the mount at ``path`` (or, with ``path=""``, on ``dirfd`` itself)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = (AT_RECURSIVE if recursive else 0) | (AT_EMPTY_PATH if path == "" else 0)
    result = _mount_setattr(
        _SYS_MOUNT_SETATTR, dirfd, _path(path), flags, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(result, path or None)


def fsmount_tmpfs(options: dict[str, str], attr_flags: int) -> int:
    """A new tmpfs as a detached mount (fsopen, fsconfig, fsmount): its descriptor."""
    fs = _check(_fsopen(_SYS_FSOPEN, b"tmpfs", FSOPEN_CLOEXEC), "tmpfs")
    try:
        for key, value in options.items():
            result = _fsconfig(
                _SYS_FSCONFIG, fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0
            )
            _check(result, "tmpfs")
        _check(_fsconfig(_SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0), "tmpfs")
        return _check(_fsmount(_SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, attr_flags), "tmpfs")
    finally:
        os.close(fs)


def close_range_cloexec(first: int, last: int = 0xFFFFFFFF) -> None:
    """close_range(2) with CLOSE_RANGE_CLOEXEC: mark ``first..last`` close-on-exec."""
    _check(_close_range(_SYS_CLOSE_RANGE, first, last, CLOSE_RANGE_CLOEXEC))


def prctl(option: int, arg2: int = 0) -> None:
    """prctl(2) with one argument (the others zero)."""
    _check(_prctl(option, arg2, 0, 0, 0))


def clear_capabilities() -> None:
    """capset(2) with empty effective, permitted and inheritable sets, and no ambient ones."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_capset(ctypes.byref(header), ctypes.byref(data)))
    _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))


def keyctl(operation: int, arg2: int = 0, arg3: int = 0) -> int:
    """keyctl(2) with up to two integer arguments (the others zero): its result.

    ``arg2`` is a key serial or a special ID such as :data:`KEY_SPEC_USER_KEYRING`; for
    :data:`KEYCTL_JOIN_SESSION_KEYRING` 0 is the NULL name (a new anonymous keyring).
    """
    if _SYS_KEYCTL is None:
        error = errno.EOPNOTSUPP
        msg = f"keyctl: no syscall number known for {os.uname().machine}"
        raise OSError(error, msg)
    return _check(_keyctl(_SYS_KEYCTL, operation, arg2, arg3, 0, 0))


# --- seccomp: refuse keyctl(KEYCTL_SETPERM) ---------------------------------------------------

KEYCTL_SETPERM: Final = 5
_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2
_SECCOMP_RET_ALLOW: Final = 0x7FFF0000
_SECCOMP_RET_ERRNO: Final = 0x00050000
# BPF opcodes: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K.
_LD_ABS, _JEQ, _RET = 0x20, 0x15, 0x06
# offsetof(struct seccomp_data, ...): nr, arch, args[0] (its low 32 bits on little endian).
_NR, _ARCH, _ARG0_LOW = 0, 4, 16
#: The audit architectures a process of this machine can make system calls in: its own (x86_64
#: also has the x32 ABI, numbers with bit 30 set, under the same audit architecture) and the
#: 32-bit one (``int $0x80`` works from a 64-bit process: a filter that let it through would be
#: a way around itself). The keyctl numbers come from :data:`_SYS_KEYCTL_BY_MACHINE`.
_AUDIT_ARCHES: Final = {
    "x86_64": ((0xC000003E, 64, (0, 0x40000000)), (0x40000003, 32, (0,))),
    "aarch64": ((0xC00000B7, 64, (0,)), (0x40000028, 32, (0,))),
}


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def _keyctl_filter(
    arches: tuple[tuple[int, tuple[int, ...]], ...],
) -> list[tuple[int, int, int, int]]:
    """A classic BPF program: EPERM for keyctl(KEYCTL_SETPERM, ...) in any of ``arches``
    (audit architecture, keyctl numbers), every other call allowed."""
    allow, deny = (_RET, 0, 0, _SECCOMP_RET_ALLOW), (_RET, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM)
    # Jumps are relative; the program is laid out as: per arch, [LD arch, JEQ arch, LD nr,
    # JEQ n...], then ALLOW, then the argument check [LD arg0, JEQ SETPERM, DENY, ALLOW].
    blocks = [3 + len(numbers) for _, numbers in arches]
    allow_at = sum(blocks)
    check_at = allow_at + 1
    program: list[tuple[int, int, int, int]] = []
    for (arch, numbers), size in zip(arches, blocks, strict=True):
        next_block = len(program) + size
        program.append((_LD_ABS, 0, 0, _ARCH))
        program.append((_JEQ, 0, next_block - len(program) - 1, arch))
        program.append((_LD_ABS, 0, 0, _NR))
        for index, number in enumerate(numbers):
            here = len(program)
            # A keyctl number: to the argument check; else the next number (or, after the last,
            # ALLOW: the architecture matched, so no later block can).
            miss = 0 if index < len(numbers) - 1 else allow_at - here - 1
            program.append((_JEQ, check_at - here - 1, miss, number))
    program.append(allow)
    program.append((_LD_ABS, 0, 0, _ARG0_LOW))
    program.append((_JEQ, 0, 1, KEYCTL_SETPERM))
    program.append(deny)
    program.append(allow)
    return program


def deny_keyctl_setperm() -> None:
    """Install a seccomp filter that refuses ``keyctl(KEYCTL_SETPERM)`` with EPERM.

    A handler that takes the write permission on its own user keyring away makes it impossible
    to clear, for itself and for root: its UID could never be released again. Nothing else is
    filtered. Needs ``no_new_privs`` or CAP_SYS_ADMIN; inherited by every descendant, and
    never removable.

    Raises:
        OSError: EOPNOTSUPP on a machine whose numbers are not known here.
    """
    machine = os.uname().machine
    known = _AUDIT_ARCHES.get(machine) if ctypes.sizeof(ctypes.c_void_p) == 8 else None
    if known is None:
        msg = f"seccomp: keyctl numbers unknown for {machine}"
        raise OSError(errno.EOPNOTSUPP, msg)
    arches = tuple(
        (arch, tuple(flag | _SYS_KEYCTL_BY_MACHINE[(machine, bits)] for flag in flags))
        for arch, bits, flags in known
    )
    program = _keyctl_filter(arches)
    filters = (_SockFilter * len(program))(*(_SockFilter(*step) for step in program))
    fprog = _SockFprog(len(program), filters)
    _check(_prctl_ptr(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0))


_prctl_ptr = _function("prctl", _int, _int, _ulong, _ulong, _ulong, _ulong)
