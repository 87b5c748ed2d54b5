"""ferroq from this checkout: ``Queue(path)`` (one SQLite shard, WAL,
synchronous=NORMAL by default), ``@task`` functions, ``q.send(...)``,
``handle.result()``, and a ``QueueScheduler(queue, concurrency=4)`` worker
(threads; W2 also with ``processes=2`` and on 4 shards). Batches:
``queue._store.enqueue_many`` and ``queue.enqueue_frame`` from Polars, into a
4-shard store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ferroq import Queue, QueueScheduler, task
from ferroq.serialization import encode

from . import NotSupported, Peer, journal_mode, sleeplog, wait_for_sigterm


@task(name="bench.echo")
def echo(i: int, text: str) -> dict[str, Any]:
    return {"i": i, "text": text}


@task(name="bench.sleeplog")
def sleeplog_task(i: int, text: str) -> dict[str, Any]:
    return sleeplog({"i": i, "text": text})


TASKS = {"echo": echo, "sleeplog": sleeplog_task}
PAGE = 20_000


class Adapter(Peer):
    name = "ferroq"
    notes = [
        "ferroq: payload sent as keyword arguments (echo(i=..., text=...)); results "
        "read back with Queue.list(status='done').",
    ]
    prefill_note = "store.enqueue_many (its batch API)"

    def __init__(self, root: Path, role: str, shards: int = 1, processes: int = 1) -> None:
        super().__init__(root, role)
        self.processes = processes
        self.dir = root / "ferroq-store"
        url = str(self.dir) if shards == 1 else f"sqlite://{self.dir}?shards={shards}"
        self.q = Queue(url)
        self.n_prefilled = 0

    # -- driver --------------------------------------------------------------

    def send(self, kind: str, p: dict[str, Any]) -> Any:
        return self.q.send(TASKS[kind], **p)

    def key(self, handle: Any) -> Any:
        return handle.id

    def batch_label(self) -> str:
        return "queue._store.enqueue_many (payloads encoded by ferroq.serialization.encode)"

    def batch_send(self, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        encoded = [encode([[], p]) for p in payloads]
        ids, _flags = self.q._store.enqueue_many("default", echo.name, encoded)
        return {id_: p["i"] for id_, p in zip(ids, payloads)}

    def frame_send(self, df: Any) -> None:
        if not hasattr(self.q, "enqueue_frame"):
            raise NotSupported("Queue.enqueue_frame is not in this build: see the enqueue_many row")
        # The frame's rows go to the batch's own queue (batch:bench.echo), the default.
        summary = self.q.enqueue_frame(df, task=echo)
        if summary.inserted != df.height:
            raise AssertionError(f"enqueue_frame inserted {summary.inserted} of {df.height}")

    def prefill(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for s in range(0, len(payloads), 100_000):
            chunk = payloads[s : s + 100_000]
            ids, _ = self.q._store.enqueue_many(
                "default", TASKS[kind].name, [encode([[], p]) for p in chunk]
            )
            out.update((id_, p["i"]) for id_, p in zip(ids, chunk))
        self.n_prefilled += len(payloads)
        return out

    def wait_result(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout=timeout)

    def done_count(self) -> int:
        # unfinished() is an indexed count (Queue.stats() counts every
        # finished row too, ~0.1 s at 200k); failures show up in verify.
        return self.n_prefilled - self.q._store.unfinished("default")

    def _pages(self, status: str) -> Iterable[Any]:
        after = None
        while True:
            page = self.q.list(status=status, after_id=after, limit=PAGE)
            if not page:
                return
            yield from page
            after = page[-1].id

    def results(self) -> Iterable[tuple[Any, Any]]:
        for t in self._pages("done"):
            yield t.id, json.loads(t.raw.result[1:])

    def queued(self) -> Iterable[tuple[Any, Any]]:
        for t in self._pages("queued"):
            args, kwargs = json.loads(t.raw.payload[1:])
            if args:
                raise AssertionError(f"task {t.id} has positional args {args}")
            yield t.id, kwargs

    def durability(self) -> dict[str, str]:
        shard = sorted(self.dir.glob("*.db"))
        return {
            # The store sets synchronous on each connection and checks it
            # took (schema.rs); the Python API has no way to read it back.
            "synchronous": "NORMAL (set+checked by the store; not readable via its API)",
            "journal": journal_mode(shard[0]) if shard else "?",
        }

    def close(self) -> None:
        self.q.close()

    # -- worker --------------------------------------------------------------

    def run_worker(self, concurrency: int, ready: Callable[[], None], mode: str) -> None:
        if mode not in ("drain", "serve", "crash"):
            raise NotSupported(mode)
        stop = wait_for_sigterm()
        sched = QueueScheduler(
            self.q,
            concurrency=concurrency,
            queues=["default"],
            processes=self.processes,
            # The worker processes import this module for the task functions.
            imports=[__name__] if self.processes > 1 else None,
        )
        if self.processes > 1:
            # Worker processes take a moment to start (a Python each, its
            # imports): the queue stays paused until they all serve it, so
            # the clock (from READY) times the drain, not their start-up.
            self.q.pause("default")
            sched.start()
            while len(self.q.workers()) < self.processes:
                time.sleep(0.05)
            time.sleep(0.5)  # their loops are waiting for work
            self.q.resume("default")
            ready()
        else:
            ready()
            sched.start()
        stop.wait()
        sched.stop()
