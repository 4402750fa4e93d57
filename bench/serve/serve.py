"""``activator serve`` with the loop watch on (:mod:`activator.loopwatch`), for the bench.

Until ``activator.daemon`` passes ``instruments=loopwatch.instruments()`` to ``trio.run`` itself,
this wrapper adds them (when ``$ACTIVATOR_LOOP_WATCH`` names a file); once it does, the wrapper
changes nothing. Usage: ``python bench/serve/serve.py serve --config ...`` (the CLI's arguments).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from activator import cli, loopwatch

_trio_run = trio.run


def _run(*args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("instruments", loopwatch.instruments())
    return _trio_run(*args, **kwargs)


trio.run = _run  # type: ignore[assignment]
sys.exit(cli.main(sys.argv[1:]))
