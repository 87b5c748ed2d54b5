"""The Redis backoff scheduler's calls (seed 002), as its users would port
them: one test per row of docs/migrating.md's seed-002 table."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import ferroq
from ferroq import Backoff, Fail, Queue, QueueScheduler, TaskContext


def test_create_task_by_id_with_priority_then_get_task(queue: Queue) -> None:
    # Seed: create_task(task_params, task_id, priority): a smaller priority runs first.
    order: list[str] = []

    @queue.task(retries=3, backoff=Backoff.exponential(30, multiplier=2.0))
    def handle(index: int, data: str) -> dict[str, str]:
        order.append(data)
        return {"status": "success", "data": data}

    for task_id, seed_priority in [("task_b", 200), ("task_a", 100)]:
        handle.options(key=task_id, priority=-seed_priority).send(index=1, data=task_id)
    # Sending the same task id again is a no-op, as create_task refuses a duplicate.
    again = handle.options(key="task_a", priority=-100).send(index=1, data="task_a")
    with QueueScheduler(queue, concurrency=1):
        assert again.result(timeout=10) == {"status": "success", "data": "task_a"}
        queue.handle(queue.get_by_key("task_b").id).result(timeout=10)  # type: ignore[union-attr]
    assert order == ["task_a", "task_b"]
    t = queue.get_by_key("task_a")  # get_task(task_id)
    assert t is not None and t.status == "done" and t.kwargs == {"index": 1, "data": "task_a"}
    assert t.result == {"status": "success", "data": "task_a"}
    assert t.max_attempts == 4 and t.attempts == 1
    assert isinstance(t.created_at, datetime) and t.created_at.tzinfo == timezone.utc


def test_queue_statistics_with_members(queue: Queue) -> None:
    # Seed: get_queue_statistics() -> totals and member ids per status.
    ids = [queue.put("jobs", {"n": i}).id for i in range(3)]
    handed = queue.claim("jobs")
    assert handed is not None
    stats, members = queue.stats()["jobs"], queue.members("jobs")["jobs"]
    assert (stats["queued"], stats["running"]) == (2, 1)
    assert members["running"] == [handed.id]
    assert sorted(members["queued"] + members["running"]) == sorted(ids)


def test_mark_completed_failed_processing_and_progress(queue: Queue) -> None:
    # Seed: mark_task_processing / update_task_progress(75) / mark_task_completed / failed.
    done_id = queue.put("jobs", {"n": 1}).id
    failed_id = queue.put("jobs", {"n": 2}).id
    running = queue.start(done_id)  # mark_task_processing
    queue.progress(done_id, 0.75)  # update_task_progress(task_id, 75)
    assert queue.get(done_id).progress == 0.75  # type: ignore[union-attr]
    queue.complete(running.id, "result text")  # mark_task_completed
    queue.start(failed_id)
    queue.fail(failed_id, "reason")  # mark_task_failed
    assert queue.get(done_id).result == "result text"  # type: ignore[union-attr]
    failed = queue.get(failed_id)
    assert failed is not None and failed.status == "failed" and failed.error == "reason"


def test_handler_returns_fail_and_exception_handler(queue: Queue) -> None:
    # Seed: a handler returning ResultEntity.fail(...), and an exception handler.
    handled: list[str] = []

    @queue.task
    def business(index: int) -> object:
        if index == 0:
            return Fail("任务执行失败", details={"error": "具体错误信息"})
        if index == 1:
            raise ConnectionError("db down")
        return {"status": "success"}

    @business.on_failure
    def exception_handler(exc: BaseException, task: TaskContext) -> None:
        handled.append(f"{task.id}:{type(exc).__name__}")

    with QueueScheduler(queue):
        fail, boom, ok = (business.send(i) for i in range(3))
        assert ok.result(timeout=10) == {"status": "success"}
        with pytest.raises(ferroq.TaskFailedError, match="任务执行失败"):
            fail.result(timeout=10)
        with pytest.raises(ConnectionError):
            boom.result(timeout=10)
    assert handled == [f"{boom.id}:ConnectionError"]
    assert queue.get(fail.id).error_details == {"error": "具体错误信息"}  # type: ignore[union-attr]


def test_gpu_floor_and_utilisation_ceiling(queue: Queue) -> None:
    # Seed: TaskConfig(min_gpu_memory_gb=0.5, min_gpu_utilization=10), a ceiling in its code.
    @queue.task(requires={"gpu_memory_gb": 0.5, "gpu_utilization": ("<=", 10)})
    def on_gpu() -> str:
        return "ran"

    h = on_gpu.send()
    with QueueScheduler(queue, resources={"gpu_memory_gb": 8, "gpu_utilization": 3}):
        assert h.result(timeout=10) == "ran"


def test_cancel_task(queue: Queue) -> None:
    # Seed: cancel_task(task_id): thread mode flags it, process mode kills it.
    queued = queue.put("jobs", 1)
    assert queue.cancel(queued.id) == "cancelled"
    running = queue.start(queue.put("jobs", 2).id)
    assert queue.cancel(running.id) == "running"  # flagged; its holder ends it
    assert queue.cancel(running.id, force=True) == "cancelled"
