"""What each execution mode costs per task: no-op tasks drained by one
QueueScheduler in thread, process and asyncio mode, each checked (every
task done, result equal to its input).

    python benches/python/modes.py [--tasks 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from modes_tasks import anoop, noop

from ferroq import Queue, QueueScheduler


def drain(mode: str, n: int, concurrency: int) -> None:
    url = str(Path(tempfile.mkdtemp()) / mode)
    fn = anoop if mode == "asyncio" else noop
    with Queue(url) as q:
        ids, _ = q._store.enqueue_many("default", fn.name, [b"J[[%d],{}]" % i for i in range(n)])
        t0 = time.perf_counter()
        with QueueScheduler(q, mode=mode, concurrency=concurrency, queues=["default"]):  # type: ignore[arg-type]
            while q._store.unfinished("default"):
                time.sleep(0.002)
        dt = time.perf_counter() - t0
        done = q._store.list_tasks(status="done", limit=n)
        ok = len(done) == n and all(t.result == b"J%d" % int(t.payload[3:-5]) for t in done)
        print(
            f"{mode:<8} c={concurrency:<4} {n:>7} no-op tasks  {n / dt:>9,.0f} tasks/s "
            f"({dt * 1e6 / n:,.0f} us/task)   check={'ok' if ok else 'FAILED'}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=5_000)
    args = ap.parse_args()
    drain("thread", args.tasks, 4)
    drain("process", args.tasks // 5, 2)
    drain("asyncio", args.tasks, 100)


if __name__ == "__main__":
    main()
