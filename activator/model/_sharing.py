"""Which directories of a template's instance every other instance has too.

Rule 1: a directory is shared when another instance of the same template has the same path for
the same directive: the path does not depend on the instance name (``StateDirectory=foo``,
``foo/%p``), where ``foo/%i``, ``foo-%n`` or ``%N`` give each instance its own. Comparing two
instances built from the same files decides it from what the unit really resolves to, whatever
specifiers and drop-ins made it.

Rule 2: pure: two models in, a value out.

Why it matters (DESIGN.md, "Instances and the control socket"): an Accept=yes socket runs a fresh
instance per connection, each with a fresh user of its own. A directory the instances share would
then be chowned by every connection and removed by each one's end while others still use it;
systemd gives every instance of ``foo@.service`` the one dynamic user ``foo``, and so does
activator for the connections of a template with a shared directory.
"""

from __future__ import annotations

import attrs

from activator.model._units import ServiceUnit
from activator.units import SYSTEM_DIRECTORIES


@attrs.frozen
class SharedDirectories:
    """The directories an instance shares with every other instance of its template, by
    directive (names as written in the unit, relative to ``/run``, ``/var/lib``, ``/var/cache``
    and ``/var/log``)."""

    runtime: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    cache: tuple[str, ...] = ()
    logs: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.runtime or self.state or self.cache or self.logs)

    @property
    def paths(self) -> tuple[str, ...]:
        """The public paths, in the order runtime, state, cache, logs (``/var/lib/foo``)."""
        return tuple(
            f"{SYSTEM_DIRECTORIES[specifier]}/{name}"
            for specifier, names in (
                ("t", self.runtime),
                ("S", self.state),
                ("C", self.cache),
                ("L", self.logs),
            )
            for name in names
        )


def every_directory(service: ServiceUnit) -> SharedDirectories:
    """Every directory of ``service``, as shared (when there is nothing to compare with)."""
    return SharedDirectories(
        runtime=service.runtime_directory,
        state=service.state_directory,
        cache=service.cache_directory,
        logs=service.logs_directory,
    )


def shared_directories(instance: ServiceUnit, other: ServiceUnit) -> SharedDirectories:
    """The directories of ``instance`` that ``other``, another instance of the same template
    built from the same files, has too (Rule 1).

    Raises:
        ValueError: ``other`` is the same instance, or an instance of another template: the
            comparison would say nothing.
    """
    if not instance.name.is_instance or not other.name.is_instance:
        msg = f"{instance.name.name} and {other.name.name} must both be instances"
        raise ValueError(msg)
    if instance.name.template != other.name.template or instance.name == other.name:
        msg = (
            f"{other.name.name} must be another instance of {instance.name.template.name} "
            f"than {instance.name.name}"
        )
        raise ValueError(msg)

    def common(mine: tuple[str, ...], theirs: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name for name in mine if name in theirs)

    return SharedDirectories(
        runtime=common(instance.runtime_directory, other.runtime_directory),
        state=common(instance.state_directory, other.state_directory),
        cache=common(instance.cache_directory, other.cache_directory),
        logs=common(instance.logs_directory, other.logs_directory),
    )
