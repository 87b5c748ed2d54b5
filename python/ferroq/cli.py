"""The ``ferroq`` command: ``ferroq worker``, ``ferroq stats``,
``ferroq check`` and ``ferroq backup``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Optional, Sequence
from urllib.parse import unquote

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["main"]


class _CliError(Exception):
    """An error reported as one line on stderr with exit code 1."""


def _existing(url: str) -> Queue:
    """Opens the store at ``url`` for a command that only reads or copies
    it: a path where no store exists is an error (opening it would create
    an empty store, and a typo would report an empty queue)."""
    from .queue import Queue

    base = url.strip().split("?", 1)[0]
    if not base.startswith(("memory:", "postgres://", "postgresql://")):
        path = unquote(base[len("sqlite://"):] if base.startswith("sqlite://") else base)
        if not os.path.isfile(os.path.join(path, "shard-000.db")):
            raise _CliError(f"no ferroq store at {path!r} (check --url or $FERROQ_URL)")
    return Queue(url)


def _url(arg: Optional[str]) -> str:
    url = arg or os.environ.get("FERROQ_URL")
    if not url:
        raise SystemExit("ferroq: give --url or set FERROQ_URL")
    return url


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ferroq`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="ferroq", description="ferroq task queue")
    parser.add_argument("--version", action="version", version=f"ferroq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a scheduler until Ctrl+C / SIGTERM")
    w.add_argument("modules", nargs="+", help="modules or packages holding @task functions")
    w.add_argument("--url", help="store URL (default: $FERROQ_URL)")
    w.add_argument("--concurrency", "-c", type=int, default=4)
    w.add_argument("--queue", "-q", action="append", dest="queues", help="queue to serve")
    w.add_argument("--lease", type=float, default=30.0, help="lease seconds")
    w.add_argument("--grace", type=float, default=10.0, help="seconds to finish on stop")
    w.add_argument(
        "--mode",
        choices=["thread", "process", "asyncio"],
        default="thread",
        help="how tasks run: worker threads, child processes (hard timeouts), or an event loop",
    )
    s = sub.add_parser("stats", help="print task counts per queue and status")
    s.add_argument("--url", help="store URL (default: $FERROQ_URL)")
    b = sub.add_parser(
        "backup", help="copy a live SQLite store, consistently, into a new directory"
    )
    b.add_argument("dest", help="directory to create (must not exist or be empty)")
    b.add_argument("--url", help="store URL (default: $FERROQ_URL)")
    c = sub.add_parser(
        "check", help="check a store for damage, shard by shard (exit 1 if any is found)"
    )
    c.add_argument("--url", help="store URL (default: $FERROQ_URL)")
    args = parser.parse_args(argv)

    from . import FerroqError

    try:
        return _run(args)
    except (FerroqError, _CliError) as e:
        print(f"ferroq: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from . import Queue, QueueScheduler, discover, set_default_queue
    from ._types import STATUSES

    if args.command == "check":
        with _existing(_url(args.url)) as q:
            report = q.check()
        for shard in report:
            print(f"{'ok' if shard.ok else 'DAMAGED':<8} {shard.path}")
            for m in shard.messages:
                print(f"         {m}")
        return 0 if all(s.ok for s in report) else 1

    if args.command == "backup":
        with _existing(_url(args.url)) as q:
            q.backup(args.dest)
        print(f"backed up to {args.dest}")
        return 0

    if args.command == "stats":
        with _existing(_url(args.url)) as q:
            stats = q.stats()
            workers = q.workers()
        serving: dict[str, int] = {}
        for worker in workers:
            for name in worker.queues:
                serving[name] = serving.get(name, 0) + 1
        print(f"{'queue':<20}" + "".join(f"{s:>10}" for s in STATUSES) + f"{'workers':>10}")
        for name, counts in sorted(stats.items()):
            print(
                f"{name:<20}"
                + "".join(f"{counts[s]:>10}" for s in STATUSES)
                + f"{serving.get(name, 0):>10}"
            )
        unserved = {n: c["queued"] for n, c in sorted(stats.items()) if c["queued"]}
        unserved = {n: c for n, c in unserved.items() if n not in serving}
        for name, count in unserved.items():
            print(
                f"warning: queue {name!r} has {count} queued task(s) and no worker serving it "
                f"(start one: ferroq worker <modules> --queue {name!r})",
                file=sys.stderr,
            )
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
        queue, concurrency=args.concurrency, queues=args.queues, lease=args.lease, mode=args.mode
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
