"""ferroq-only figures for the everyday path (the peer comparison lives in
the harness): single sends, drain of N no-op tasks with a 4-thread
scheduler, and enqueue->result latency with an idle worker in another
process. Each figure is printed beside the check of what was processed.

    python benches/python/basics.py [--tasks 20000] [--url URL ...]

``--url`` (repeatable) names where the stores go: a directory (SQLite
stores are made inside it) or a PostgreSQL URL (each phase gets its own
schema). By default, SQLite in a temp directory. Several ``--url`` run the
same workload on each, one after the other, in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from ferroq import Queue, QueueScheduler, task

HERE = Path(__file__).resolve().parent


@task(name="bench.noop")
def noop(i: int) -> int:
    """Returns its input."""
    return i


def store_url(base: str, phase: str) -> str:
    """A fresh store for one phase under ``base``."""
    if base.startswith(("postgres://", "postgresql://")):
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}schema=bench_{phase}_{uuid.uuid4().hex[:8]}"
    return str(Path(base) / f"{phase}-{uuid.uuid4().hex[:8]}")


def label(base: str) -> str:
    return "postgresql" if base.startswith(("postgres://", "postgresql://")) else "sqlite"


def bench_send(n: int, url: str) -> None:
    with Queue(url) as q:
        t0 = time.perf_counter()
        handles = [q.send(noop, i) for i in range(n)]
        dt = time.perf_counter() - t0
        ok = q.stats()["default"]["queued"] == n and len({h.id for h in handles}) == n
        check = "ok" if ok else "FAILED"
        print(f"send       {n:>8} single sends      {n / dt:>10,.0f} tasks/s   check={check}")


def bench_send_batch(n: int, url: str) -> None:
    with Queue(url) as q:
        payloads = [b"J[[%d],{}]" % i for i in range(n)]
        t0 = time.perf_counter()
        for i in range(0, n, 1_000):
            q._store.enqueue_many("default", "bench.noop", payloads[i : i + 1_000])
        dt = time.perf_counter() - t0
        ok = q.stats()["default"]["queued"] == n
        check = "ok" if ok else "FAILED"
        print(f"batch      {n:>8} rows, 1,000/call  {n / dt:>10,.0f} rows/s    check={check}")


def drain_rate(n: int, url: str) -> tuple[float, bool]:
    """Drains ``n`` prefilled no-op tasks with a scheduler (c=4) in this
    process: (tasks/s, whether every result checked out)."""
    with Queue(url) as q:
        q._store.enqueue_many("default", "bench.noop", [b"J[[%d],{}]" % i for i in range(n)])
        t0 = time.perf_counter()
        with QueueScheduler(q, concurrency=4, queues=["default"]):
            while q._store.unfinished("default"):
                time.sleep(0.002)
        dt = time.perf_counter() - t0
        done = q._store.list_tasks(status="done", limit=n)
        ok = len(done) == n and all(t.result == b"J%d" % (int(t.payload[3:-5])) for t in done)
        return n / dt, ok


def bench_drain(n: int, url: str) -> None:
    rate, ok = drain_rate(n, url)
    check = "ok" if ok else "FAILED"
    print(f"drain      {n:>8} no-op tasks, c=4  {rate:>10,.0f} tasks/s   check={check}")


def bench_latency(n: int, path: str) -> None:
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "basics.py"), "--serve", path],
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    try:
        with Queue(path) as q:
            time.sleep(1.0)  # let the worker start and go idle
            lat = []
            for i in range(n):
                t0 = time.perf_counter()
                value = q.send(noop, i).result(timeout=10)
                lat.append((time.perf_counter() - t0) * 1000)
                assert value == i
            lat.sort()
            p = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))]  # noqa: E731
            print(
                f"latency    {n:>8} sequential sends  p50 {p(0.5):.2f} ms  p95 {p(0.95):.2f} ms  "
                f"p99 {p(0.99):.2f} ms  mean {statistics.mean(lat):.2f} ms   check=ok"
            )
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--url", action="append", help="directory or postgresql:// URL (repeatable)")
    ap.add_argument("--serve")
    args = ap.parse_args()
    if args.serve:
        with Queue(args.serve) as q:
            QueueScheduler(q, concurrency=4, queues=["default"]).run_forever()
        return
    bases: list[Optional[str]] = list(args.url or [None])
    for base in bases:
        root = base or tempfile.mkdtemp()
        print(f"--- {label(root)} ---")
        bench_send(args.tasks, store_url(root, "send"))
        bench_send_batch(args.tasks * 5, store_url(root, "batch"))
        bench_drain(args.tasks, store_url(root, "drain"))
        bench_latency(200, store_url(root, "latency"))


if __name__ == "__main__":
    main()
