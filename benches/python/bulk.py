"""Bulk send and wait, and slow tasks at high concurrency (issue 19), each
figure checked beside its timing:

* ``fn.map`` of 1,000,000 tasks (no Polars): rows/s; every task stored,
  a sample of payloads decoded back to its arguments;
* 20,000 tasks sent with ``fn.map`` and waited for with ``ferroq.wait`` by
  a scheduler in the same process: tasks/s end to end; every result right;
* 500 ``async def`` tasks sleeping 100 ms at concurrency 500, default
  (thread) mode: seconds, and how many overlapped;
* 500 plain functions sleeping 100 ms at concurrency 500 (and 50) in
  thread mode, on a fresh scheduler and on one that has just drained
  fast tasks: seconds; every result right.

    python benches/python/bulk.py [--map-tasks 1000000] [--shards 1]

The machine is shared: the load average is printed beside each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time

import ferroq
from ferroq import Queue, QueueScheduler


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def fresh(name: str, shards: int) -> Queue:
    return Queue(f"sqlite://{tempfile.mkdtemp()}/{name}?shards={shards}")


def bench_map(n: int, shards: int) -> bool:
    q = fresh("map", shards)

    @q.task
    def add(a: int, b: int) -> int:
        return a + b

    items = [(i, 1) for i in range(n)]
    t0 = time.perf_counter()
    handles = add.map(items)
    dt = time.perf_counter() - t0
    stats = q.stats()["default"]
    ok = len(handles) == n and stats.get("queued", 0) == n
    # A thousand payloads spread over the run, and the last, decode back
    # to the arguments of their item.
    for i in [*range(0, n, max(1, n // 1000)), n - 1]:
        rec = q.get(handles[i].id)
        ok = ok and rec is not None and rec.args == (i, 1)
    print(
        f"fn.map {n:>9,} tasks, {shards} shard(s)   {n / dt:>10,.0f} rows/s "
        f"({dt:.2f} s)   {load()}   check={'ok' if ok else 'FAILED'}",
        flush=True,
    )
    q.close()
    # The reference: the store's bulk verb alone, payloads made beforehand.
    ref = fresh("map-ref", shards)
    payloads = [b"J[[%d,1],{}]" % i for i in range(n)]
    t0 = time.perf_counter()
    for start in range(0, n, 10_000):
        ref._store.enqueue_many("default", add.name, payloads[start : start + 10_000])
    dt = time.perf_counter() - t0
    ref_ok = ref.stats()["default"].get("queued", 0) == n
    print(
        f"  reference: store.enqueue_many, payloads made before   {n / dt:>10,.0f} rows/s "
        f"({dt:.2f} s)   {load()}   check={'ok' if ref_ok else 'FAILED'}",
        flush=True,
    )
    ref.close()
    return ok and ref_ok


def bench_map_wait(n: int, shards: int) -> bool:
    q = fresh("mapwait", shards)

    @q.task
    def triple(x: int) -> int:
        return 3 * x

    with QueueScheduler(q, concurrency=4, queues=["default"]):
        t0 = time.perf_counter()
        handles = triple.map([(i,) for i in range(n)])
        done, pending = ferroq.wait(handles, timeout=600)
        dt = time.perf_counter() - t0
    ok = not pending and [h.result() for h in handles] == [3 * i for i in range(n)]
    print(
        f"fn.map + ferroq.wait {n:,} tasks, {shards} shard(s), c=4   {n / dt:>10,.0f} tasks/s "
        f"({dt:.2f} s)   {load()}   check={'ok' if ok else 'FAILED'}",
        flush=True,
    )
    # The reference: the same drain watched by one count per 2 ms, no handles.
    with QueueScheduler(q, concurrency=4, queues=["default"]):
        t0 = time.perf_counter()
        triple.map([(i,) for i in range(n)])
        while q._store.unfinished("default"):
            time.sleep(0.002)
        dt = time.perf_counter() - t0
    ref_ok = q.stats()["default"]["done"] == 2 * n
    print(
        f"  reference: fn.map, then polling the unfinished count   {n / dt:>10,.0f} tasks/s "
        f"({dt:.2f} s)   {load()}   check={'ok' if ref_ok else 'FAILED'}",
        flush=True,
    )
    q.close()
    return ok and ref_ok


def overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def bench_sleepers(kind: str, n: int, concurrency: int, warm: bool) -> bool:
    q = fresh(f"sleep-{kind}", 1)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    @q.task
    def noop(x: int) -> int:
        return x

    @q.task
    def nap(x: int) -> int:
        t0 = time.monotonic()
        time.sleep(0.1)
        with lock:
            spans.append((t0, time.monotonic()))
        return x

    @q.task
    async def anap(x: int) -> int:
        t0 = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((t0, time.monotonic()))
        return x

    fn = anap if kind == "async" else nap
    with QueueScheduler(q, concurrency=concurrency, queues=["default"]):
        if warm:  # claims sized by fast tasks first
            ferroq.wait(noop.map([(i,) for i in range(20_000)]), timeout=600)
        t0 = time.perf_counter()
        handles = fn.map([(i,) for i in range(n)])
        done, pending = ferroq.wait(handles, timeout=600)
        dt = time.perf_counter() - t0
    ok = not pending and len(spans) == n and [h.result() for h in handles] == list(range(n))
    what = "async def" if kind == "async" else "plain"
    label = f"{n} {what} tasks sleeping 100 ms, c={concurrency}"
    label += ", after 20k fast" if warm else ""
    print(
        f"{label:<60} {dt:6.2f} s  (most at once {overlap(spans)})   {load()}   "
        f"check={'ok' if ok else 'FAILED'}",
        flush=True,
    )
    q.close()
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--map-tasks", type=int, default=1_000_000)
    ap.add_argument("--wait-tasks", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each sleepers case")
    args = ap.parse_args()
    results = [
        bench_map(args.map_tasks, args.shards),
        bench_map_wait(args.wait_tasks, args.shards),
    ]
    for kind, concurrency, warm in [
        ("async", 500, False),
        ("plain", 500, False),
        ("plain", 50, False),
        ("plain", 500, True),
        ("plain", 50, True),
    ]:
        for _ in range(args.repeat):
            results.append(bench_sleepers(kind, 500, concurrency, warm))
    if not all(results):
        sys.exit("a check FAILED")


if __name__ == "__main__":
    main()
