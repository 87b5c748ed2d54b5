"""ferroq.testing: eager mode, direct calls with current_task(), the pytest
fixtures, run_until_empty, the manual clock; and what came with them: fast
idle stops, workers serving every queue their tasks were sent to, task
names that survive __main__, and tasks refused at decoration."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from app import tasks as app_tasks
from conftest import ROOT, python_env, spawn_worker, wait_for
from ferroq import (
    Backoff,
    InvalidArgumentError,
    Queue,
    QueueScheduler,
    Retry,
    TaskTimeoutError,
    current_task,
    task,
)
from ferroq.testing import EagerMode, ManualClock, eager, run_until_empty

# -- eager mode ---------------------------------------------------------------


def test_eager_send_runs_at_once_as_a_worker_would() -> None:
    with Queue("memory://", eager=True) as q:
        seen: list[tuple[int, int]] = []

        @q.task(retries=2)
        def flaky(x: int) -> int:
            ctx = current_task()
            seen.append((ctx.id, ctx.attempt))
            ctx.progress(0.5)
            if ctx.attempt < 3:
                raise ValueError("not yet")
            return x * 2

        h = flaky.send(21)
        # Returned only once done: retries ran at once, no backoff slept.
        assert h.status() == "done" and h.result(timeout=0) == 42
        assert seen == [(h.id, 1), (h.id, 2), (h.id, 3)]
        record = q.get(h.id)
        assert record is not None and record.attempts == 3 and record.progress == 0.5
        assert record.worker is not None and record.worker.startswith("eager:")


def test_eager_failure_is_stored_like_a_worker_stores_it() -> None:
    with Queue("memory://", eager=True) as q:

        @q.task(retries=1)
        def boom() -> None:
            raise KeyError("gone")

        h = boom.send()  # the send itself does not raise
        assert h.status() == "failed"
        with pytest.raises(KeyError):
            h.result(timeout=0)
        record = q.get(h.id)
        assert record is not None and record.attempts == 2 and "gone" in (record.error or "")


def test_eager_async_tasks_callbacks_hooks_and_retry_requests() -> None:
    q = Queue("memory://")
    moves: list[tuple[str, str]] = []

    @q.task
    async def inc(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @q.task(retries=1)
    def again() -> str:
        if current_task().attempt == 1:
            raise Retry(delay=60)  # at once in eager mode
        return "ok"

    with eager(q, hooks=[lambda _id, old, new: moves.append((old, new))]):
        got: list[Any] = []
        h = inc.options(callback=lambda hh: got.append(hh.result(timeout=0))).send(1)
        assert got == [2] and h.result(timeout=0) == 2
        assert again.send().result(timeout=0) == "ok"
    assert moves == [
        ("queued", "running"),
        ("running", "done"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "done"),
    ]
    # Outside the block, sends are stored and wait for a worker again.
    assert inc.send(1).status() == "queued"
    q.close()


def test_eager_everywhere_nested_sends_and_delays() -> None:
    q = Queue("memory://")

    @q.task
    def leaf(x: int) -> int:
        return x * 10

    @q.task
    def parent(x: int) -> int:
        return leaf.send(x).result(timeout=0) + 1  # runs inside, at once

    with eager():
        assert parent.send(4).result(timeout=0) == 41
        later = leaf.options(delay=3600).send(1)
        assert later.status() == "queued"  # scheduled: stays queued
    q.close()


def test_eager_soft_timeout_is_recorded() -> None:
    with Queue("memory://", eager=True) as q:

        @q.task(timeout=0.01)
        def slow() -> None:
            time.sleep(0.05)

        h = slow.send()
        assert h.status() == "failed"
        with pytest.raises(TaskTimeoutError):
            h.result(timeout=0)


# -- calling a task function directly -------------------------------------------


@task
def report(steps: int) -> tuple[int, int, str, bool, float]:
    """Uses its context as a worker-run task would."""
    ctx = current_task()
    for i in range(steps):
        ctx.progress((i + 1) / steps)
    return ctx.id, ctx.attempt, ctx.name, ctx.is_cancelled(), ctx.last_progress or 0.0


def test_direct_call_has_a_context_without_a_store() -> None:
    assert report(4) == (0, 1, f"{__name__}:report", False, 1.0)
    with pytest.raises(InvalidArgumentError):
        _progress_out_of_range()  # the store's rule, without a store
    with pytest.raises(RuntimeError):
        current_task()  # outside any task: still an error


@task
def _progress_out_of_range() -> None:
    current_task().progress(2.0)


@task
async def areport() -> int:
    """An async task calling current_task()."""
    return current_task().attempt


def test_direct_call_of_an_async_task() -> None:
    assert asyncio.run(areport()) == 1


# -- fixtures, run_until_empty, the manual clock ------------------------------------


def test_fixtures_queue_and_eager(ferroq_queue: Queue, ferroq_eager: EagerMode) -> None:
    moves: list[str] = []
    ferroq_eager.on_status_change(lambda _i, _o, new: moves.append(new))
    # Module-level tasks send to ferroq_queue, the default queue of the test.
    assert report.send(2).result(timeout=0)[1:] == (1, f"{__name__}:report", False, 1.0)
    assert moves == ["running", "done"]


def test_fixture_scheduler_runs_and_stops_fast(ferroq_scheduler: QueueScheduler) -> None:
    assert report.send(1).result(timeout=10)[1] == 1
    started = time.perf_counter()
    ferroq_scheduler.stop()
    assert time.perf_counter() - started < 0.1  # idle: typically about 1 ms


def test_run_until_empty_on_a_manual_clock(ferroq_queue: Queue, ferroq_clock: ManualClock) -> None:
    calls: list[int] = []

    @ferroq_queue.task(retries=1, backoff=Backoff.fixed(30))
    def flaky() -> int:
        calls.append(current_task().attempt)
        if current_task().attempt == 1:
            raise ValueError("first")
        return 7

    h = flaky.options(delay=10).send()
    assert run_until_empty(ferroq_queue) == 0 and calls == []  # not due yet
    ferroq_clock.advance(10)
    assert run_until_empty(ferroq_queue) == 1 and h.status() == "queued"  # backoff: 30 s
    ferroq_clock.advance(29)
    assert run_until_empty(ferroq_queue) == 0
    ferroq_clock.advance(1)
    assert run_until_empty(ferroq_queue) == 1
    assert h.result(timeout=0) == 7 and calls == [1, 2]


def test_run_until_empty_times_out_on_endless_work(ferroq_queue: Queue) -> None:
    @ferroq_queue.task
    def forever() -> None:
        forever.send()

    forever.send()
    with pytest.raises(TaskTimeoutError):
        run_until_empty(ferroq_queue, timeout=0.2)


# -- fast stops ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["thread", "asyncio"])
def test_idle_scheduler_stops_fast(queue: Queue, mode: Any) -> None:
    s = QueueScheduler(queue, mode=mode).start()
    time.sleep(0.05)  # every loop is in its idle wait
    started = time.perf_counter()
    s.stop()
    # 20 ms is the aim; the margin is for a loaded CI machine.
    assert time.perf_counter() - started < 0.1


# -- workers serve every queue their tasks were sent to -----------------------------


def test_worker_serves_frame_batches_and_stats_shows_unserved(tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    url = f"sqlite://{tmp_path}/store?shards=1"
    with Queue(url) as q:
        q.enqueue_frame(pl.DataFrame({"a": [1, 2, 3], "b": [1, 1, 1]}), task=app_tasks.add)
        other = q.send(app_tasks.add, 5, 5)
        q._store.enqueue("render", "app.tasks:add", q.encode([[1, 2], {}]))
        stats = subprocess.run(
            [sys.executable, "-m", "ferroq.cli", "stats", "--url", url],
            env=python_env(), capture_output=True, text=True, check=True,
        )
        assert "'batch:app.tasks:add' has 3 queued task(s) and no worker" in stats.stderr
        assert "'render' has 1 queued" in stats.stderr
        worker = spawn_worker(url)
        try:
            assert other.result(timeout=20) == 10
            wait_for(lambda: q.stats()["batch:app.tasks:add"]["done"] == 3, 20, "frame rows")
            wait_for(lambda: q.stats()["render"]["done"] == 1, 20, "render queue")
            assert "batch:app.tasks:add" in q.workers()[0].queues
            assert q.unserved() == {}
        finally:
            worker.terminate()
            worker.communicate(timeout=20)  # also closes its stdout pipe


# -- task names --------------------------------------------------------------------


def test_a_task_sent_from_a_script_is_found_by_a_worker(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/store?shards=1"
    script = ROOT / "tests" / "scripts" / "jobs.py"
    out = subprocess.run(
        [sys.executable, str(script), url], env=python_env(), capture_output=True,
        text=True, check=True,
    )
    name, task_id = out.stdout.split()
    assert name == "jobs:double"
    # The worker imports the same file under a longer dotted path.
    worker = spawn_worker(url, modules=("scripts.jobs",))
    try:
        with Queue(url) as q:
            assert q.handle(int(task_id)).result(timeout=20) == 42
    finally:
        worker.terminate()
        worker.communicate(timeout=20)


class Greeter:
    def hello(self) -> str:
        return "hi"


def test_tasks_a_worker_could_not_import_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="lambda"):
        task(lambda: 1)
    with pytest.raises(InvalidArgumentError, match="bound method"):
        task(Greeter().hello)
    with pytest.raises(InvalidArgumentError, match="inside another"):

        @task
        def nested() -> None: ...

    # Bound to a queue, nested functions run in this process: allowed.
    with Queue("memory://", eager=True) as q:

        @q.task
        def local() -> int:
            return 1

        assert local.send().result(timeout=0) == 1
        assert q.task(name="named-lambda")(lambda: 2).send().result(timeout=0) == 2
