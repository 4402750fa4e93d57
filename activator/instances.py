"""Enabled template instances: which customers' units run, kept across restarts.

Rule 1: what ``activator enable`` records survives a restart of activator and nothing else: one
empty file per enabled instance unit, named after it, in ``[units] enabled_directory``
(``/etc/activator/enabled/foobar@alice.socket``). An operator (or configuration management) can
list, add and remove them with ls, touch and rm; activator reads them at start.

Rule 2: only instances of templates are enabled. The socket units of the units directories always
listen and their services start on traffic, so there is nothing to enable about them.

Rule 3: :func:`resolve` and :func:`build_instance` are pure (they read the catalog);
:class:`EnabledUnits` does the file work and blocks, so the daemon calls it in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

import attrs

from activator.catalog import Catalog, Loaded
from activator.model import SocketUnit
from activator.units import UnitName, parse_unit_name

#: The unit types an enabled instance may have.
_SUFFIXES = ("socket", "service")
#: systemd's other unit types: a name ending in one is not a customer named "alice.timer".
_OTHER_TYPES = tuple(
    f".{t}" for t in ("target", "timer", "path", "mount", "automount", "swap", "slice", "scope",
                      "device")
)  # fmt: skip


class InstanceError(Exception):
    """A name that cannot be enabled, started or stopped; the text says why, naming it."""


def resolve(text: str, catalog: Catalog | None, *, known: Iterable[str] = ()) -> UnitName:
    """The instance unit ``text`` names: ``foobar@alice.socket`` as written; ``foobar@alice``
    (or ``foobar@example.com``) without a type is the socket when a socket template
    ``foobar@.socket`` exists (or that socket is in ``known``, the enabled names), else the
    service.

    Raises:
        InstanceError: not a unit name, not an instance of a template, or a type other than
            socket and service.
    """
    if text.endswith(_OTHER_TYPES):
        msg = f"{text}: only .socket and .service units are enabled, started or stopped"
        raise InstanceError(msg)
    typed = text.endswith(tuple(f".{suffix}" for suffix in _SUFFIXES))
    try:
        name = parse_unit_name(text if typed else f"{text}.socket")
    except ValueError as error:
        msg = f"{text}: {error}"
        raise InstanceError(msg) from error
    if not typed:
        socket_template = name.template.name if name.instance else None
        has_socket = (
            catalog is not None and socket_template in catalog.templates
        ) or name.name in set(known)
        if not has_socket:
            try:  # one character longer than the .socket name checked above
                name = parse_unit_name(f"{text}.service")
            except ValueError as error:
                msg = f"{text}: {error}"
                raise InstanceError(msg) from error
    if not name.is_instance:
        msg = (
            f"{text}: not an instance of a template (foo@NAME.{name.suffix}): the units of the "
            "units directories need no enabling (sockets listen, their services start on traffic)"
        )
        raise InstanceError(msg)
    return name


def build_instance(name: UnitName, catalog: Catalog) -> tuple[Loaded, ...]:
    """Build the instance ``name`` and, for a socket, the service instance its connections
    run: what ``enable`` checks, so that a name the service cannot take (``StateDirectory=%I``
    and ``foo@..``) is refused when it is enabled, not logged at each of its connections.

    Raises:
        ConfigError: the template is unknown or broken, or either instance does not build.
    """
    loaded = catalog.instantiate(name)
    unit = loaded.unit
    if isinstance(unit, SocketUnit) and unit.activates.is_instance:
        return (loaded, catalog.instantiate(unit.activates))
    return (loaded,)


@attrs.frozen
class EnabledUnits:
    """The enabled instances, one empty file each in ``directory``."""

    directory: str

    def load(self) -> tuple[list[str], list[str]]:
        """The enabled instance names, sorted, and a warning for each file that is not one
        (left alone). A missing directory means none."""
        try:
            entries = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return [], []
        names: list[str] = []
        warnings: list[str] = []
        for entry in entries:
            if entry.startswith("."):
                continue
            path = os.path.join(self.directory, entry)
            try:
                name = parse_unit_name(entry)
            except ValueError as error:
                warnings.append(f"{path}: not a unit name ({error}); ignored")
                continue
            if not name.is_instance or name.suffix not in _SUFFIXES:
                warnings.append(f"{path}: not a socket or service instance; ignored")
                continue
            names.append(entry)
        return names, warnings

    def add(self, name: UnitName) -> bool:
        """Record ``name`` as enabled; False when it already was."""
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        try:
            fd = os.open(
                os.path.join(self.directory, name.name),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o644,
            )
        except FileExistsError:
            return False
        os.close(fd)
        self._sync()
        return True

    def remove(self, name: UnitName) -> bool:
        """Forget ``name``; False when it was not enabled."""
        try:
            os.unlink(os.path.join(self.directory, name.name))
        except FileNotFoundError:
            return False
        self._sync()
        return True

    def _sync(self) -> None:
        """Make the directory's change durable (an enable must survive a power cut)."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
