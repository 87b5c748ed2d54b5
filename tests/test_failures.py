"""Failing as a value and handling failures in the worker (the backoff
scheduler's ResultEntity.fail and exception handler, in ferroq's idiom)."""

from __future__ import annotations

import threading

import pytest

import ferroq
from ferroq import Fail, Queue, QueueScheduler, TaskContext


def test_a_returned_fail_ends_the_task_failed_with_its_message_and_details(queue: Queue) -> None:
    runs: list[int] = []

    @queue.task(retries=3)
    def charge(order: int) -> object:
        runs.append(order)
        if order < 0:
            return Fail("card declined", details={"order": order, "code": -1})
        return "charged"

    with QueueScheduler(queue):
        ok = charge.send(1)
        declined = charge.send(-5)
        assert ok.result(timeout=10) == "charged"
        with pytest.raises(ferroq.TaskFailedError, match="card declined"):
            declined.result(timeout=10)
    t = queue.get(declined.id)
    assert t is not None and t.status == "failed"
    assert t.attempts == 1, "a returned Fail is final unless retry=True"
    assert (t.error, t.error_type) == ("card declined", "ferroq.Fail")
    assert t.error_details == {"order": -5, "code": -1}
    assert runs.count(-5) == 1


def test_a_returned_fail_with_retry_uses_the_attempts(queue: Queue) -> None:
    @queue.task(retries=2, backoff=ferroq.Backoff.fixed(0.01))
    def flaky() -> object:
        ctx = ferroq.current_task()
        if ctx.attempt < 3:
            return Fail(f"try {ctx.attempt}", retry=True)
        return ctx.attempt

    with QueueScheduler(queue):
        assert flaky.send().result(timeout=10) == 3


def test_fail_details_must_be_json(queue: Queue) -> None:
    @queue.task
    def odd() -> object:
        return Fail("bad", details={"x": object()})

    @queue.task
    def not_a_number() -> object:
        # NaN is not JSON: stored as is, other readers of the record could not parse it.
        return Fail("bad", details={"x": float("nan")})

    with QueueScheduler(queue):
        h = odd.send()
        n = not_a_number.send()
        with pytest.raises(ferroq.SerializationError, match="not JSON"):
            h.result(timeout=10)
        with pytest.raises(ferroq.SerializationError, match="not JSON"):
            n.result(timeout=10)


def test_on_failure_sees_each_failed_attempt_with_its_exception(queue: Queue) -> None:
    seen: list[tuple[str, int, int, str]] = []
    lock = threading.Lock()

    @queue.task(retries=1, backoff=ferroq.Backoff.fixed(0.01))
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    @boom.on_failure
    def handler(exc: BaseException, task: TaskContext) -> None:
        with lock:
            seen.append((type(exc).__name__, task.attempt, task.max_attempts, str(exc)))

    @queue.task
    def fine() -> int:
        return 1

    @fine.on_failure
    def never(exc: BaseException, task: TaskContext) -> None:
        raise AssertionError("not called for a task that succeeds")

    with QueueScheduler(queue):
        h = boom.send(7)
        with pytest.raises(ValueError, match="bad 7"):
            h.result(timeout=10)
        assert fine.send().result(timeout=10) == 1
    assert seen == [("ValueError", 1, 2, "bad 7"), ("ValueError", 2, 2, "bad 7")]


def test_a_handler_that_raises_changes_nothing(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    @queue.task
    def boom() -> None:
        raise KeyError("k")

    @boom.on_failure
    def broken(exc: BaseException, task: TaskContext) -> None:
        raise RuntimeError("handler bug")

    with QueueScheduler(queue):
        h = boom.send()
        with pytest.raises(KeyError):
            h.result(timeout=10)
    assert queue.get(h.id).error_type == "builtins.KeyError"  # type: ignore[union-attr]
    assert any("on_failure handler" in r.getMessage() for r in caplog.records)


def test_a_handler_that_exits_changes_nothing_either(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    # sys.exit() (or any BaseException) in a handler is the handler's own
    # error: the attempt still ends failed, and the worker thread goes on.
    @queue.task
    def boom() -> None:
        raise KeyError("k")

    @boom.on_failure
    def leaving(exc: BaseException, task: TaskContext) -> None:
        raise SystemExit(3)

    @queue.task
    def fine() -> str:
        return "ok"

    with QueueScheduler(queue, concurrency=1):
        h = boom.send()
        with pytest.raises(KeyError):
            h.result(timeout=30)
        assert fine.send().result(timeout=30) == "ok"
    assert queue.get(h.id).status == "failed"  # type: ignore[union-attr]
    assert any("on_failure handler" in r.getMessage() for r in caplog.records)


def test_on_failure_needs_a_callable(queue: Queue) -> None:
    @queue.task
    def job() -> None:
        return None

    with pytest.raises(ferroq.InvalidArgumentError):
        job.on_failure("not callable")  # type: ignore[arg-type]
