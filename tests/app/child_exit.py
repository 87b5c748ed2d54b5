"""A task module that exits when imported in a worker's child process (as a
module running argparse or ``sys.exit`` at import time would)."""

from __future__ import annotations

import multiprocessing
import sys

from ferroq import task

if multiprocessing.parent_process() is not None:
    sys.exit(3)


@task(retries=0)
def never_runs() -> str:
    """Cannot run in a child: its module exits there."""
    return "ran"
