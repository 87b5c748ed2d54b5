"""The ``ferroq`` command: ``ferroq worker`` and ``ferroq stats``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _url(arg: Optional[str]) -> str:
    url = arg or os.environ.get("FERROQ_URL")
    if not url:
        raise SystemExit("ferroq: give --url or set FERROQ_URL")
    return url


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ferroq`` command."""
    parser = argparse.ArgumentParser(prog="ferroq", description="ferroq task queue")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a scheduler until Ctrl+C / SIGTERM")
    w.add_argument("modules", nargs="+", help="modules or packages holding @task functions")
    w.add_argument("--url", help="store URL (default: $FERROQ_URL)")
    w.add_argument("--concurrency", "-c", type=int, default=4)
    w.add_argument("--queue", "-q", action="append", dest="queues", help="queue to serve")
    w.add_argument("--lease", type=float, default=30.0, help="lease seconds")
    w.add_argument("--grace", type=float, default=10.0, help="seconds to finish on stop")
    s = sub.add_parser("stats", help="print task counts per queue and status")
    s.add_argument("--url", help="store URL (default: $FERROQ_URL)")
    args = parser.parse_args(argv)

    from . import Queue, QueueScheduler, discover, set_default_queue
    from ._types import STATUSES

    if args.command == "stats":
        with Queue(_url(args.url)) as q:
            stats = q.stats()
        print(f"{'queue':<20}" + "".join(f"{s:>10}" for s in STATUSES))
        for name, counts in sorted(stats.items()):
            print(f"{name:<20}" + "".join(f"{counts[s]:>10}" for s in STATUSES))
        return 0

    logging.basicConfig(
        level=os.environ.get("FERROQ_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.path.insert(0, os.getcwd())
    queue = Queue(_url(args.url))
    set_default_queue(queue)
    found = [t for m in args.modules for t in discover(m)]
    scheduler = QueueScheduler(
        queue, concurrency=args.concurrency, queues=args.queues, lease=args.lease
    )
    logging.getLogger("ferroq").info(
        "worker %s serving %s with %d task(s), concurrency %d",
        scheduler.worker_id,
        ",".join(scheduler.queues),
        len(found),
        args.concurrency,
    )
    scheduler.run_forever(grace=args.grace)
    queue.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
