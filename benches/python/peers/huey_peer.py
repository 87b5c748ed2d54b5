"""huey: ``SqliteHuey(filename=...)`` with its defaults (WAL; ``fsync``
unset, so SQLite's default ``synchronous``), ``@huey.task()`` functions,
``result.get(blocking=True)``, and its consumer with 4 worker threads
(``huey.create_consumer(workers=4, worker_type="thread").run()``, what
``huey_consumer -w 4 -k thread`` runs; no logging configured, so quieter
than the CLI's default INFO lines). Results go to huey's own result store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from huey import SqliteHuey

from . import NotSupported, Peer, journal_mode, read_sync, sleeplog


class Adapter(Peer):
    name = "huey"
    notes = [
        "huey: the consumer polls an empty queue after 0.1 s, backing off x1.15 up to 10 s "
        "(its defaults); result.get(blocking=True) polls from 50 ms, x1.15, up to 1 s.",
        "huey: the dequeue deletes the task row, so a task in flight when its worker dies "
        "is gone (at-most-once).",
    ]
    prefill_note = (
        "rows of huey.serialize_task(task.s(p)) inserted in one transaction through "
        "huey.storage (no batch API)"
    )

    def __init__(self, root: Path, role: str) -> None:
        super().__init__(root, role)
        self.path = root / "huey.db"
        self.huey = SqliteHuey(filename=str(self.path))

        @self.huey.task(name="echo")
        def echo(p: dict[str, Any]) -> dict[str, Any]:
            return p

        @self.huey.task(name="sleeplog")
        def sleeplog_task(p: dict[str, Any]) -> dict[str, Any]:
            return sleeplog(p)

        self.tasks = {"echo": echo, "sleeplog": sleeplog_task}

    # -- driver --------------------------------------------------------------

    def send(self, kind: str, p: dict[str, Any]) -> Any:
        return self.tasks[kind](p)

    def key(self, handle: Any) -> Any:
        return handle.id

    def batch_send(self, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        raise NotSupported(
            "no batch enqueue (task.map() calls enqueue() per item, one commit each)"
        )

    def prefill(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        fn = self.tasks[kind]
        for s in range(0, len(payloads), 50_000):
            rows = []
            for p in payloads[s : s + 50_000]:
                t = fn.s(p)
                out[t.id] = p["i"]
                rows.append((self.huey.storage.name, self.huey.serialize_task(t), 0))
            with self.huey.storage.db(commit=True) as curs:
                curs.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)
        return out

    def wait_result(self, handle: Any, timeout: float) -> Any:
        return handle.get(blocking=True, timeout=timeout)

    def done_count(self) -> int:
        return int(self.huey.result_count())

    def results(self) -> Iterable[tuple[Any, Any]]:
        for k, raw in self.huey.all_results().items():
            yield k, self.huey.serializer.deserialize(raw)

    def queued(self) -> Iterable[tuple[Any, Any]]:
        for t in self.huey.pending():
            yield t.id, t.args[0]

    def durability(self) -> dict[str, str]:
        return {
            "synchronous": read_sync(self.huey.storage.conn),
            "journal": journal_mode(self.path),
        }

    def close(self) -> None:
        self.huey.storage.close()

    # -- worker --------------------------------------------------------------

    def run_worker(self, concurrency: int, ready: Callable[[], None], mode: str) -> None:
        consumer = self.huey.create_consumer(workers=concurrency, worker_type="thread")
        ready()
        consumer.run()  # SIGTERM: stop now; SIGINT: graceful (huey's defaults)
