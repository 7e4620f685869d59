"""``python -m jgrad.cli``: the ``jgrad`` command line."""

import sys

from . import main

sys.exit(main())
