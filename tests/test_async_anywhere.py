"""``async def`` tasks under a scheduler in the default thread mode run on
one event loop the scheduler owns, up to ``concurrency`` at once, with
timeouts, cancellation, progress, hooks and graceful stops as everywhere;
and thread-mode claims do not leave slow tasks queued behind one thread
while the others idle. Overlap is judged from the start and end times the
tasks record, never from the wall clock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import ferroq
from ferroq import Queue, QueueScheduler, current_task


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.fixture
def q(tmp_path: Path) -> Queue:
    queue = Queue(str(tmp_path / "store"))
    yield queue  # type: ignore[misc]
    queue.close()


def test_five_hundred_async_tasks_overlap_on_one_loop(q: Queue) -> None:
    spans: list[tuple[float, float]] = []
    loops: set[int] = set()
    threads: set[int] = set()

    @q.task
    async def nap(i: int) -> int:
        loops.add(id(asyncio.get_running_loop()))
        threads.add(threading.get_ident())
        t0 = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((t0, time.monotonic()))  # one loop thread: no lock needed
        return i

    handles = nap.map([(i,) for i in range(500)])
    with QueueScheduler(q, concurrency=500, queues=["default"]):
        done, pending = ferroq.wait(handles, timeout=170)
    assert pending == []
    assert [h.result() for h in handles] == list(range(500))
    assert len(loops) == 1 and len(threads) == 1  # the scheduler's one loop
    assert len(spans) == 500
    # Run one after another, or a few at a time, they could not overlap
    # like this; at once, nearly all do.
    assert max_overlap(spans) >= 250


def test_async_in_flight_is_bounded_by_concurrency(q: Queue) -> None:
    running = 0
    most = 0

    @q.task
    async def step(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        return i

    with QueueScheduler(q, concurrency=3, queues=["default"]):
        handles = step.map([(i,) for i in range(40)])
        assert [h.result(timeout=120) for h in handles] == list(range(40))
    assert 1 <= most <= 3


def test_timeout_cancels_the_coroutine(q: Queue) -> None:
    cancelled = threading.Event()

    @q.task(timeout=0.3)
    async def stuck() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with QueueScheduler(q, queues=["default"]):
        h = stuck.send()
        with pytest.raises(ferroq.TaskTimeoutError, match="ran past its timeout"):
            h.result(timeout=60)
        assert cancelled.wait(30)


def test_cancel_progress_and_hooks(q: Queue) -> None:
    started = threading.Event()
    seen_cancel = threading.Event()
    moves: list[tuple[int, str, str]] = []

    @q.task
    async def long_one() -> None:
        current_task().progress(0.25)
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen_cancel.set()
            raise

    @q.task
    async def short_one(x: int) -> int:
        current_task().progress(1.0)
        return x + 1

    s = QueueScheduler(q, queues=["default"])
    s.on_status_change(lambda i, old, new: moves.append((i, old, new)))
    with s:
        h = long_one.send()
        assert started.wait(60)
        assert h.progress() == 0.25
        assert h.cancel() == "running"
        with pytest.raises(ferroq.TaskCancelledError):
            h.result(timeout=60)
        assert seen_cancel.wait(30)
        h2 = short_one.send(1)
        assert h2.result(timeout=60) == 2
        assert h2.progress() == 1.0
        deadline = time.monotonic() + 30
        while (h2.id, "running", "done") not in moves and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (h.id, "queued", "running") in moves
    assert (h.id, "running", "cancelled") in moves
    assert (h2.id, "running", "done") in moves


def test_stop_lets_coroutines_finish_or_gives_them_back(q: Queue) -> None:
    gate = threading.Event()
    started = threading.Event()

    @q.task
    async def waits_for_gate(x: int) -> int:
        started.set()
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return x

    s = QueueScheduler(q, queues=["default"]).start()
    h = waits_for_gate.send(7)
    assert started.wait(60)
    threading.Timer(0.2, gate.set).start()
    s.stop(grace=60)  # in flight: finishes within the grace
    assert h.status() == "done" and h.result() == 7

    gate.clear()
    started.clear()
    s = QueueScheduler(q, queues=["default"]).start()
    h2 = waits_for_gate.send(8)
    assert started.wait(60)
    s.stop(grace=0.2)  # past the grace: cancelled and given back
    assert h2.status() == "queued"
    gate.set()
    with QueueScheduler(q, queues=["default"]):
        assert h2.result(timeout=60) == 8


def test_plain_and_async_tasks_side_by_side(q: Queue) -> None:
    @q.task
    def plain(x: int) -> str:
        return f"p{x}"

    @q.task
    async def coro(x: int) -> str:
        await asyncio.sleep(0.001)
        return f"c{x}"

    with QueueScheduler(q, concurrency=4, queues=["default"]):
        hs = [h for i in range(100) for h in (plain.send(i), coro.send(i))]
        done, pending = ferroq.wait(hs, timeout=120)
    assert pending == []
    assert [h.result() for h in hs] == [f"{k}{i}" for i in range(100) for k in "pc"]


def test_slow_tasks_after_fast_ones_spread_over_threads(q: Queue) -> None:
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    @q.task
    def fast(x: int) -> int:
        return x

    @q.task
    def slow(x: int) -> int:
        t0 = time.monotonic()
        time.sleep(0.1)
        with lock:
            spans.append((t0, time.monotonic()))
        return x

    with QueueScheduler(q, concurrency=50, queues=["default"]):
        # Fast tasks first: claims grow to the largest batch...
        ferroq.wait(fast.map([(i,) for i in range(3000)]), timeout=120)
        # ...then slow ones: a thread must not keep a batch of them to
        # itself, one after another, while the other threads idle.
        handles = slow.map([(i,) for i in range(200)])
        done, pending = ferroq.wait(handles, timeout=170)
    assert pending == [] and len(spans) == 200
    # Held in batches of 32 by a few threads, at most about 7 could run at
    # once; spread over the threads, tens do.
    assert max_overlap(spans) >= 20


def test_idle_threads_share_one_watch_of_the_store(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferroq.scheduler import task_loop

    claims = 0
    real_claim = task_loop.ClaimingLoop.claim

    def counting_claim(self: task_loop.ClaimingLoop, *a: object, **kw: object) -> object:
        nonlocal claims
        claims += 1
        return real_claim(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(task_loop.ClaimingLoop, "claim", counting_claim)

    @q.task
    def ident(x: int) -> int:
        return x

    with QueueScheduler(q, concurrency=50, queues=["default"]):
        assert ident.send(0).result(timeout=60) == 0
        time.sleep(0.3)  # every thread idle
        before = claims
        # Commits the threads do not care about (a queue nobody serves):
        # each wakes the one watching thread, not all fifty.
        for i in range(30):
            q.send(ident, args=[i], queue="elsewhere")
        time.sleep(0.3)
        woken = claims - before
        # After the idle spell, a burst still reaches the threads.
        handles = ident.map([(i,) for i in range(200)])
        assert [h.result(timeout=60) for h in handles] == list(range(200))
    assert woken < 150, f"{woken} claims for 30 commits: idle threads all woke"
