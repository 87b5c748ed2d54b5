"""persist-queue: ``SQLiteAckQueue(path, multithreading=True)`` (WAL; no
``synchronous`` pragma, so SQLite's default) with the consumer loop its
README shows — ``get()``, do the work, ``ack()`` — in 4 threads sharing the
queue object. It has no result store, so the loop keeps each result in the
library's own persistent dict, ``PDict(path, "results")``, keyed by the
queue's item id, before acking."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from persistqueue import PDict, SQLiteAckQueue
from persistqueue.exceptions import Empty
from persistqueue.serializers import pickle as pq_pickle

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


class Adapter(Peer):
    name = "persist-queue"
    notes = [
        f"persist-queue: a blocking get() waits on an in-process event and re-checks the "
        f"database only every 10 s, so consumers (and result waits) poll with "
        f"get(block=False) / PDict.get every {POLL * 1000:.0f} ms instead.",
        "persist-queue: get() selects the first row with _id > 0 AND status < 2 in _id order "
        "(no index on status), walking past every acked row: it slows as work is done.",
        "persist-queue: results kept in its PDict (one commit each) before ack(); "
        "SQLiteAckQueue(auto_resume=True, the default) requeues every unacked item when "
        "constructed, so a restarted worker re-runs the dead one's tasks at once. The "
        "driver opens it with auto_resume=False: otherwise it would requeue items a live "
        "worker holds.",
    ]
    prefill_note = (
        "rows (data pickled by its serializer, status 0) inserted in one transaction on "
        "its connection (no batch API)"
    )

    def __init__(self, root: Path, role: str) -> None:
        super().__init__(root, role)
        self.qdir = root / "pq"
        self.rdir = root / "pq-results"
        self.q = SQLiteAckQueue(str(self.qdir), multithreading=True, auto_resume=role == "worker")
        self.results_dict = PDict(str(self.rdir), "results", multithreading=True)

    # -- driver --------------------------------------------------------------

    def send(self, kind: str, p: dict[str, Any]) -> Any:
        return self.q.put({"task": kind, "p": p})

    def key(self, handle: Any) -> Any:
        return handle

    def batch_send(self, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        raise NotSupported("no batch put on SQLiteAckQueue (put() commits each item)")

    def prefill(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        conn = self.q._putter
        table = self.q._table_name
        now = time.time()
        with conn:
            first = conn.execute(f"SELECT coalesce(max(_id), 0) FROM {table}").fetchone()[0] + 1
            conn.executemany(
                f"INSERT INTO {table} (_id, data, timestamp, status) VALUES (?, ?, ?, 0)",
                (
                    (first + n, pq_pickle.dumps({"task": kind, "p": p}), now)
                    for n, p in enumerate(payloads)
                ),
            )
        self.q.total = self.q._count()
        return {first + n: p["i"] for n, p in enumerate(payloads)}

    def wait_result(self, handle: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        key = str(handle)
        while True:
            value = self.results_dict.get(key)
            if value is not None:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for item {handle} after {timeout} s")
            time.sleep(POLL)

    def done_count(self) -> int:
        return int(self.q.acked_count())

    def results(self) -> Iterable[tuple[Any, Any]]:
        conn = ro(self.rdir / "data.db")
        try:
            for key, data in conn.execute("SELECT key, data FROM dict_results"):
                yield int(key), pq_pickle.loads(data)
        finally:
            conn.close()

    def queued(self) -> Iterable[tuple[Any, Any]]:
        for row in self.q.queue():
            yield row["id"], row["data"]["p"]

    def durability(self) -> dict[str, str]:
        return {
            "synchronous": read_sync(self.q._putter),
            "journal": journal_mode(self.qdir / "data.db"),
        }

    def close(self) -> None:
        self.q.close()
        self.results_dict.close()

    # -- worker --------------------------------------------------------------

    def run_worker(self, concurrency: int, ready: Callable[[], None], mode: str) -> None:
        stop = wait_for_sigterm()
        q, results = self.q, self.results_dict

        def consume() -> None:
            while not stop.is_set():
                try:
                    item = q.get(block=False, raw=True)
                except Empty:
                    time.sleep(POLL)
                    continue
                msg = item["data"]
                try:
                    value = FUNCTIONS[msg["task"]](msg["p"])
                except Exception:
                    q.ack_failed(id=item["pqid"])
                    continue
                results[str(item["pqid"])] = value
                q.ack(id=item["pqid"])

        threads = [
            threading.Thread(target=guarded(consume), daemon=True) for _ in range(concurrency)
        ]
        ready()
        for t in threads:
            t.start()
        stop.wait()
        for t in threads:
            t.join(timeout=10)
