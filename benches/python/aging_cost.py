"""What priority aging costs the drain (W2): the same no-op drain by a
scheduler in this process (c=4), on stores whose queue has aging on
(``set_queue_options(aging=1.0)``, set before the tasks are sent) and off,
alternated in one run; every result is checked.

    python benches/python/aging_cost.py [--tasks 20000] [--rounds 3] [--shards 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import basics  # noqa: F401  (registers bench.noop, W2's task)

from ferroq import Queue, QueueScheduler


def drain_rate(n: int, url: str) -> tuple[float, bool]:
    """W2's drain (``basics.drain_rate``): ``n`` prefilled no-op tasks
    drained by a scheduler (c=4) in this process; (tasks/s, whether every
    result checked out). Checked on the raw records."""
    with Queue(url) as q:
        q._store.enqueue_many("default", "bench.noop", [b"J[[%d],{}]" % i for i in range(n)])
        t0 = time.perf_counter()
        with QueueScheduler(q, concurrency=4, queues=["default"]):
            while q._store.unfinished("default"):
                time.sleep(0.002)
        dt = time.perf_counter() - t0
        done = q._store.list_tasks(queue="default", status="done", limit=n)
        ok = len(done) == n and all(t.result == b"J%d" % int(t.payload[3:-5]) for t in done)
        return n / dt, ok


def drain(url: str, n: int, aging: bool) -> float:
    if aging:
        with Queue(url) as q:
            q.set_queue_options("default", aging=1.0)
    rate, ok = drain_rate(n, url)
    if not ok:
        raise SystemExit(f"drain of {url} FAILED its check")
    if aging:
        with Queue(url) as q:
            assert q.queue_options("default").aging == 1.0
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(a.rounds):
            for mode in ("on", "off"):
                url = f"sqlite://{Path(d) / uuid.uuid4().hex}?shards={a.shards}"
                rates[mode].append(drain(url, a.tasks, mode == "on"))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(f"drain {a.tasks} no-op tasks, c=4, {a.shards} shard(s), {a.rounds} rounds alternated")
    print(f"  aging on : {on:>9,.0f} tasks/s  {[round(r) for r in rates['on']]}")
    print(f"  aging off: {off:>9,.0f} tasks/s  {[round(r) for r in rates['off']]}")
    print(f"  cost of aging: {100 * (1 - on / off):.1f}%   check=ok")


if __name__ == "__main__":
    main()
