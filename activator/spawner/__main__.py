"""The spawner process: ``python -m activator.spawner CONTROL_FD``.

:meth:`activator.spawner.Spawner.launch` runs this file as a script instead
(``python .../activator/spawner/__main__.py CONTROL_FD``): ``-m`` would first import the
package's ``__init__``, the trio-side client, and with it trio, which doubles the spawner's
memory and so the cost of every fork. Run as a script, this file registers the package as an
empty module of the right path, so that its private modules import without ``__init__``.
"""

import sys

if not __package__:
    import types
    from pathlib import Path

    _HERE = Path(__file__).resolve().parent
    # The script's own folder would shadow nothing, but the activator found must be this one.
    sys.path[0] = str(_HERE.parent.parent)
    import activator

    _package = types.ModuleType("activator.spawner", "The spawner process (no client).")
    _package.__path__ = [str(_HERE)]
    sys.modules["activator.spawner"] = _package
    activator.spawner = _package

from activator.spawner._server import main

sys.exit(main(sys.argv[1:]))
