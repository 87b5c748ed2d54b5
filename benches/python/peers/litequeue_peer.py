"""litequeue: ``LiteQueue(path)`` (it sets WAL and synchronous=NORMAL),
``put()`` / ``pop()`` / ``done(message_id)`` as its README shows, in a
consumer loop of 4 threads, each with its own ``LiteQueue`` (one sqlite3
connection each: its ``pop()`` runs a transaction, which threads must not
share). It has no result store, so the loop writes each result to a
``results`` table in the same database file (on the thread's connection,
autocommit) before ``done()``."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from litequeue import LiteQueue

from . import (
    POLL,
    NotSupported,
    Peer,
    guarded,
    journal_mode,
    read_sync,
    ro,
    sleeplog,
    wait_for_sigterm,
)

FUNCTIONS: dict[str, Callable[[dict[str, Any]], Any]] = {"echo": lambda p: p, "sleeplog": sleeplog}
QUEUE = "tasks"
SAVE_RESULT = "INSERT OR REPLACE INTO results (message_id, data) VALUES (?, ?)"
RESULTS_DDL = "CREATE TABLE IF NOT EXISTS results (message_id TEXT PRIMARY KEY, data TEXT NOT NULL)"


def retry_locked(call: Callable[..., Any], *args: Any) -> Any:
    """Runs ``call`` again while SQLite says the database is locked. With 4
    threads each taking the write lock for a pop (BEGIN IMMEDIATE, then a
    sort of the ready rows), a thread can wait past the 5 s busy timeout
    sqlite3 connections get by default; a user's loop would retry."""
    while True:
        try:
            return call(*args)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise
            time.sleep(POLL)


class Adapter(Peer):
    name = "litequeue"
    notes = [
        f"litequeue: no wake-up across processes, so an idle consumer thread polls pop() "
        f"every {POLL * 1000:.0f} ms, and the sender polls the results table as often.",
        "litequeue: the consumer loop retries a call that fails with 'database is locked' "
        "(4 threads queueing for the write lock can wait past sqlite3's 5 s busy timeout).",
        "litequeue: pop() sorts every READY row by message_id for each message (its query "
        "plan: index on status, then a temp B-tree for the ORDER BY), so it slows with queue "
        "depth; its default cache_size is 256 MB per connection (one per consumer thread).",
        "litequeue: a restarted worker requeues every LOCKED message at start "
        "(list_locked(0) + retry(), the user-written recovery; right for one worker).",
    ]
    prefill_note = "put() inside its LiteQueue.transaction() (one commit; no batch API)"

    def __init__(self, root: Path, role: str) -> None:
        super().__init__(root, role)
        self.path = root / "litequeue.db"
        self.q = LiteQueue(str(self.path), queue_name=QUEUE)
        self.q.conn.execute(RESULTS_DDL)
        self._local = threading.local()

    # -- driver --------------------------------------------------------------

    def send(self, kind: str, p: dict[str, Any]) -> Any:
        return self.q.put(json.dumps({"task": kind, "p": p})).message_id

    def key(self, handle: Any) -> Any:
        return handle

    def thread_sender(self) -> Callable[[str, dict[str, Any]], Any]:
        q = LiteQueue(str(self.path), queue_name=QUEUE)  # a connection per thread

        def send(kind: str, p: dict[str, Any]) -> Any:
            return q.put(json.dumps({"task": kind, "p": p})).message_id

        return send

    def batch_send(self, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        raise NotSupported("no batch put (put() commits each message)")

    def prefill(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for s in range(0, len(payloads), 50_000):
            with self.q.transaction(mode="IMMEDIATE"):
                for p in payloads[s : s + 50_000]:
                    out[self.q.put(json.dumps({"task": kind, "p": p})).message_id] = p["i"]
        return out

    def wait_result(self, handle: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            row = self.q.conn.execute(
                "SELECT data FROM results WHERE message_id = ?", (handle,)
            ).fetchone()
            if row is not None:
                return json.loads(row[0])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for {handle} after {timeout} s")
            time.sleep(POLL)

    def done_count(self) -> int:
        return int(
            self.q.conn.execute(f"SELECT count(*) FROM [{QUEUE}] WHERE status = 2").fetchone()[0]
        )

    def results(self) -> Iterable[tuple[Any, Any]]:
        conn = ro(self.path)
        try:
            for mid, data in conn.execute("SELECT message_id, data FROM results"):
                yield mid, json.loads(data)
        finally:
            conn.close()

    def queued(self) -> Iterable[tuple[Any, Any]]:
        conn = ro(self.path)
        try:
            for mid, data in conn.execute(
                f"SELECT message_id, data FROM [{QUEUE}] WHERE status = 0"
            ):
                yield mid, json.loads(data)["p"]
        finally:
            conn.close()

    def durability(self) -> dict[str, str]:
        return {"synchronous": read_sync(self.q.conn), "journal": journal_mode(self.path)}

    def close(self) -> None:
        self.q.close()

    # -- worker --------------------------------------------------------------

    def run_worker(self, concurrency: int, ready: Callable[[], None], mode: str) -> None:
        stop = wait_for_sigterm()
        # Recovery a user writes for a single worker: whatever is LOCKED
        # now was held by a worker that died.
        for m in list(self.q.list_locked(0)):
            self.q.retry(m.message_id)

        def consume() -> None:
            q = LiteQueue(str(self.path), queue_name=QUEUE)
            while not stop.is_set():
                m = retry_locked(q.pop)
                if m is None:
                    time.sleep(POLL)
                    continue
                msg = json.loads(m.data)
                try:
                    value = FUNCTIONS[msg["task"]](msg["p"])
                except Exception:
                    retry_locked(q.mark_failed, m.message_id)
                    continue
                retry_locked(q.conn.execute, SAVE_RESULT, (m.message_id, json.dumps(value)))
                retry_locked(q.done, m.message_id)
            q.close()

        threads = [
            threading.Thread(target=guarded(consume), daemon=True) for _ in range(concurrency)
        ]
        ready()
        for t in threads:
            t.start()
        stop.wait()
        for t in threads:
            t.join(timeout=10)
