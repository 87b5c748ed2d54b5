"""Time and flow of a queue (issue 15): pause and resume (held across
processes), priority aging against a flood, and dead-letter routing with
its own retention."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ferroq
from conftest import BACKENDS, python_env, read_log, spawn_worker, store_url, wait_for
from ferroq import Queue, QueueOptions
from ferroq._core import ManualClock

# Backends several processes can share.
SHARED = [b for b in BACKENDS if b != "memory"]


def other_process(url: str, code: str) -> None:
    """Runs ``code`` with ``q = Queue(url)`` in a separate Python process."""
    script = f"import sys\nfrom ferroq import Queue\nq = Queue(sys.argv[1])\n{code}\nq.close()\n"
    subprocess.run([sys.executable, "-c", script, url], env=python_env(), check=True, timeout=60)


@pytest.mark.parametrize("kind", SHARED)
def test_pause_from_another_process_holds_a_running_worker(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    log = tmp_path / "log.txt"
    q = Queue(url)
    payloads = [b"J[[%d,0.02],{}]" % i for i in range(200)]
    q._store.enqueue_many("default", "app.tasks:slow", payloads, max_attempts=4)
    worker = spawn_worker(url, "--concurrency", "4", FERROQ_TEST_LOG=str(log))
    try:
        wait_for(lambda: len(read_log(log)) >= 20, 60, "the worker to start tasks")
        other_process(url, "q.pause('default')")
        assert q.queue_options("default").paused
        assert q.paused_queues() == ["default"]
        # What was handed out before the pause finishes; nothing else starts.
        wait_for(lambda: q.stats()["default"]["running"] == 0, 60, "running tasks to finish")
        started = {tid for tag, tid, _ in read_log(log) if tag == "start"}
        held = q.stats()["default"]
        assert held["queued"] > 0 and held["queued"] + held["done"] == 200
        q._store.enqueue_many("default", "app.tasks:slow", [b"J[[999,0.0],{}]"])  # a send wakes it
        time.sleep(1.0)  # a window in which a worker ignoring the pause would start tasks
        assert {tid for tag, tid, _ in read_log(log) if tag == "start"} == started
        assert q.stats()["default"]["queued"] == held["queued"] + 1
        other_process(url, "q.resume('default')")
        wait_for(lambda: q.stats()["default"]["done"] == 201, 120, "the queue to drain")
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out.decode()
    assert not q.queue_options("default").paused
    q.close()


def test_a_paused_queue_takes_sends_and_keeps_its_options(queue: Queue) -> None:
    queue.set_queue_options("desk", retention=60, aging=30, dead_letter="desk.dead")
    first = queue.put("desk", {"n": 1})
    queue.pause("desk")
    second = queue.put("desk", {"n": 2})
    assert queue.claim("desk") is None
    assert queue.active("desk") is None
    with pytest.raises(ferroq.QueuePausedError, match="paused"):
        queue.start(second.id)
    assert queue.get(second.id).status == "queued"  # type: ignore[union-attr]
    assert queue.queue_options("desk") == QueueOptions(
        "desk", retention=60, aging=30, dead_letter="desk.dead", paused=True
    )
    # Setting the options again does not resume it.
    queue.set_queue_options("desk", retention=120)
    assert queue.queue_options("desk").paused
    queue.resume("desk")
    got = queue.claim("desk")
    assert got is not None and got.id == first.id
    assert queue.paused_queues() == []
    with pytest.raises(ferroq.InvalidArgumentError):
        queue.pause("")


@pytest.mark.parametrize("kind", BACKENDS)
def test_aging_lets_a_low_priority_task_through_a_flood(kind: str, tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000_000)
    q = Queue(store_url(kind, tmp_path), clock=clock)
    step, high = 1.0, 10
    q.set_queue_options("q", aging=step)
    low = q.put("q", "low", priority=0).id
    sent_at = clock.now_ms
    ahead: list[int] = []
    for _ in range(100):
        for i in range(3):  # three new high-priority tasks a step, one done: a flood
            q.put("q", f"high {i}", priority=high)
        got = q.claim("q")
        assert got is not None
        q.complete(got.id, "ok")
        if got.id == low:
            break
        ahead.append(got.record.run_at)
        clock.advance(step)
    else:
        pytest.fail("the low-priority task never got through the flood")
    # The bound (docs/operations.md): only work sent less than
    # (high - low + 1) steps after it goes first.
    bound_ms = (high - 0 + 1) * step * 1000
    assert all(run_at < sent_at + bound_ms for run_at in ahead)
    assert len(ahead) == 3 * high
    assert q.stats()["q"]["queued"] > 0, "the flood was still going"
    q.close()


def test_without_aging_the_same_flood_starves_it(queue: Queue) -> None:
    low = queue.put("q", "low", priority=0).id
    for _ in range(60):
        for i in range(3):
            queue.put("q", f"high {i}", priority=10)
        got = queue.claim("q")
        assert got is not None and got.id != low
        queue.complete(got.id, "ok")


def test_failed_tasks_go_to_the_dead_letter_queue_and_retry_home(queue: Queue) -> None:
    queue.set_queue_options("orders", dead_letter="orders.dead", dead_retention=86_400)
    h = queue.put("orders", {"order": 7}, key="order-7")
    got = queue.claim("orders")
    assert got is not None
    queue.fail(got.id, "card declined")
    dead = queue.get(h.id)
    assert dead is not None and (dead.queue, dead.status) == ("orders.dead", "failed")
    assert dead.error is not None and "card declined" in dead.error
    assert queue.stats()["orders.dead"]["failed"] == 1
    assert queue.stats().get("orders", {}).get("failed", 0) == 0
    assert [t.id for t in queue.list(queue="orders.dead", status="failed")] == [h.id]
    # Its key still belongs to its home queue.
    assert queue.put("orders", {"order": 7}, key="order-7").id == h.id
    found = queue.get_by_key("order-7", queue="orders")
    assert found is not None and found.id == h.id
    # A retry sends it home with fresh attempts.
    queue.retry(h.id)
    back = queue.get(h.id)
    assert back is not None and (back.queue, back.status, back.attempts) == ("orders", "queued", 0)
    opts = queue.queue_options("orders")
    assert (opts.dead_letter, opts.dead_retention) == ("orders.dead", 86_400)
    with pytest.raises(ferroq.InvalidArgumentError):
        queue.set_queue_options("orders", dead_letter="orders")


def test_dead_letters_are_kept_longer_than_finished_tasks(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000_000)
    q = Queue(store_url("sqlite-4", tmp_path), clock=clock)
    q.set_queue_options("q", retention=10, dead_letter="q.dead", dead_retention=3_600)
    done, failed = q.put("q", 1).id, q.put("q", 2).id
    for _ in range(2):
        got = q.claim("q")
        assert got is not None
        if got.id == done:
            q.complete(done, "ok")
        else:
            q.fail(failed, "no")
    clock.advance(11)
    q.purge()
    assert q.get(done) is None
    assert q.get(failed) is not None
    clock.advance(3_600)
    q.purge()
    assert q.get(failed) is None
    q.close()
