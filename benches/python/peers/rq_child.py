"""One RQ ``SimpleWorker`` (jobs run in this process, no fork per job) on
the bench queue, that exits when the adapter process that started it is
gone (a killed bench worker must take its RQ workers with it)."""

from __future__ import annotations

import os
import sys
import threading
import time


def _exit_with_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.05)


def main() -> None:
    url, queue_name, parent = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    from redis import Redis
    from rq import Queue, SimpleWorker

    conn = Redis.from_url(url)
    worker = SimpleWorker([Queue(queue_name, connection=conn)], connection=conn)
    worker.work(with_scheduler=False, logging_level="WARNING")


if __name__ == "__main__":
    main()
