"""``python -m ferroq.cli``: the ``ferroq`` command."""

import sys

from . import main

sys.exit(main())
