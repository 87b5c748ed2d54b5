"""The everyday path: @task, send, QueueScheduler, results, retries."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import ferroq
from ferroq import (
    Backoff,
    Queue,
    QueueScheduler,
    Retry,
    current_task,
    set_default_queue,
    task,
)

CALLS: dict[str, int] = {}
LOCK = threading.Lock()


def bump(name: str) -> int:
    with LOCK:
        CALLS[name] = CALLS.get(name, 0) + 1
        return CALLS[name]


@pytest.fixture
def q(queue: Queue) -> Iterator[Queue]:
    CALLS.clear()
    set_default_queue(queue)
    yield queue
    set_default_queue(None)


class Point(BaseModel):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    label: str
    size: float


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def scale(p: Point, k: int) -> Point:
    return Point(x=p.x * k, y=p.y * k)


@task
def describe(box: Box, when: dt.datetime, ident: uuid.UUID) -> dict[str, Any]:
    return {"label": box.label, "year": when.year, "uuid": str(ident)}


@task(retries=2, backoff=Backoff.fixed(0.05))
def flaky(name: str) -> str:
    if bump(name) < 3:
        raise ConnectionError(f"attempt {CALLS[name]} failed")
    return f"ok after {CALLS[name]}"


@task(retries=1, backoff=Backoff.linear(0.05))
def always_fails() -> None:
    bump("always")
    raise ValueError("nope")


@task(retries=3, backoff=Backoff.exponential(0.02, multiplier=2.0, jitter=0.0))
def exp_fails() -> None:
    bump("exp")
    raise RuntimeError("exp")


@task(retries=1)
def asks_retry() -> int:
    if bump("asks") == 1:
        raise Retry(delay=0.05)
    return current_task().attempt


@task
def record(tag: str, log: list[str] = []) -> str:  # noqa: B006 - shared on purpose
    with LOCK:
        RECORDED.append(tag)
    return tag


RECORDED: list[str] = []


@task
def with_progress() -> float:
    ctx = current_task()
    ctx.progress(0.5)
    PROGRESS_SEEN.set()
    RELEASE_PROGRESS.wait(5)
    ctx.progress(1.0)
    return 1.0


PROGRESS_SEEN = threading.Event()
RELEASE_PROGRESS = threading.Event()


@task
def cooperative() -> str:
    STARTED.set()
    ctx = current_task()
    for _ in range(500):
        if ctx.is_cancelled():
            return "stopped"
        time.sleep(0.01)
    return "ran to the end"


STARTED = threading.Event()


@task(timeout=0.2)
def too_slow() -> str:
    # Runs 1 s unless told to stop: a timed-out attempt is flagged
    # cancelled, so the scheduler's stop need not wait for the sleep.
    ctx = current_task()
    for _ in range(100):
        if ctx.is_cancelled():
            return "stopped"
        time.sleep(0.01)
    return "late"


@task
def crash_with_type() -> None:
    raise KeyError("missing-thing")


def test_send_run_result(q: Queue) -> None:
    with QueueScheduler(q, concurrency=2):
        h = add.send(2, 3)
        assert h.result(timeout=10) == 5
        assert h.status() == "done"
    assert add(1, 1) == 2  # direct call still just runs


def test_typed_results_round_trip(q: Queue) -> None:
    with QueueScheduler(q):
        p = scale.send(Point(x=1, y=2), 3).result(timeout=10)
        assert isinstance(p, Point) and p == Point(x=3, y=6)
        u = uuid.uuid4()
        out = describe.send(Box("b", 1.5), dt.datetime(2030, 1, 2), u).result(timeout=10)
        assert out == {"label": "b", "year": 2030, "uuid": str(u)}


def test_retries_until_success(q: Queue) -> None:
    with QueueScheduler(q):
        h = flaky.send("f1")
        assert h.result(timeout=10) == "ok after 3"
        info = h.info()
        assert info.attempts == 3 and info.status == "done"


def test_exhausted_retries_fail_with_the_task_error(q: Queue) -> None:
    with QueueScheduler(q):
        h = always_fails.send()
        with pytest.raises(ValueError, match="nope") as err:
            h.result(timeout=10)
    assert CALLS["always"] == 2
    cause = err.value.__cause__
    assert isinstance(cause, ferroq.TaskFailedError)
    assert cause.exc_type == "builtins.ValueError"
    assert "always_fails" in cause.traceback and 'raise ValueError("nope")' in cause.traceback
    assert h.status() == "failed"


def test_exponential_backoff_spaces_attempts(q: Queue) -> None:
    with QueueScheduler(q):
        h = exp_fails.send()
        with pytest.raises(RuntimeError):
            h.result(timeout=10)
    assert CALLS["exp"] == 4
    # Waits of 20, 40 and 80 ms: the last attempt starts >= 140 ms after the first.
    info = h.info()
    assert info.started_at is not None
    assert (info.started_at - info.created_at).total_seconds() >= 0.140


def test_retry_requested_from_inside(q: Queue) -> None:
    with QueueScheduler(q):
        assert asks_retry.send().result(timeout=10) == 2


def test_priorities_and_delays(q: Queue) -> None:
    RECORDED.clear()
    record.options(priority=0).send("low")
    record.options(priority=10).send("high")
    record.options(priority=5).send("mid")
    record.options(priority=100, delay=0.3).send("later")
    with QueueScheduler(q, concurrency=1) as s:
        deadline = time.monotonic() + 10
        while len(RECORDED) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.concurrency == 1
    assert RECORDED == ["high", "mid", "low", "later"]


def test_idempotent_keys(q: Queue) -> None:
    a = add.options(key="order-1").send(1, 2)
    b = add.options(key="order-1").send(5, 6)
    assert a.id == b.id
    assert q.stats()["default"]["queued"] == 1
    with QueueScheduler(q):
        assert b.result(timeout=10) == 3


def test_cancel_queued_and_running(q: Queue) -> None:
    h = add.send(1, 1)
    assert h.cancel() == "cancelled"
    with pytest.raises(ferroq.TaskCancelledError):
        h.result(timeout=1)
    STARTED.clear()
    with QueueScheduler(q):
        r = cooperative.send()
        assert STARTED.wait(10)
        assert r.cancel() == "running"
        with pytest.raises(ferroq.TaskCancelledError):
            r.result(timeout=10)
    assert r.status() == "cancelled"


def test_progress(q: Queue) -> None:
    PROGRESS_SEEN.clear()
    RELEASE_PROGRESS.clear()
    with QueueScheduler(q):
        h = with_progress.send()
        assert PROGRESS_SEEN.wait(10)
        assert h.progress() == 0.5
        RELEASE_PROGRESS.set()
        assert h.result(timeout=10) == 1.0
        assert h.progress() == 1.0


def test_callbacks_run_in_the_sender(q: Queue) -> None:
    got: list[tuple[int, int]] = []
    done = threading.Event()

    def on_done(handle: ferroq.TaskHandle[int]) -> None:
        got.append((handle.id, handle.result(timeout=1)))
        done.set()

    with QueueScheduler(q):
        h = add.options(callback=on_done).send(20, 22)
        assert done.wait(10)
    assert got == [(h.id, 42)]


def test_status_hooks(q: Queue) -> None:
    moves: list[tuple[int, str, str]] = []
    scheduler = QueueScheduler(q)
    scheduler.on_status_change(lambda i, old, new: moves.append((i, old, new)))
    with scheduler:
        ok = add.send(1, 2)
        bad = always_fails.send()
        ok.result(timeout=10)
        with pytest.raises(ValueError):
            bad.result(timeout=10)
        time.sleep(0.1)
    assert (ok.id, "queued", "running") in moves
    assert (ok.id, "running", "done") in moves
    assert (bad.id, "running", "queued") in moves
    assert (bad.id, "running", "failed") in moves


def test_soft_timeout_fails_the_task(q: Queue) -> None:
    with QueueScheduler(q):
        h = too_slow.send()
        with pytest.raises(ferroq.TaskTimeoutError):
            h.result(timeout=10)


def test_task_exception_type_is_rebuilt(q: Queue) -> None:
    with QueueScheduler(q):
        with pytest.raises(KeyError, match="missing-thing"):
            crash_with_type.send().result(timeout=10)


def test_unknown_task_at_worker_fails_that_task_only(q: Queue) -> None:
    q._store.enqueue("default", "nowhere:ghost", b"J[[],{}]")
    with QueueScheduler(q):
        good = add.send(1, 1)
        assert good.result(timeout=10) == 2
        deadline = time.monotonic() + 10
        while not q.list(status="failed") and time.monotonic() < deadline:
            time.sleep(0.01)
        [ghost] = q.list(status="failed")
    assert "nowhere:ghost" in (ghost.error or "")
    assert ghost.error_type == "ferroq._errors.UnknownTaskError"


def test_bad_sends_store_nothing(q: Queue) -> None:
    with pytest.raises(ferroq.UnknownTaskError):
        q.send("no.such:task", 1)
    with pytest.raises(ferroq.SerializationError):
        add.send(object(), 1)  # type: ignore[arg-type]
    small = Queue(q.url if q.url == "memory://" else q.url + "&max_payload=64")
    try:
        if small.url != "memory://":
            bound = small.task(name="bound-add")(lambda a: a)
            with pytest.raises(ferroq.PayloadTooLargeError):
                bound.send("x" * 100)
            assert small.stats() == {}
    finally:
        small.close()
    assert q.stats() == {}


def test_send_by_name_and_result_timeout(q: Queue) -> None:
    h = q.send("test_tasks:add", 2, 2)
    with pytest.raises(TimeoutError):
        h.result(timeout=0.05)
    with QueueScheduler(q):
        assert h.result(timeout=10) == 4


def test_retry_a_failed_task(q: Queue) -> None:
    with QueueScheduler(q):
        h = always_fails.send()
        with pytest.raises(ValueError):
            h.result(timeout=10)
        q.retry(h.id)
        with pytest.raises(ValueError):
            h.result(timeout=10)
    assert CALLS["always"] == 4


def test_stats_and_purge(q: Queue) -> None:
    with QueueScheduler(q):
        for i in range(5):
            add.send(i, i).result(timeout=10)
    assert q.stats()["default"]["done"] == 5
    assert q.purge(older_than=0) == 5
    assert q.stats() == {}


def test_bound_task_sends_to_its_queue(tmp_path: Any) -> None:
    set_default_queue(None)
    with Queue(str(tmp_path / "bound")) as bq:

        @bq.task(name="bound-mul")
        def mul(a: int, b: int) -> int:
            return a * b

        with QueueScheduler(bq, queues=["default"]):
            assert mul.send(6, 7).result(timeout=10) == 42


def test_module_level_send_without_a_default_queue_says_how(monkeypatch: Any) -> None:
    set_default_queue(None)
    monkeypatch.delenv("FERROQ_URL", raising=False)
    with pytest.raises(ferroq.FerroqError, match="set_default_queue"):
        add.send(1, 2)


def test_discover_imports_every_module() -> None:
    found = {t.name for t in ferroq.discover("app")}
    assert {"app.tasks:add", "app.tasks:slow", "app.tasks:shout", "app.more.echo"} <= found


def test_graceful_stop_releases_unstarted_claims(q: Queue) -> None:
    handles = [q.send("test_tasks:add", i, 0) for i in range(200)]
    s = QueueScheduler(q, concurrency=2, batch_size=50).start()
    time.sleep(0.05)
    s.stop(grace=5)
    stats = q.stats()["default"]
    assert stats["running"] == 0
    assert stats["done"] + stats["queued"] == 200
    with QueueScheduler(q):
        assert [h.result(timeout=20) for h in handles] == list(range(200))
