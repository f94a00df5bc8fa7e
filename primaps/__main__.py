"""``python -m primaps``: the ``primaps`` command."""

import sys

from .cli import main

sys.exit(main())
