"""Dashboard page loads on a big store: 1,000,000 finished tasks (filled
fast through the store's batch enqueue / claim / complete paths), then the
main page and the task list fetched over HTTP from a real uvicorn server,
each reply checked (status 200, the right counts or rows) beside its time.

    python benches/python/dashboard_load.py [--tasks 1000000] [--shards 1] [--loads 20]

The first main page after start waits for the first count of the store
(done once, in the background, by the dashboard's monitor); it is
reported apart ("cold"). Target: <= 200 ms per load.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from dashboard_helpers import Client, LiveServer  # noqa: E402

from ferroq import Queue  # noqa: E402
from ferroq.dashboard import create_app  # noqa: E402

BATCH = 10_000


def fill(q: Queue, n: int) -> float:
    """``n`` finished tasks in queue ``bench``; returns the seconds taken."""
    store = q._store
    payload = q.encode([[1, "x"], {}])
    result = q.encode({"ok": True})
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(BATCH, n - done)
        store.enqueue_many("bench", "bench:job", [payload] * k)
        got = store.claim("bench", "filler", k, 600_000)
        errors = store.complete_many([t.id for t in got], "filler", [result] * len(got))
        assert len(got) == k and not any(errors)
        done += k
    return time.perf_counter() - t0


def timed(c: Client, path: str, check: re.Pattern[str], loads: int) -> list[float]:
    out = []
    for _ in range(loads):
        t0 = time.perf_counter()
        r = c.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status == 200, (path, r.status)
        assert check.search(r.text), f"{path}: page content check failed"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--loads", type=int, default=20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite://{d}/store?shards={a.shards}"
        with Queue(url) as q:
            took = fill(q, a.tasks)
            print(f"filled {a.tasks:,} finished tasks in {took:.1f} s ({a.shards} shard(s))")
            t0 = time.perf_counter()
            counts = q.stats()
            count_s = time.perf_counter() - t0
            assert counts["bench"]["done"] == a.tasks
        with Queue(url) as q, LiveServer(create_app(q)) as srv:
            c = Client(srv.url)
            done = re.compile(rf'data-count="done"[^>]*>{a.tasks}<')
            t0 = time.perf_counter()
            r = c.get("/")
            cold = (time.perf_counter() - t0) * 1000
            assert r.status == 200 and done.search(r.text)
            main_ms = timed(c, "/", done, a.loads)
            rows = re.compile(r'(?s)(<tr data-id="\d+">.*?){50}')
            first_ms = timed(c, "/tasks", rows, a.loads)
            mid = q.list(after_id=a.tasks // 2, limit=1)[0].id
            deep_ms = timed(c, f"/tasks?status=done&queue=bench&after={mid}", rows, a.loads)
            detail_ms = timed(c, f"/tasks/{mid}", re.compile(r"bench:job"), a.loads)

    def show(label: str, ms: list[float]) -> None:
        print(f"  {label:<38} median {statistics.median(ms):7.1f} ms   max {max(ms):7.1f} ms")

    print(f"store count (Queue.stats) alone: {count_s * 1000:.0f} ms, done in the background")
    print(f"page loads over HTTP, {a.loads} each, content checked:")
    print(f"  {'main page, first (waits for a count)':<38} {cold:7.1f} ms")
    show("main page", main_ms)
    show("task list, first page", first_ms)
    show("task list, done in bench, mid-store", deep_ms)
    show("task detail", detail_ms)
    worst = max(statistics.median(x) for x in (main_ms, first_ms, deep_ms, detail_ms))
    print(f"target <= 200 ms: {'met' if worst <= 200 else 'MISSED'}   check=ok")


if __name__ == "__main__":
    main()
