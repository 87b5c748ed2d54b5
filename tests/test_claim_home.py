"""Claims with a home (issue 19): each thread of a scheduler claims from its
home shards first on a sharded store, priority stays strict across shards,
and a bad home is refused with a typed error at the call."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import ferroq
from ferroq import InvalidArgumentError, Queue, QueueScheduler


@pytest.mark.parametrize("home", [(2, 2), (5, 1), (0, 0), (-1, 2)])
def test_a_bad_home_is_refused_and_claims_nothing(queue: Queue, home: tuple[int, int]) -> None:
    queue._store.enqueue("default", "x", b"J[[],{}]")
    with pytest.raises(InvalidArgumentError):
        queue._store.claim("default", "w", 1, 30_000, 0.0, None, home)
    assert queue._store.unfinished("default") == 1
    assert queue._store.claim("default", "w", 1, 30_000, 0.0, None, (0, 1))


def test_a_homed_claim_takes_the_most_urgent_task_of_any_shard(queue: Queue) -> None:
    ids, _ = queue._store.enqueue_many("default", "x", [b"J[[],{}]"] * 12)
    urgent, _ = queue._store.enqueue("default", "x", b"J[[],{}]", priority=5)
    for home in [(0, 4), (1, 4), (2, 4), (3, 4)]:
        got = queue._store.claim("default", f"w{home}", 1, 30_000, 0.0, None, home)
        assert [t.id for t in got] == [urgent]
        assert queue._store.release([urgent], f"w{home}") == [None]
    assert len(ids) == 12


def test_a_scheduler_thread_starts_on_its_home_shards(tmp_path: Path) -> None:
    ran: list[int] = []
    lock = threading.Lock()

    @ferroq.task(name="tests.home.record")
    def record() -> None:
        with lock:
            ran.append(ferroq.current_task().id)

    with Queue(f"sqlite://{tmp_path}/store?shards=4") as q:
        # One call: every task gets the same enqueue time, so no shard's
        # head is older than the others' by the slack.
        ids, _ = q._store.enqueue_many("default", "tests.home.record", [b"J[[],{}]"] * 16)
        # Worker 1 of 2 with one thread: claimer (1, 2), home shards 2 and 3.
        # One task per claim: the order tasks ran in is the claim order (a
        # batch is run in the store's order across shards).
        with QueueScheduler(q, concurrency=1, queues=["default"], home=(1, 2), batch_size=1):
            _drain(q)
        assert sorted(ran) == sorted(ids), "every task ran once"
        # The home shards hold 8 of the 16 tasks, claimed first.
        assert [i % 4 in (2, 3) for i in ran] == [True] * 8 + [False] * 8, [i % 4 for i in ran]


def _drain(q: Queue) -> None:
    """Returns once nothing in the default queue is unfinished."""
    pause = threading.Event()
    while q._store.unfinished("default"):
        pause.wait(0.01)


def test_two_schedulers_with_homes_run_every_task_once(tmp_path: Path) -> None:
    counts: dict[int, int] = {}
    lock = threading.Lock()

    @ferroq.task(name="tests.home.count")
    def count(i: int) -> int:
        with lock:
            counts[i] = counts.get(i, 0) + 1
        return i

    n = 600
    with Queue(f"sqlite://{tmp_path}/store?shards=2") as q:
        q._store.enqueue_many(
            "default", "tests.home.count", [b"J[[%d],{}]" % i for i in range(n)],
            priority=[i % 3 for i in range(n)],
        )
        with QueueScheduler(q, concurrency=2, queues=["default"], home=(0, 2)), \
                QueueScheduler(q, concurrency=2, queues=["default"], home=(1, 2)):
            _drain(q)
        assert counts == {i: 1 for i in range(n)}
        done = q._store.list_tasks(status="done", limit=n + 1)
        assert len(done) == n and all(t.result == b"J%d" % int(t.payload[3:-5]) for t in done)
