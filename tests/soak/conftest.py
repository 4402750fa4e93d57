"""The soak's fixtures: the integration tests' ``server`` (a real ``activator serve``) and
``directory_name`` (unique State/Cache/Logs/Runtime directory names, removed afterwards),
re-exported so that ``tests/soak`` runs on its own (``pytest tests/soak``)."""

from __future__ import annotations

from tests.integration.conftest import directory_name
from tests.integration.serving import server

__all__ = ["directory_name", "server"]
