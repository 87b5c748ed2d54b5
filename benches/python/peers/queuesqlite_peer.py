"""queue-sqlite (with its Rust core, queue-sqlite-core): a
``QueueScheduler(config=SchedulerConfig(queue_name=...))`` — 4 task threads
and 4 shards by default, WAL, synchronous=NORMAL set by the core — tasks
registered with its ``@task`` decorator, ``send_message(MessageItem(...),
callback)``. Results are stored in the message row by its task scheduler
and handed to the callback by its receive scheduler in the sending process.

Its store lives under ``./cache/<queue_name>/`` of the working directory
(the harness runs it in a fresh temp dir), and importing it creates
``./log/`` and sets the root logger to INFO."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import queue_sqlite_core
from queue_sqlite.model import MessageItem, SchedulerConfig
from queue_sqlite.mounter import task
from queue_sqlite.scheduler import QueueScheduler

from . import Peer, journal_mode, ro, wait_for_sigterm
from . import sleeplog as log_and_sleep

QUEUE = "bench"
COMPLETED = 2  # queue_sqlite.constant.MessageStatus.COMPLETED


# Its TaskMounter registers a task under the function's __name__ (a
# meta "name" is stored but not used to find it), so the names matter.
@task()
def echo(message_item: MessageItem) -> dict[str, Any]:
    return message_item.content


@task()
def sleeplog(message_item: MessageItem) -> dict[str, Any]:
    return log_and_sleep(message_item.content)


def _result(raw: Any) -> Any:
    # Its task scheduler stores json.dumps(json.dumps(value)): decode until
    # it is not a string any more.
    value = raw
    for _ in range(3):
        if not isinstance(value, str):
            break
        value = json.loads(value)
    return value


class Adapter(Peer):
    name = "queue-sqlite"
    notes = [
        "queue-sqlite: its task thread sleeps 0.1 s when a dequeue finds nothing and its "
        "receive thread 0.1 s when no result is ready (fixed, in its code); a task thread "
        "dequeues 8 at a time and hands them to an unbounded executor queue.",
        "queue-sqlite: one QueueScheduler runs the task, receive (callback), cleanup and "
        "listen loops together. For W3 the worker process starts only its task loop and "
        "the sender only its receive loop (scheduler.task_scheduler / receive_scheduler), "
        "since a worker's own receive loop would take the sender's results.",
        "queue-sqlite: results are stored double-JSON-encoded (json.dumps of a JSON string).",
    ]
    prefill_note = (
        "rows of MessageItem(...).to_dict_by_core() inserted into the shard its core "
        "picks (_get_shard_index), one transaction per shard (no working batch API)"
    )

    def __init__(self, root: Path, role: str) -> None:
        super().__init__(root, role)
        self.sched = QueueScheduler(config=SchedulerConfig(queue_name=QUEUE))
        self.inner = self.sched.scheduler
        self.op = self.inner.queue_operation
        self.dir = root / self.op.db_dir
        self.shards = [self.dir / f"queue_shard_{k}.db" for k in range(self.op.shard_num)]
        self._waiters: dict[str, tuple[threading.Event, list[Any]]] = {}
        self._receiving = False

    # -- driver --------------------------------------------------------------

    def send(self, kind: str, p: dict[str, Any]) -> Any:
        m = MessageItem(content=p, destination=kind)
        self.sched.send_message(m, self._on_result)
        return m.id

    def _on_result(self, message: MessageItem) -> None:
        waiter = self._waiters.get(message.id)
        if waiter is not None:
            waiter[1].append(_result(message.result))
            waiter[0].set()

    def key(self, handle: Any) -> Any:
        return handle

    def batch_label(self) -> str:
        return "ReceiveScheduler.send_message_batch (its README lists batch enqueue)"

    def batch_send(self, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        from queue_sqlite.scheduler.standard.receive_scheduler import SendMessageCallback

        items = [
            SendMessageCallback(MessageItem(content=p, destination="echo"), None) for p in payloads
        ]
        self.inner.receive_scheduler.send_message_batch(items)
        return {it.message.id: p["i"] for it, p in zip(items, payloads)}

    def prefill(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        rows: list[list[tuple[Any, ...]]] = [[] for _ in self.shards]
        out: dict[Any, int] = {}
        cols = None
        for p in payloads:
            d = MessageItem(content=p, destination=kind).to_dict_by_core()
            cols = cols or list(d)
            rows[self.op._get_shard_index(d["id"])].append(tuple(d[c] for c in cols))
            out[d["id"]] = p["i"]
        assert cols is not None
        sql = f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        for path, shard_rows in zip(self.shards, rows):
            conn = sqlite3.connect(path, timeout=60)
            with conn:
                conn.executemany(sql, shard_rows)
            conn.close()
        return out

    def send_wait(self, kind: str, p: dict[str, Any], timeout: float) -> Any:
        # The result arrives through the callback given at send time, run by
        # this process's receive loop; the waiter exists before the send.
        if not self._receiving:
            self.inner.receive_scheduler.start_receive_thread()
            self._receiving = True
        m = MessageItem(content=p, destination=kind)
        waiter: tuple[threading.Event, list[Any]] = (threading.Event(), [])
        self._waiters[m.id] = waiter
        self.sched.send_message(m, self._on_result)
        if not waiter[0].wait(timeout):
            raise TimeoutError(f"no callback for {m.id} after {timeout} s")
        del self._waiters[m.id]
        return waiter[1][0]

    def done_count(self) -> int:
        total = 0
        for path in self.shards:
            conn = ro(path)
            try:
                total += conn.execute(
                    "SELECT count(*) FROM messages WHERE status = ?", (COMPLETED,)
                ).fetchone()[0]
            finally:
                conn.close()
        return total

    def results(self) -> Iterable[tuple[Any, Any]]:
        for path in self.shards:
            conn = ro(path)
            try:
                for mid, result in conn.execute(
                    "SELECT id, result FROM messages WHERE status = ?", (COMPLETED,)
                ):
                    yield mid, _result(result)
            finally:
                conn.close()

    def queued(self) -> Iterable[tuple[Any, Any]]:
        for path in self.shards:
            conn = ro(path)
            try:
                for mid, content in conn.execute(
                    "SELECT id, content FROM messages WHERE status = 0 AND is_deleted = 0"
                ):
                    yield mid, json.loads(content)
            finally:
                conn.close()

    def durability(self) -> dict[str, str]:
        core = Path(queue_sqlite_core.__file__).parent
        found = any(b"PRAGMA synchronous=NORMAL" in so.read_bytes() for so in core.glob("*.so"))
        sync = (
            "NORMAL (set by its Rust core" + ("" if found else ", unverified") + "; not readable)"
        )
        return {"synchronous": sync, "journal": journal_mode(self.shards[0])}

    # -- worker --------------------------------------------------------------

    def run_worker(self, concurrency: int, ready: Callable[[], None], mode: str) -> None:
        if concurrency != self.inner.task_scheduler.task_thread_num:
            raise ValueError(
                f"SchedulerConfig gives {self.inner.task_scheduler.task_thread_num} task threads"
            )
        stop = wait_for_sigterm()
        ready()
        if mode == "serve":
            self.inner.task_scheduler.start_task_thread()
            self.inner.cleanup_scheduler.start_cleanup()
        else:
            self.sched.start()
        stop.wait()
