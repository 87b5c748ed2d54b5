"""A task that holds its worker until the test lets it go, so a test can
find a store with a task running in a real worker process."""

from __future__ import annotations

import os
import time

from ferroq import task


@task
def hold(flag: str, value: int) -> int:
    """Waits (up to two minutes) for the file ``flag`` to exist, then returns ``value``."""
    deadline = time.monotonic() + 120
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value
