"""``python -m activator``: the same as the ``activator`` command."""

import sys

from activator.cli import main

sys.exit(main())
