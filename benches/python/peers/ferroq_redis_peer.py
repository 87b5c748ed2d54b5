"""ferroq on Redis: the same adapter as ``ferroq`` (``Queue(url)``,
``@task``, ``q.send(...)``, ``handle.result()``, a
``QueueScheduler(queue, concurrency=4)`` worker), with the store in the
Redis that ``$FERROQ_BENCH_REDIS_URL`` names (``scripts/bench`` starts
``scripts/redis``: append-only file, ``appendfsync everysec``), under a key
prefix of its own for each case."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ferroq import Queue

from . import ferroq_peer

#: The Redis the benchmark uses (scripts/bench sets it).
REDIS_URL = os.environ.get("FERROQ_BENCH_REDIS_URL", "redis://127.0.0.1:63799/0")


def redis_settings(url: str) -> dict[str, str]:
    """The server's persistence settings, read back from it, under the
    table's two durability columns: ``synchronous`` (when a write reaches
    the disk: ``appendfsync``) and ``journal`` (append-only file or not)."""
    try:
        import redis

        r = redis.Redis.from_url(url)
        got = {k: str(v) for k, v in r.config_get("append*").items()}
        return {
            "synchronous": f"appendfsync {got.get('appendfsync', '?')}",
            "journal": "AOF" if got.get("appendonly") == "yes" else "RDB snapshots only",
        }
    except Exception as e:  # the figure stands without the settings
        return {"synchronous": f"? ({type(e).__name__})", "journal": "?"}


class Adapter(ferroq_peer.Adapter):
    name = "ferroq-redis"
    notes = [
        "ferroq-redis: the ferroq adapter on a Redis store (one prefix per case); a send is "
        "acknowledged once Redis applied it: durable across a Redis crash only as far as "
        "its appendfsync says (everysec here).",
    ]

    def __init__(self, root: Path, role: str, shards: int = 1, processes: int = 1) -> None:
        ferroq_peer.Peer.__init__(self, root, role)
        self.processes = processes
        self.dir = root / "ferroq-store"  # unused: nothing on local disk
        # Driver and worker of one case share its directory, hence the prefix.
        self.url = f"{REDIS_URL}?prefix=bench_{root.name}"
        self.q = Queue(self.url)
        self.n_prefilled = 0

    def durability(self) -> dict[str, Any]:
        return redis_settings(REDIS_URL)
