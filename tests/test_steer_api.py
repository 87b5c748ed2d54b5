"""Steering from outside through the public API (Queue.put / claim /
active / start and the by-id verbs), on every backend."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import ferroq
from ferroq import Queue


def test_records_and_duplicate_keys(queue: Queue) -> None:
    h = queue.put("inbox", {"text": "hi"}, key="k1", metadata={"from": "web"})
    assert queue.put("inbox", {"text": "again"}, key="k1").id == h.id
    with pytest.raises(ferroq.DuplicateKeyError) as info:
        queue.put("inbox", {"text": "again"}, key="k1", on_duplicate="error")
    assert info.value.task_id == h.id
    assert queue.stats()["inbox"]["queued"] == 1
    t = queue.claim("inbox", worker="w")
    assert t is not None and t.payload == {"text": "hi"} and t.metadata == {"from": "web"}
    t.complete("answered")
    assert h.result(timeout=1) == "answered"


def test_timestamps_are_priorities(queue: Queue) -> None:
    now_ms = 1_764_600_000_000
    old = queue.put("q", "old", priority=now_ms - 1)
    new = queue.put("q", "new", priority=now_ms)
    low = queue.put("q", "low", priority=-(2**62))
    order = [queue.claim("q", worker="w") for _ in range(3)]
    assert [t.id for t in order if t is not None] == [new.id, old.id, low.id]


def test_only_the_holder_moves_a_task_unless_forced(queue: Queue) -> None:
    h = queue.put("q", 1)
    t = queue.claim("q", worker="alice")
    assert t is not None
    with pytest.raises(ferroq.LeaseLostError):
        queue.complete(h.id, "bob's", worker="bob")
    queue.progress(h.id, 0.5, worker="alice")
    assert queue.heartbeat(h.id, lease=60, worker="alice")
    queue.complete(h.id, "operator", worker="ops", force=True)
    assert h.result(timeout=1) == "operator"
    with pytest.raises(ferroq.AlreadyFinishedError):
        queue.complete(h.id, "late", worker="alice")


def test_requeue_priority_run_at_and_metadata(queue: Queue) -> None:
    h = queue.put("q", 1)
    queue.set_priority(h.id, 7)
    queue.set_run_at(h.id, datetime.now(timezone.utc) + timedelta(hours=1))
    assert queue.claim("q", worker="w") is None  # not due
    queue.set_run_at(h.id, 0.0)
    queue.set_metadata(h.id, {"tag": "x"})
    t = queue.claim("q", worker="w")
    assert t is not None and t.record.priority == 7 and t.metadata == {"tag": "x"}
    with pytest.raises(ferroq.InvalidTransitionError):
        queue.set_priority(h.id, 1)  # running
    t.fail("nope")
    assert h.status() == "failed"
    queue.requeue(h.id)
    assert h.status() == "queued"


def test_a_cancel_sticks_through_release_and_late_completion(queue: Queue) -> None:
    a, b = queue.put("q", "a"), queue.put("q", "b")
    ta, tb = queue.claim("q", worker="w"), queue.claim("q", worker="w")
    assert ta is not None and tb is not None
    queue.cancel(a.id)
    queue.cancel(b.id)
    ta.release()
    tb.complete("late")
    assert a.status() == "cancelled" and b.status() == "cancelled"
    assert queue.claim("q", worker="w") is None  # never handed out again


def test_serial_queue_hands_out_one_at_a_time_to_16_threads(queue: Queue) -> None:
    queue.set_queue_options("one", serial=True)
    ids = [queue.put("one", i).id for i in range(3)]
    got: list[int] = []
    lock = threading.Lock()

    def ask() -> None:
        t = queue.active("one", worker="web")
        with lock:
            got.append(-1 if t is None else t.id)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert set(got) == {ids[0]}
    assert queue.stats()["one"]["running"] == 1
    assert queue.claim("one", worker="other") is None  # not while one is active
    switched = queue.start(ids[2], worker="web")
    assert queue.stats()["one"]["running"] == 1
    switched.complete("done")
    nxt = queue.active("one", worker="web")
    assert nxt is not None and nxt.id == ids[0]  # the switched-out one, back in front


def test_queue_options_round_trip(queue: Queue) -> None:
    queue.set_queue_options("p", serial=True, answer_timeout=30, on_timeout="expire", retention=5)
    o = queue.queue_options("p")
    assert (o.serial, o.answer_timeout, o.on_timeout, o.retention) == (True, 30.0, "expire", 5.0)
    assert [x.queue for x in queue.all_queue_options()] == ["p"]
    with pytest.raises(ferroq.InvalidArgumentError):
        queue.set_queue_options("p", answer_timeout=float("nan"))
    h = queue.put("p", 1)
    t = queue.active("p", worker="w")
    assert t is not None and t.id == h.id
    remaining = t.remaining()
    assert remaining is not None and 25 < remaining <= 30


def test_status_hooks_see_moves_made_elsewhere(queue: Queue) -> None:
    """A scheduler's on_status_change hooks get moves made outside it (by
    id, from another worker name) through the event feed."""
    from ferroq import QueueScheduler

    seen: list[tuple[int, str, str]] = []
    # It serves another queue: records are finished by people, not workers.
    s = QueueScheduler(queue, queues=["work"], hooks=[lambda *m: seen.append(m)])
    with s:
        h = queue.put("inbox", {"q": 1})
        other = queue.claim("inbox", worker="a-person")  # not this scheduler
        assert other is not None
        other.complete("yes")
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (h.id, "queued", "running") in seen
    assert (h.id, "running", "done") in seen


def test_cancel_of_the_active_task_hands_out_the_next(queue: Queue) -> None:
    queue.set_queue_options("p", serial=True)
    a, b, c = (queue.put("p", i) for i in range(3))
    t = queue.active("p", worker="web")
    assert t is not None and t.id == a.id
    assert t.cancel() == "cancelled"  # as its holder: ends now
    nxt = queue.active("p", worker="web")
    assert nxt is not None and nxt.id == b.id
    # An operator, not the holder: a plain cancel only asks; force ends it.
    assert queue.cancel(b.id) == "running"
    assert queue.cancel(b.id, force=True) == "cancelled"
    last = queue.active("p", worker="web")
    assert last is not None and last.id == c.id


def test_hooks_see_each_move_once_and_as_the_store_ended_it(queue: Queue) -> None:
    from ferroq import QueueScheduler

    moves: list[tuple[int, str, str]] = []
    started = threading.Event()
    go_on = threading.Event()

    @queue.task(name="hooked.slow")
    def slow() -> str:
        started.set()
        go_on.wait(10)  # never looks at is_cancelled()
        return "finished anyway"

    @queue.task(name="hooked.fast")
    def fast() -> int:
        return 1

    with QueueScheduler(queue, concurrency=2, hooks=[lambda *m: moves.append(m)]):
        f = fast.send()
        assert f.result(timeout=10) == 1
        h = slow.send()
        assert started.wait(10)
        queue.cancel(h.id)  # asked after the task's last check
        go_on.set()
        deadline = time.monotonic() + 10
        while h.status() == "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # let the feed catch up: nothing more may come
    assert h.status() == "cancelled"
    assert moves.count((f.id, "queued", "running")) == 1
    assert moves.count((f.id, "running", "done")) == 1
    assert (h.id, "running", "done") not in moves
    assert moves.count((h.id, "running", "cancelled")) == 1


def test_hooks_see_an_operator_finish_a_task_the_scheduler_holds(queue: Queue) -> None:
    from ferroq import QueueScheduler

    moves: list[tuple[int, str, str]] = []
    started = threading.Event()
    go_on = threading.Event()

    @queue.task(name="hooked.held")
    def held() -> str:
        started.set()
        go_on.wait(10)
        return "late"

    with QueueScheduler(queue, concurrency=1, hooks=[lambda *m: moves.append(m)]):
        h = held.send()
        assert started.wait(10)
        queue.complete(h.id, "by operator", worker="ops", force=True)
        go_on.set()
        deadline = time.monotonic() + 10
        while (h.id, "running", "done") not in moves and time.monotonic() < deadline:
            time.sleep(0.01)
    assert h.result(timeout=1) == "by operator"
    assert moves.count((h.id, "running", "done")) == 1
