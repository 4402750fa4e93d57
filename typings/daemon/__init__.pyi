"""The part of python-daemon (3.x, PEP 3143) activator uses; the package ships no types."""

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Protocol

class _ContextManager(Protocol):
    def __enter__(self) -> object: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> object: ...

class DaemonContext:
    def __init__(
        self,
        chroot_directory: str | None = ...,
        working_directory: str = ...,
        umask: int = ...,
        uid: int | None = ...,
        gid: int | None = ...,
        initgroups: bool = ...,
        prevent_core: bool = ...,
        detach_process: bool | None = ...,
        files_preserve: Sequence[object] | None = ...,
        pidfile: _ContextManager | None = ...,
        stdin: IO[Any] | None = ...,
        stdout: IO[Any] | None = ...,
        stderr: IO[Any] | None = ...,
        signal_map: Mapping[int, object] | None = ...,
    ) -> None: ...
    @property
    def is_open(self) -> bool: ...
    def open(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> DaemonContext: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
