"""The in-process message queue's and queue-sqlite's users (issue 17):
sending by name and send options, a record of delivered callbacks,
arguments by reference, callback threads, ``@task(meta=...)`` and listen
data. Each test backs a row of the migration tables in docs/migrating.md."""

from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
import threading
import time
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import ferroq
from app import tasks as app_tasks
from conftest import python_env, spawn_worker, store_url, wait_for
from ferroq import Queue, QueueScheduler, current_task, task


@task
def pair(a: int, b: int = 0) -> list[int]:
    """Returns its arguments."""
    return [a, b]


@task
def ranked(text: str, priority: int = 0) -> str:
    """A task with a parameter named like a send option."""
    return f"{text}:{priority}"


@task(meta={"author": "dev", "tags": ["image"]})
def tagged(x: int) -> Any:
    """Returns the metadata it sees while it runs."""
    return current_task().metadata


@task
def same_object(obj: Any, other: Any = None) -> bool:
    """True when it got the very objects registered in ``HELD``."""
    return obj is HELD.get("obj") and other is HELD.get("other")


@task
def msg_short_unique(x: int) -> int:
    """Sent by its short name in a test."""
    return x * 10


@task(name="msg_a:twin")
def twin_a() -> str:
    """One of two tasks sharing a short name."""
    return "a"


@task(name="msg_b:twin")
def twin_b() -> str:
    """The other."""
    return "b"


HELD: dict[str, Any] = {}


def run(q: Queue, *handles: ferroq.TaskHandle[Any], **options: Any) -> list[Any]:
    """Runs the handles' tasks on a scheduler and returns their results."""
    with QueueScheduler(q, queues=["default"], **options):
        return [h.result(timeout=30) for h in handles]


# -- sending by name, and send options ----------------------------------------


def test_a_producer_without_the_task_code_sends_by_name(tmp_path: Path) -> None:
    url = store_url("sqlite-1", tmp_path)
    # The producer imports ferroq only: app.tasks is not importable there.
    producer = (
        "import sys; from ferroq import Queue\n"
        "q = Queue(sys.argv[1])\n"
        "h = q.send('app.tasks:add', args=[2, 3], priority=5, key='sum-1')\n"
        "assert 'app.tasks' not in sys.modules\n"
        "print(h.id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", producer, url], capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    task_id = int(out.stdout.split()[-1])
    q = Queue(url)
    try:
        record = q.get(task_id)
        assert record is not None
        assert (record.name, record.priority, record.key, record.status) == (
            "app.tasks:add", 5, "sum-1", "queued",
        )
        assert (record.args, record.kwargs) == ((2, 3), {})
        worker = spawn_worker(url)
        try:
            assert q.handle(task_id).result(timeout=60) == 5
        finally:
            worker.terminate()
            worker.communicate(timeout=30)
    finally:
        q.close()


def test_send_options_are_never_the_tasks_arguments(queue: Queue) -> None:
    with pytest.raises(ferroq.InvalidArgumentError, match="ambiguous send: 'priority'"):
        queue.send(pair, 1, priority=5)
    with pytest.raises(ferroq.InvalidArgumentError, match="ambiguous send: 'key', 'queue'"):
        queue.send("test_messaging:pair", 1, queue="x", key="k")
    with pytest.raises(ferroq.InvalidArgumentError, match=r"pair.options\(priority=...\)"):
        pair.send(1, priority=5)  # type: ignore[call-arg]
    with pytest.raises(ferroq.InvalidArgumentError, match="not both"):
        queue.send(pair, 1, args=[2])
    with pytest.raises(ferroq.InvalidArgumentError, match="unknown send option"):
        queue.send(pair, args=[1], b=2)
    with pytest.raises(ferroq.InvalidArgumentError, match="priority must be an int"):
        queue.send(pair, args=[1], priority="high")
    with pytest.raises(ferroq.InvalidArgumentError, match="kwargs must be a dict"):
        queue.send(pair, args=[1], kwargs=[("b", 2)])
    with pytest.raises(ferroq.UnknownTaskError, match="args=.*kwargs="):
        queue.send("nowhere:known", 1)
    assert queue.stats() == {}  # nothing stored by any of them

    explicit = queue.send(pair, args=[1], kwargs={"b": 2}, priority=7, key="k1")
    own = queue.send(ranked, args=["t"], kwargs={"priority": 3}, priority=9)

    @queue.task
    def ranked_here(text: str, priority: int = 0) -> str:
        return f"{text}:{priority}"

    # fn.send is typed by the function: a parameter it has is its own.
    direct = ranked_here.send("u", priority=4)
    later = queue.send(pair, args=[5], delay=3600, batch="b1")
    a, b, c = (queue.get(h.id) for h in (explicit, own, later))
    assert a is not None and b is not None and c is not None
    assert (a.priority, a.key, a.kwargs) == (7, "k1", {"b": 2})
    assert (b.priority, b.kwargs) == (9, {"priority": 3})
    assert (c.batch, c.status) == ("b1", "queued") and c.run_at > datetime.now(c.run_at.tzinfo)
    assert run(queue, explicit, own, direct) == [[1, 2], "t:3", "u:4"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("priority", 1.5, "priority must be an int"),
        ("priority", float("nan"), "priority must be an int"),
        ("queue", 5, "queue must be a non-empty str"),
        ("queue", "", "queue must be a non-empty str"),
        ("key", 5, "key must be a non-empty str"),
        ("batch", 5, "batch must be a non-empty str"),
        ("run_at", "2030-01-01", "run_at must be a datetime"),
        ("metadata", "x", "metadata must be a dict"),
        ("metadata", [1], "metadata must be a dict"),
        ("callback", 5, "callback must be callable"),
        ("after", 5, "after must be a list of task handles"),
        ("after", "12", "after must be a list of task handles"),
    ],
)
def test_fn_options_refuse_a_bad_value_where_it_is_given(
    option: str, value: Any, message: str
) -> None:
    # fn.options(...) checks as queue.send's explicit form does: the error is
    # typed and raised by options() itself, never a TypeError or
    # AttributeError from deep in a later send, map or flow.
    with pytest.raises(ferroq.InvalidArgumentError, match=message):
        pair.options(**{option: value})
    with pytest.raises(ferroq.InvalidArgumentError, match=message):
        pair.options(retries=1).options(**{option: value})
    with pytest.raises(ferroq.InvalidArgumentError, match="unknown send option"):
        pair.options(retries=1).options(prio=1)


def test_short_names_resolve_to_one_registered_task(queue: Queue) -> None:
    h = queue.send("msg_short_unique", 4)
    record = queue.get(h.id)
    assert record is not None and record.name == "test_messaging:msg_short_unique"
    with pytest.raises(ferroq.InvalidArgumentError, match="msg_a:twin, msg_b:twin"):
        queue.send("twin")
    assert run(queue, h) == [40]


def test_a_tasks_lifecycle_in_ferroq_statuses(queue: Queue) -> None:
    @queue.task
    def fine() -> int:
        return 1

    @queue.task
    def broken() -> None:
        raise ValueError("bad row")

    moves: list[tuple[int, str, str]] = []
    scheduler = QueueScheduler(queue, concurrency=2, hooks=[lambda *m: moves.append(m)])
    ok, bad = fine.send(), broken.send()
    assert ok.status() == bad.status() == "queued"  # NOT_STARTED
    scheduler.start()
    try:
        assert ok.result(timeout=30) == 1
        with pytest.raises(ValueError, match="bad row"):
            bad.result(timeout=30)
    finally:
        scheduler.stop()
    assert [m[1:] for m in moves if m[0] == ok.id] == [("queued", "running"), ("running", "done")]
    assert [m[1:] for m in moves if m[0] == bad.id] == [
        ("queued", "running"), ("running", "failed"),
    ]


# -- a record that a callback was delivered --------------------------------------


def test_the_record_says_when_its_callback_was_delivered(queue: Queue) -> None:
    seen = threading.Event()
    with_cb = queue.send(pair, args=[1], metadata={"mine": 1}, callback=lambda h: seen.set())
    without = queue.send(pair, 2)
    assert run(queue, with_cb, without) == [[1, 0], [2, 0]]
    assert seen.wait(10)

    def marked() -> bool:
        r = queue.get(with_cb.id)
        return r is not None and "callback_delivered_at" in (r.metadata or {})

    wait_for(marked, 10, "the delivery mark")
    record = queue.get(with_cb.id)
    assert record is not None and record.finished_at is not None
    at = datetime.fromisoformat(record.metadata["callback_delivered_at"])
    assert at >= record.finished_at
    assert record.metadata["mine"] == 1  # the user's metadata kept beside it
    other = queue.get(without.id)
    assert other is not None and other.metadata is None
    events, _ = queue.events()
    delivered = [e.task_id for e in events if e.kind == "delivered"]
    assert delivered == [with_cb.id]


# -- arguments by reference ---------------------------------------------------


def test_arguments_by_reference_reach_a_worker_in_this_process(queue: Queue) -> None:
    lock = threading.Lock()
    left, right = socket.socketpair()
    try:
        with pytest.raises(ferroq.SerializationError):
            queue.send(same_object, lock)  # not serialisable, not opted in
        assert queue.stats() == {}
        HELD.update(obj=lock, other=left)
        h = queue.send(same_object, args=[lock], kwargs={"other": left}, by_reference=True)
        record = queue.get(h.id)
        assert record is not None and "__ferroq_local_ref__" in record.kwargs
        h2 = queue.send(same_object.options(by_reference=True), lock, left)
        assert run(queue, h, h2) == [True, True]
    finally:
        HELD.clear()
        left.close()
        right.close()


def test_objects_by_reference_are_let_go_when_their_task_ends(queue: Queue) -> None:
    class Model:
        pass

    model = Model()
    ref = weakref.ref(model)
    h = queue.send(same_object, args=[model], by_reference=True)
    del model
    gc.collect()
    assert ref() is not None  # held for the task meanwhile
    assert run(queue, h) == [False]

    def gone() -> bool:
        gc.collect()
        return ref() is None

    wait_for(gone, 10, "the objects to be let go")


def test_arguments_by_reference_do_not_survive_their_process(tmp_path: Path) -> None:
    url = store_url("sqlite-1", tmp_path)
    producer = (
        "import sys, threading; from ferroq import Queue; from app.tasks import slow\n"
        "q = Queue(sys.argv[1])\n"
        "h = q.send(slow, args=[threading.Lock()], by_reference=True)\n"
        "print(h.id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", producer, url], capture_output=True, text=True, timeout=60,
        env=python_env(),
    )
    assert out.returncode == 0, out.stderr
    task_id = int(out.stdout.split()[-1])
    q = Queue(url)
    try:
        # This process has the task (app.tasks.slow), not the arguments.
        with QueueScheduler(q, queues=["default"]):
            with pytest.raises(ferroq.SerializationError, match="by_reference=True"):
                q.handle(task_id, app_tasks.slow).result(timeout=30)
        record = q.get(task_id)
        assert record is not None
        # slow has retries=3: the lost arguments are not retried.
        assert (record.status, record.attempts, record.max_attempts) == ("failed", 1, 4)
        assert record.error_type == "ferroq._errors.SerializationError"
    finally:
        q.close()


# -- callbacks on several threads -------------------------------------------------


def _callback_spans(q: Queue, n: int) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def slow_callback(h: Any) -> None:
        start = time.monotonic()
        time.sleep(0.4)
        with lock:
            spans.append((start, time.monotonic()))

    handles = [q.send(pair, args=[i], callback=slow_callback) for i in range(n)]
    run(q, *handles, concurrency=n)
    wait_for(lambda: len(spans) == n, 30, "every callback")
    return sorted(spans)


def test_callbacks_run_one_at_a_time_by_default(queue: Queue) -> None:
    assert queue.callback_threads == 1
    spans = _callback_spans(queue, 3)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # each began after the one before had ended


def test_callback_threads_run_callbacks_at_once(queue: Queue) -> None:
    with pytest.raises(ferroq.InvalidArgumentError):
        queue.callback_threads = 0
    queue.callback_threads = 3
    spans = _callback_spans(queue, 3)
    # Every callback began before any had ended: all three overlapped.
    assert max(s for s, _ in spans) < min(e for _, e in spans)


# -- @task(meta=...) ------------------------------------------------------------


def test_task_meta_is_readable_by_the_task_and_in_its_records(queue: Queue) -> None:
    assert tagged.meta == {"author": "dev", "tags": ["image"]}
    assert tagged(1) == {"author": "dev", "tags": ["image"]}  # called directly
    plain = queue.send(tagged, 1)
    over = queue.send(tagged, args=[2], metadata={"author": "ops", "run": 7})
    expected = [
        {"author": "dev", "tags": ["image"]},
        {"author": "ops", "tags": ["image"], "run": 7},
    ]
    assert run(queue, plain, over) == expected
    assert [queue.get(h.id).metadata for h in (plain, over)] == expected  # type: ignore[union-attr]
    with pytest.raises(ferroq.InvalidArgumentError, match="JSON"):
        task(name="msg:bad-meta", meta={"x": object()})(pair.fn)
    with pytest.raises(ferroq.InvalidArgumentError, match="dict"):
        task(name="msg:bad-meta", meta=["x"])(pair.fn)  # type: ignore[arg-type]


def test_listen_data_all_lists_every_key_with_its_latest_value(queue: Queue) -> None:
    assert queue.listen_data_all() == {}
    queue.update_listen_data("theme", "light")
    queue.update_listen_data("limits", {"qps": 5})
    queue.update_listen_data("theme", "dark")
    queue.update_listen_data("empty", None)
    assert queue.listen_data_all() == {"theme": "dark", "limits": {"qps": 5}, "empty": None}
    assert json.dumps(queue.listen_data_all(), sort_keys=True)  # plain values


def test_queue_task_takes_meta_and_queue_takes_callback_threads(tmp_path: Path) -> None:
    with Queue(str(tmp_path / "store"), callback_threads=2) as q:
        assert q.callback_threads == 2

        @q.task(meta={"owner": "billing"})
        def owned() -> object:
            return ferroq.current_task().metadata

        assert owned.meta == {"owner": "billing"}
        with QueueScheduler(q):
            h = owned.send()
            assert h.result(timeout=10) == {"owner": "billing"}
        assert h.info().metadata == {"owner": "billing"}
    with pytest.raises(ferroq.InvalidArgumentError):
        Queue(str(tmp_path / "other"), callback_threads=0)
