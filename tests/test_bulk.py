"""Bulk send and wait: ``fn.map`` / ``queue.send_many`` (keys, options,
bad input storing nothing), ``ferroq.wait`` / ``ferroq.as_completed``
(return conditions, timeouts, failures), ``await handle`` and
``fn.asend`` inside asyncio, and 20,000 tasks sent and waited for with a
scheduler in the same process."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ferroq
from ferroq import (
    InvalidArgumentError,
    Queue,
    QueueScheduler,
    SerializationError,
    TaskTimeoutError,
    UnknownTaskError,
)


def stored(q: Queue) -> int:
    return sum(sum(by_status.values()) for by_status in q.stats().values())


def test_map_sends_tuples_and_dicts_in_order(queue: Queue) -> None:
    @queue.task
    def add(a: int, b: int = 10) -> int:
        return a + b

    handles = add.map([(1, 2), {"a": 5}, (7,), {"a": 1, "b": 1}])
    assert len({h.id for h in handles}) == 4
    with QueueScheduler(queue, queues=["default"]):
        done, pending = ferroq.wait(handles, timeout=60)
    assert pending == []
    assert done == handles
    assert [h.result() for h in done] == [3, 15, 17, 2]
    assert add.map([]) == []


def test_send_many_by_function_call_and_name(queue: Queue) -> None:
    @queue.task(name="bulk-echo")
    def echo(x: Any) -> Any:
        return x

    a = queue.send_many(echo, [(1,), (2,)])
    b = queue.send_many(echo.options(priority=7), [({"k": [1, 2]},)])
    c = queue.send_many("bulk-echo", [("by name",)])
    assert queue.get(b[0].id).priority == 7  # type: ignore[union-attr]
    with pytest.raises(UnknownTaskError):
        queue.send_many("no-such-task", [(1,)])
    with QueueScheduler(queue, queues=["default"]):
        assert [h.result(timeout=60) for h in a + b + c] == [1, 2, {"k": [1, 2]}, "by name"]


def test_map_keys_are_idempotent(queue: Queue) -> None:
    @queue.task
    def square(x: int) -> int:
        return x * x

    first = square.map([(i,) for i in range(5)], key=lambda item: f"sq-{item[0]}")
    # Two known keys, one new one, and one item without a key.
    again = square.map([(3,), (4,), (5,), (6,)], keys=["sq-3", "sq-4", "sq-5", None])
    assert again[0].id == first[3].id and again[1].id == first[4].id
    assert again[2].id not in {h.id for h in first}
    assert stored(queue) == 5 + 2
    assert queue.get_by_key("sq-2").id == first[2].id  # type: ignore[union-attr]
    # A key function may leave some items unkeyed.
    mixed = square.map([(8,), (9,)], key=lambda item: None if item[0] == 8 else "sq-9")
    assert square.map([(9,)], key=lambda item: "sq-9")[0].id == mixed[1].id
    with QueueScheduler(queue, queues=["default"]):
        assert [h.result(timeout=60) for h in again] == [9, 16, 25, 36]


def test_map_applies_options_to_every_task(queue: Queue) -> None:
    @queue.task(retries=2, meta={"team": "a"})
    def job(x: int) -> int:
        return x

    @queue.task(retries=1)
    def plain(x: int) -> int:
        return x

    before = queue._store.now_ms()
    hs = plain.options(priority=4, batch="b1", queue="bulkq", delay=3600, expires=7200).map(
        [(i,) for i in range(3)]
    )
    for h in hs:
        rec = queue.get(h.id)
        assert rec is not None
        assert (rec.priority, rec.batch, rec.queue, rec.status) == (4, "b1", "bulkq", "queued")
        assert rec.raw.max_attempts == 2
        assert rec.raw.run_at >= before + 3_600_000
        assert rec.raw.expires_at is not None and rec.raw.expires_at >= before + 7_200_000
    # Metadata (the task's meta and the send's own) rides on each task too.
    meta = job.options(metadata={"run": 1}).map([(1,), (2,)], keys=["m1", "m2"])
    for h in meta:
        rec = queue.get(h.id)
        assert rec is not None and rec.metadata == {"team": "a", "run": 1}
        assert rec.raw.max_attempts == 3
    assert job.options(metadata={"run": 2}).map([(1,)], keys=["m1"])[0].id == meta[0].id


def test_bad_bulk_sends_raise_and_store_nothing(queue: Queue) -> None:
    @queue.task
    def f(x: Any) -> Any:
        return x

    f.map([(1,)])
    n = stored(queue)
    cases: list[tuple[type[Exception], Any]] = [
        (InvalidArgumentError, lambda: f.map([(1,), [2]])),  # a list is not a call
        (InvalidArgumentError, lambda: f.map([(1,), 5])),
        (InvalidArgumentError, lambda: f.map([(1,), {1: "x"}])),  # keys must be names
        (InvalidArgumentError, lambda: f.map("abc")),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: f.map({"x": 1})),  # type: ignore[arg-type]
        (SerializationError, lambda: f.map([(1,), (object(),)])),
        (InvalidArgumentError, lambda: f.map([(1,), (2,)], keys=["a"])),
        (InvalidArgumentError, lambda: f.map([(1,)], keys=[""])),
        (InvalidArgumentError, lambda: f.map([(1,)], key=lambda i: 5)),  # type: ignore[arg-type,return-value]
        (InvalidArgumentError, lambda: f.map([(1,)], key=str, keys=["a"])),
        (InvalidArgumentError, lambda: f.options(key="k").map([(1,)])),
        (InvalidArgumentError, lambda: f.options(wait=1.0).map([(1,)])),
        (InvalidArgumentError, lambda: f.options(by_reference=True).map([(1,)])),
        (InvalidArgumentError, lambda: f.options(delay=-1).map([(1,)])),
        (InvalidArgumentError, lambda: f.options(metadata={"x": float("nan")}).map([(1,)])),
        (InvalidArgumentError, lambda: f.map(None)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: f.map(5)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: queue.send_many(f, None)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: f.map([(1,)], keys=5)),  # type: ignore[arg-type]
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
    assert stored(queue) == n


def test_waits_refuse_what_is_not_a_list_of_handles(queue: Queue) -> None:
    @queue.task
    def f(x: Any) -> Any:
        return x

    (h,) = f.map([(1,)])
    for bad in (None, 5):
        with pytest.raises(InvalidArgumentError, match="list of handles"):
            ferroq.wait(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="list of handles"):
            ferroq.as_completed(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="timeout"):
        h.result("soon")  # type: ignore[arg-type]
    assert h.status() == "queued"


def test_wait_all_first_and_failures(queue: Queue) -> None:
    gate = threading.Event()

    @queue.task
    def quick(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative {x}")
        return x

    @queue.task
    def held(x: int) -> int:
        gate.wait(60)
        return x

    with QueueScheduler(queue, queues=["default"], concurrency=4):
        fast = quick.map([(1,), (-2,), (3,)])
        slow = held.map([(9,)])
        # FIRST_COMPLETED returns once one is done; the held one is pending.
        done, pending = ferroq.wait(slow + fast, return_when=ferroq.FIRST_COMPLETED, timeout=60)
        assert done and slow[0] in pending and slow[0] not in done
        # A timeout returns what is unfinished; 0 looks once.
        done, pending = ferroq.wait(slow + fast, timeout=0.3)
        assert pending == slow and done == fast
        assert ferroq.wait(slow, timeout=0) == ([], slow)
        # FIRST_EXCEPTION returns on the failed one without waiting for the held one.
        done, pending = ferroq.wait(slow + fast, return_when=ferroq.FIRST_EXCEPTION, timeout=60)
        assert pending == slow
        assert fast[0].result() == 1 and fast[2].result() == 3
        with pytest.raises(ValueError, match="negative -2"):
            fast[1].result()
        gate.set()
        result = ferroq.wait(slow + fast)
        assert result.done == slow + fast and result.pending == []
        assert slow[0].result() == 9
    with pytest.raises(InvalidArgumentError):
        ferroq.wait(fast, return_when="SOMETIMES")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        ferroq.wait(fast, timeout=-1)
    with pytest.raises(InvalidArgumentError):
        ferroq.wait(fast[0])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        ferroq.wait([1, 2])  # type: ignore[list-item]


def test_as_completed_yields_in_finishing_order(queue: Queue) -> None:
    gates = [threading.Event() for _ in range(3)]

    @queue.task
    def step(i: int) -> int:
        if not gates[i].wait(60):
            raise RuntimeError("gate never opened")
        if i == 1:
            raise KeyError("one")
        return i

    with QueueScheduler(queue, queues=["default"], concurrency=4):
        handles = step.map([(0,), (1,), (2,)])
        seen = []
        it = ferroq.as_completed(handles, timeout=60)
        for want in (2, 0, 1):
            gates[want].set()
            h = next(it)
            seen.append(h)
            assert h is handles[want]
        with pytest.raises(StopIteration):
            next(it)
        assert seen[0].result() == 2
        with pytest.raises(KeyError):
            seen[2].result()


def test_as_completed_timeout(queue: Queue) -> None:
    @queue.task
    def never(x: int) -> int:
        return x

    @queue.task
    def now(x: int) -> int:
        return x

    done = now.map([(1,)])
    with QueueScheduler(queue, queues=["default"]):
        done[0].result(timeout=60)
    # No scheduler serves the queue any more: the second stays queued.
    waiting = never.map([(2,)])
    got = []
    with pytest.raises(TaskTimeoutError):
        for h in ferroq.as_completed(done + waiting, timeout=0.3):
            got.append(h)
    assert got == done


def test_await_handle_does_not_block_the_loop(queue: Queue) -> None:
    gate = threading.Event()

    @queue.task
    def slow(x: int) -> int:
        gate.wait(60)
        return x * 10

    @queue.task
    async def coro(x: int) -> str:
        await asyncio.sleep(0)
        return f"c{x}"

    async def main() -> None:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        h = await slow.asend(4)
        # Cancelling an await ends the wait, not the task.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(h, 0.2)
        with pytest.raises(TaskTimeoutError):
            await h.aresult(timeout=0.1)
        before = ticks
        waiter = asyncio.ensure_future(h.aresult())
        await asyncio.sleep(0.2)
        assert not waiter.done()
        assert ticks > before  # the loop ran meanwhile
        gate.set()
        assert await waiter == 40
        assert await h == 40
        # Many awaits at once share one watch.
        hs = coro.map([(i,) for i in range(50)])
        assert await asyncio.gather(*hs) == [f"c{i}" for i in range(50)]
        stop.set()
        await tick_task

    with QueueScheduler(queue, queues=["default"], concurrency=4):
        asyncio.run(main())


def test_await_raises_what_result_raises(queue: Queue) -> None:
    @queue.task
    def parse(text: str) -> int:
        return int(text)

    @queue.task
    def double(x: int) -> int:
        return 2 * x

    async def main() -> None:
        bad = await parse.asend("x")
        with pytest.raises(ValueError, match="invalid literal"):
            await bad
        # A flow's last step raises the error of the step that stopped it.
        flow = ferroq.chain(parse.s("nope"), double.s()).send()
        with pytest.raises(ValueError, match="invalid literal"):
            await flow
        good = ferroq.chain(parse.s("21"), double.s()).send()
        assert await good == 42

    with QueueScheduler(queue, queues=["default"]):
        asyncio.run(main())


def test_await_a_deleted_task_raises(queue: Queue) -> None:
    @queue.task
    def gone(x: int) -> int:
        return x

    h = gone.send(1)
    queue.cancel(h.id)
    queue.delete(h.id)

    async def main() -> None:
        with pytest.raises(ferroq.TaskNotFoundError):
            await h

    asyncio.run(main())


def test_map_eager_runs_each_task() -> None:
    q = Queue("memory://", eager=True)

    @q.task
    def inc(x: int) -> int:
        return x + 1

    hs = inc.map([(i,) for i in range(5)])
    assert [h.status() for h in hs] == ["done"] * 5
    assert [h.result() for h in hs] == [1, 2, 3, 4, 5]
    q.close()


def test_map_callback_runs_for_each(queue: Queue) -> None:
    got: list[int] = []
    lock = threading.Lock()

    @queue.task
    def ident(x: int) -> int:
        return x

    def record(h: ferroq.TaskHandle[int]) -> None:
        with lock:
            got.append(h.result())

    with QueueScheduler(queue, queues=["default"]):
        hs = ident.options(callback=record).map([(i,) for i in range(10)])
        ferroq.wait(hs, timeout=60)
        deadline = time.monotonic() + 60
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(got) == list(range(10))


@pytest.mark.parametrize("shards", [1, 4])
def test_twenty_thousand_sent_with_map_and_waited_for(tmp_path: Path, shards: int) -> None:
    q = Queue(f"sqlite://{tmp_path}/bulk?shards={shards}")

    @q.task
    def triple(x: int) -> int:
        return 3 * x

    n = 20_000
    handles = triple.map([(i,) for i in range(n)])
    assert len({h.id for h in handles}) == n
    with QueueScheduler(q, queues=["default"], concurrency=4):
        done, pending = ferroq.wait(handles, timeout=170)
    assert pending == [] and len(done) == n
    assert [h.result() for h in handles] == [3 * i for i in range(n)]
    assert q.stats()["default"]["done"] == n
    q.close()
