"""The main job on the embedded default: send tasks to a SQLite store, run
them on a scheduler, read the results back. Run: python examples/quickstart.py
"""

import tempfile
import time
from pathlib import Path

from ferroq import Backoff, Queue, QueueScheduler, current_task

store_dir = Path(tempfile.mkdtemp()) / "tasks.db"
queue = Queue(str(store_dir))

attempts: dict[int, int] = {}


@queue.task(retries=3, backoff=Backoff.exponential(0.01))
def word_count(text: str) -> int:
    """Counts words; the first attempt of every 10th task fails, then retries."""
    i = len(text) % 10
    attempts[i] = attempts.get(i, 0) + 1
    if i == 0 and current_task().attempt == 1:
        raise ConnectionError("flaky upstream")
    return len(text.split())


texts = [("lorem ipsum dolor sit amet " * (i % 7 + 1)).strip() for i in range(2_000)]
start = time.perf_counter()
with QueueScheduler(queue, concurrency=4):
    handles = [word_count.send(t) for t in texts]
    results = [h.result(timeout=60) for h in handles]
elapsed = time.perf_counter() - start

assert results == [len(t.split()) for t in texts]
stats = queue.stats()["default"]
print(f"{len(results)} tasks sent, run and checked in {elapsed:.2f}s; stats: {stats}")
queue.close()
