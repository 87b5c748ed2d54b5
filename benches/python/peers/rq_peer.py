"""RQ on the same Redis as ferroq-redis (``$FERROQ_BENCH_REDIS_URL``):
``Queue(name, connection=Redis)``, ``queue.enqueue(fn, p)``,
``queue.enqueue_many`` (one pipeline) for batches,
``job.latest_result(timeout=...)`` to wait, and 4 ``SimpleWorker``
processes (``rq worker -w rq.worker.SimpleWorker``: jobs run in the worker
process, without RQ's default fork per job) for the 4-way concurrency the
other systems get from threads. Results stay in RQ's result store (its
default 500 s TTL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry

from . import NotSupported, Peer, wait_for_sigterm
from .ferroq_redis_peer import REDIS_URL, redis_settings

HERE = Path(__file__).resolve().parent


def _fns() -> dict[str, Callable[..., Any]]:
    from peers import rq_tasks

    return {"echo": rq_tasks.echo, "sleeplog": rq_tasks.sleeplog_task}


class Adapter(Peer):
    name = "rq"
    notes = [
        "rq: 4 SimpleWorker processes (no fork per job) stand for 4 threads; an idle worker "
        "blocks on BLPOP, so it wakes at once.",
        "rq: a job whose worker dies stays in the started registry until its timeout "
        "(180 s by default) when a live worker's maintenance moves it to the failed "
        "registry (not re-run unless a Retry was set); W4 shows that.",
    ]
    prefill_note = "queue.enqueue_many (one pipeline per 10,000 jobs)"

    def __init__(self, root: Path, role: str) -> None:
        super().__init__(root, role)
        self.conn = Redis.from_url(REDIS_URL)
        self.queue_name = f"bench_{root.name}"
        self.q = Queue(self.queue_name, connection=self.conn)
        self.fns = _fns()

    # -- driver --------------------------------------------------------------

    def send(self, kind: str, p: dict[str, Any]) -> Any:
        return self.q.enqueue(self.fns[kind], p)

    def key(self, handle: Any) -> Any:
        return handle.id

    def thread_sender(self) -> Callable[[str, dict[str, Any]], Any]:
        q = Queue(self.queue_name, connection=Redis.from_url(REDIS_URL))
        fns = self.fns
        return lambda kind, p: q.enqueue(fns[kind], p)

    def batch_label(self) -> str:
        return "queue.enqueue_many(Queue.prepare_data(...)) in one pipeline"

    def batch_send(self, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        return self._many("echo", payloads)

    def _many(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        out: dict[Any, int] = {}
        fn = self.fns[kind]
        for s in range(0, len(payloads), 10_000):
            chunk = payloads[s : s + 10_000]
            jobs = self.q.enqueue_many([Queue.prepare_data(fn, (p,)) for p in chunk])
            out.update((j.id, p["i"]) for j, p in zip(jobs, chunk))
        return out

    def prefill(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        return self._many(kind, payloads)

    def wait_result(self, handle: Any, timeout: float) -> Any:
        result = handle.latest_result(timeout=int(max(1, timeout)))
        if result is None:
            raise TimeoutError(f"job {handle.id} has no result after {timeout} s")
        return result.return_value

    def done_count(self) -> int:
        return FinishedJobRegistry(queue=self.q).count

    def _jobs(self, ids: list[str]) -> Iterable[Job]:
        for s in range(0, len(ids), 1_000):
            for job in Job.fetch_many(ids[s : s + 1_000], connection=self.conn):
                if job is not None:
                    yield job

    def results(self) -> Iterable[tuple[Any, Any]]:
        ids = FinishedJobRegistry(queue=self.q).get_job_ids()
        for job in self._jobs(ids):
            yield job.id, job.return_value()

    def queued(self) -> Iterable[tuple[Any, Any]]:
        for job in self._jobs(self.q.get_job_ids()):
            yield job.id, job.args[0]

    def durability(self) -> dict[str, Any]:
        return redis_settings(REDIS_URL)

    def close(self) -> None:
        self.conn.close()

    # -- worker --------------------------------------------------------------

    def run_worker(self, concurrency: int, ready: Callable[[], None], mode: str) -> None:
        if mode not in ("drain", "serve", "crash"):
            raise NotSupported(mode)
        stop = wait_for_sigterm()
        path = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "PYTHONPATH": path}
        cmd = [sys.executable, str(HERE / "rq_child.py"), REDIS_URL, self.queue_name]
        children = [
            subprocess.Popen([*cmd, str(os.getpid())], env=env) for _ in range(concurrency)
        ]
        ready()
        stop.wait()
        for c in children:
            c.send_signal(signal.SIGTERM)
        for c in children:
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
