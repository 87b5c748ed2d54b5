"""A script that defines a task and sends it when run as ``python jobs.py
URL``: run as ``__main__``, its task must still be found by a worker that
imports this file as the module ``jobs``."""

from __future__ import annotations

import sys

from ferroq import Queue, set_default_queue, task


@task
def double(x: int) -> int:
    """Doubles x."""
    return 2 * x


if __name__ == "__main__":
    queue = Queue(sys.argv[1])
    set_default_queue(queue)
    handle = double.send(21)
    print(double.name, handle.id)
    queue.close()
