"""What task dependencies cost the drain (W2): the same no-op drain by a
scheduler in this process (c=4) on three stores, alternated in one run:

* ``plain``: W2 as basics.py runs it (no dependency anywhere);
* ``after``: every task stored by ``enqueue_flow`` after one finished
  parent (a plain dependency, as ``fn.options(after=[h])`` sends it): the
  store checks the parent at enqueue and each finish looks for dependents;
* ``chained``: the same, but every task is a chain step that takes its
  parent's result, so the worker also reads the parent (``dependencies``
  and ``get_many``) before running it.

Only the drain is timed (tasks are stored before). Every result is checked,
and the dependencies are read back from the store before the drain.

    python benches/python/flow_cost.py [--tasks 20000] [--rounds 3] [--shards 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from basics import noop  # noqa: F401  (registers bench.noop, W2's task)

from ferroq import Queue, QueueScheduler
from ferroq.flow import FLOW_KEY
from ferroq.testing import run_until_empty

PARENT_RESULT = 7


def drain(n: int, url: str, kind: str) -> tuple[float, bool]:
    """Drains ``n`` no-op tasks stored as ``kind`` says (see the module
    docs): (tasks/s, whether every result and dependency checked out)."""
    chained = kind == "chained"
    with Queue(url) as q:
        if kind == "plain":
            return _timed(q, n, None, chained)
        parent, _ = q._store.enqueue("default", "bench.noop", b"J[[%d],{}]" % PARENT_RESULT)
        run_until_empty(q)
        meta = json.dumps({FLOW_KEY: "one"}) if chained else None
        for start in range(0, n, 1_000):
            steps = [
                (
                    "default", "bench.noop",
                    b"J[[],{}]" if chained else b"J[[%d],{}]" % i,
                    0, 1, None, None, meta, [parent],
                )
                for i in range(start, min(n, start + 1_000))
            ]
            q._store.enqueue_flow(steps)
        sample = [t.id for t in q.list(status="queued", limit=10)]
        if q._store.dependencies(sample) != [[parent]] * len(sample):
            return 0.0, False
        return _timed(q, n, parent, chained)


def _timed(q: Queue, n: int, parent: Optional[int], chained: bool) -> tuple[float, bool]:
    """The timed drain of what is stored, and its check."""
    if parent is None:
        q._store.enqueue_many("default", "bench.noop", [b"J[[%d],{}]" % i for i in range(n)])
    t0 = time.perf_counter()
    with QueueScheduler(q, concurrency=4, queues=["default"]):
        while q._store.unfinished("default"):
            time.sleep(0.002)
    dt = time.perf_counter() - t0
    done = [t.raw for t in q.list(status="done", limit=n + 1) if t.id != parent]
    if chained:
        results_ok = all(t.result == b"J%d" % PARENT_RESULT for t in done)
    else:
        results_ok = all(t.result == b"J%d" % int(t.payload[3:-5]) for t in done)
    return n / dt, len(done) == n and results_ok


def main() -> None:
    """Runs the three drains ``--rounds`` times, alternated, and prints the
    medians and the cost of dependencies relative to the plain drain."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    rates: dict[str, list[float]] = {"plain": [], "after": [], "chained": []}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(a.rounds):
            for kind in rates:
                url = f"sqlite://{Path(d) / uuid.uuid4().hex}?shards={a.shards}"
                rate, ok = drain(a.tasks, url, kind)
                if not ok:
                    raise SystemExit(f"{kind} drain FAILED its check")
                rates[kind].append(rate)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"drain {a.tasks} no-op tasks, c=4, {a.shards} shard(s), {a.rounds} rounds alternated")
    for kind, values in rates.items():
        cost = 100 * (1 - med[kind] / med["plain"])
        extra = "" if kind == "plain" else f"  cost {cost:.1f}%"
        print(f"  {kind:<8}: {med[kind]:>9,.0f} tasks/s  {[round(r) for r in values]}{extra}")
    print("  check=ok (every result checked, dependencies read back)")


if __name__ == "__main__":
    main()
