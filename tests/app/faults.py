"""Tasks for the fault tests (importable by spawned worker processes)."""

from __future__ import annotations

import os
import time

from ferroq import task


@task(timeout=60)
def linger(path: str) -> str:
    """Writes this process's pid to ``path``, then runs for a long time."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    return "lingered"
