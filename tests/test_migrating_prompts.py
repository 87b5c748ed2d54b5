"""The in-memory prompt queue answered in a web page (seed 003), ported:
one test per row of docs/migrating.md's seed-003 table. (The page itself
is the dashboard's inbox: tests/test_dashboard_browser.py.)"""

from __future__ import annotations

import pytest

import ferroq
from ferroq import Queue


@pytest.fixture
def prompts(queue: Queue) -> Queue:
    """TaskQueue(max_tasks=3) with a 240 s countdown, as the seed sets it up."""
    queue.set_queue_options("prompts", serial=True, answer_timeout=240, retention=10)
    queue.set_capacity("prompts", 3)
    return queue


def test_add_task_and_the_first_becomes_active(prompts: Queue) -> None:
    first = prompts.put("prompts", {"prompt": "Deploy?", "options": ["yes", "no"]}, key="t1")
    prompts.put("prompts", {"prompt": "Rollback?", "options": []}, key="t2")
    # add_task refuses a duplicate id: the same key returns the existing task.
    assert prompts.put("prompts", {"prompt": "again"}, key="t1").id == first.id
    with pytest.raises(ferroq.DuplicateKeyError):
        prompts.put("prompts", {"prompt": "again"}, key="t1", on_duplicate="error")
    prompts.put("prompts", {"prompt": "third"}, key="t3")
    with pytest.raises(ferroq.QueueFullError):  # max_tasks reached
        prompts.put("prompts", {"prompt": "fourth"}, key="t4")
    active = prompts.active("prompts")  # get_active_task()
    assert active is not None and active.id == first.id
    assert active.payload == {"prompt": "Deploy?", "options": ["yes", "no"]}
    remaining = active.remaining()  # get_remaining_time()
    assert remaining is not None and 230 < remaining <= 240
    # get_task(task_id) / get_all_tasks() / get_task_count()
    assert prompts.get_by_key("t2", "prompts").payload == {"prompt": "Rollback?", "options": []}  # type: ignore[union-attr]
    assert [t.key for t in prompts.list(queue="prompts")] == ["t1", "t2", "t3"]
    counts = prompts.stats()["prompts"]
    assert (counts["running"], counts["queued"]) == (1, 2)


def test_set_active_then_complete_moves_to_the_next(prompts: Queue) -> None:
    a = prompts.put("prompts", {"prompt": "a"}, key="a")
    b = prompts.put("prompts", {"prompt": "b"}, key="b")
    assert prompts.active("prompts").id == a.id  # type: ignore[union-attr]
    switched = prompts.start(b.id)  # set_active_task(task_id): a goes back to pending
    assert switched.id == b.id and prompts.get(a.id).status == "queued"  # type: ignore[union-attr]
    prompts.complete(b.id, {"choice": "yes"})  # complete_task(task_id, result)
    assert prompts.get(b.id).result == {"choice": "yes"}  # type: ignore[union-attr]
    assert prompts.active("prompts").id == a.id  # type: ignore[union-attr]


def test_remove_and_clear_completed(prompts: Queue) -> None:
    a = prompts.put("prompts", {"prompt": "a"}, key="a")
    b = prompts.put("prompts", {"prompt": "b"}, key="b")
    assert prompts.cancel(b.id) == "cancelled"  # remove_task(task_id) of a pending task
    prompts.start(a.id)
    prompts.complete(a.id, "done")
    prompts.delete(a.id)  # clear_completed_tasks(), one task
    assert prompts.get(a.id) is None
    # cleanup_completed_tasks(age_seconds): the queue's retention, applied by purge.
    assert prompts.queue_options("prompts").retention == 10


def test_status_change_callback(prompts: Queue) -> None:
    # register_status_change_callback(cb(task_id, old, new)): the event feed.
    t = prompts.put("prompts", {"prompt": "a"})
    prompts.start(t.id)
    prompts.complete(t.id, "ok")
    events, _ = prompts.events(queue="prompts")
    moves = [(e.task_id, e.old, e.new) for e in events]
    assert moves == [(t.id, None, "queued"), (t.id, "queued", "running"), (t.id, "running", "done")]


def test_update_the_countdown_for_all(prompts: Queue) -> None:
    # update_auto_resubmit_timeout_for_all(n): the queue's answer timeout.
    prompts.set_queue_options("prompts", serial=True, answer_timeout=120, retention=10)
    prompts.put("prompts", {"prompt": "a"})
    active = prompts.active("prompts")
    assert active is not None
    remaining = active.remaining()
    assert remaining is not None and remaining <= 120
