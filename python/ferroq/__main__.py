"""``python -m ferroq``: the ``ferroq`` command."""

import sys

from .cli import main

sys.exit(main())
