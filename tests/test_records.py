"""Task records as people read them (decoded arguments, results, errors,
dates), and the operator's verbs on them: delete, dead letters listed and
retried by filter, member ids per status."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

import ferroq
from ferroq import Queue, QueueScheduler, TaskRecord


@pytest.fixture
def q(queue: Queue) -> Queue:
    """The backend-parametrized queue of conftest, under a short name."""
    return queue


def test_a_record_decodes_arguments_result_and_times(q: Queue) -> None:
    @q.task
    def scale(x: int, *, by: float = 1.0) -> dict[str, float]:
        ferroq.current_task().progress(0.5)
        return {"scaled": x * by}

    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    with QueueScheduler(q):
        h = scale.options(metadata={"from": "test"}, key="k1").send(3, by=2.0)
        assert h.result(timeout=10) == {"scaled": 6.0}
    t = q.get(h.id)
    assert isinstance(t, TaskRecord)
    assert (t.id, t.status, t.queue, t.key) == (h.id, "done", "default", "k1")
    assert t.args == (3,) and t.kwargs == {"by": 2.0}
    assert t.result == {"scaled": 6.0}
    assert t.metadata == {"from": "test"}
    assert t.progress == 0.5
    assert t.error is None and t.error_type is None and t.traceback is None
    for at in (t.created_at, t.run_at, t.started_at, t.finished_at):
        assert at is not None and at.tzinfo is not None and at >= before
    assert t.finished_at is not None and t.started_at is not None
    assert t.finished_at >= t.started_at
    assert t.duration is not None and t.duration >= 0
    # The raw record keeps the storage encoding.
    assert isinstance(t.raw.payload, bytes) and isinstance(t.raw.created_at, int)
    dumped = json.loads(json.dumps(t.to_dict()))
    assert dumped["args"] == [3] and dumped["result"] == {"scaled": 6.0}
    assert datetime.fromisoformat(dumped["finished_at"]) == t.finished_at
    assert h.info() == t and q.get_by_key("k1") == t


def test_a_failed_record_gives_message_type_and_traceback(q: Queue) -> None:
    @q.task(retries=0)
    def broken() -> None:
        raise KeyError("missing")

    with QueueScheduler(q):
        h = broken.send()
        with pytest.raises(KeyError):
            h.result(timeout=10)
    t = q.get(h.id)
    assert t is not None and t.status == "failed"
    assert t.error_type == "builtins.KeyError" and t.error == "'missing'"
    assert t.traceback is not None and 'raise KeyError("missing")' in t.traceback


def test_a_stored_record_is_its_value(q: Queue) -> None:
    handle = q.put("inbox", {"prompt": "ok?"})
    t = q.get(handle.id)
    assert t is not None and t.payload == {"prompt": "ok?"}
    assert t.args == () and t.kwargs == {}


def test_list_filters_by_name_and_key(q: Queue) -> None:
    @q.task
    def a(i: int) -> int:
        return i

    @q.task
    def b(i: int) -> int:
        return i

    ids_a = [a.send(i).id for i in range(5)]
    b.send(0)
    keyed = b.options(key="only").send(1)
    assert [t.id for t in q.list(name=a.name)] == ids_a
    assert [t.id for t in q.list(key="only")] == [keyed.id]
    assert [t.id for t in q.list(name=a.name, after_id=ids_a[1], limit=2)] == ids_a[2:4]


def test_delete_removes_finished_tasks_only(q: Queue) -> None:
    @q.task
    def noop() -> None:
        return None

    with QueueScheduler(q):
        done = noop.options(key="again").send()
        done.result(timeout=10)
    waiting = noop.send()
    q.delete(done.id)
    assert q.get(done.id) is None
    with pytest.raises(ferroq.TaskNotFoundError):
        q.delete(done.id)
    with pytest.raises(ferroq.InvalidTransitionError, match="queued"):
        q.delete(waiting.id)
    assert q.get(waiting.id) is not None
    # Its key is free again: a new send with it makes a new task.
    assert noop.options(key="again").send().id not in (done.id, waiting.id)


def test_dead_letters_are_listed_and_retried_by_filter(q: Queue) -> None:
    @q.task(retries=0)
    def flaky(kind: str) -> str:
        if kind == "value":
            raise ValueError("bad value")
        if kind == "type":
            raise TypeError("bad type")
        return kind

    with QueueScheduler(q):
        handles = [flaky.send(k) for k in ("value", "value", "type", "ok")]
        for h in handles:
            try:
                h.result(timeout=10)
            except (ValueError, TypeError):
                pass
    failed = list(q.failed())
    assert sorted(t.id for t in failed) == sorted(h.id for h in handles[:3])
    values = list(q.failed(error_type="ValueError"))
    assert [t.id for t in values] == [handles[0].id, handles[1].id]
    assert list(q.failed(error_type="builtins.TypeError"))[0].id == handles[2].id
    assert list(q.failed(finished_after=datetime.now() + timedelta(hours=1))) == []
    assert len(list(q.failed(finished_before=datetime.now() + timedelta(hours=1)))) == 3
    assert len(list(q.failed(limit=2))) == 2
    assert list(q.failed(name="nothing")) == []

    assert q.retry_failed(error_type="ValueError") == 2
    for h in handles[:2]:
        t = q.get(h.id)
        assert t is not None and t.status == "queued" and t.attempts == 0
    assert q.get(handles[2].id).status == "failed"  # type: ignore[union-attr]
    assert q.retry_failed(error_type="ValueError") == 0


def test_retry_many_answers_each_task_on_its_own(q: Queue) -> None:
    """The store's batch retry (what retry_failed uses): a failed task goes
    back; a finished one and an unknown id get their own error, and
    nothing else is refused with them."""
    from ferroq import InvalidTransitionError, TaskNotFoundError

    @q.task(retries=0)
    def boom(x: int) -> int:
        if x:
            raise ValueError("no")
        return x

    with QueueScheduler(q):
        bad, good = boom.send(1), boom.send(0)
        with pytest.raises(ValueError):
            bad.result(timeout=10)
        assert good.result(timeout=10) == 0
    missing = max(bad.id, good.id) + 10_000
    errors = q._store.retry_many([bad.id, good.id, missing])
    assert errors[0] is None
    assert isinstance(errors[1], InvalidTransitionError)
    assert isinstance(errors[2], TaskNotFoundError)
    assert q.get(bad.id).status == "queued"  # type: ignore[union-attr]
    assert q.get(good.id).status == "done"  # type: ignore[union-attr]


def test_members_list_ids_per_status(q: Queue) -> None:
    @q.task
    def noop() -> None:
        return None

    with QueueScheduler(q):
        first = noop.send()
        first.result(timeout=10)
    later = [noop.options(queue="other").send().id for _ in range(3)]
    members = q.members()
    assert members["default"]["done"] == [first.id]
    assert members["other"]["queued"] == later
    assert set(members["other"]) == set(q.stats()["other"])
    assert q.members("other")["other"]["queued"] == later
    assert sum(len(v) for v in q.members(limit=2).get("other", {}).values()) <= 2


def test_bad_filters_and_limits_are_invalid_arguments(q: Queue) -> None:
    h = q.put("jobs", {"n": 1})
    t = q.claim("jobs", worker="w")
    assert t is not None and t.id == h.id
    t.fail("boom")
    bad_failed: list[dict[str, object]] = [
        {"finished_after": "2020-01-01"},
        {"finished_before": 1_700_000_000},
        {"finished_before": datetime(1, 1, 1)},  # naive, local time: before the epoch's range
        {"limit": "5"},
        {"limit": 1.5},
        {"limit": True},
    ]
    for kw in bad_failed:
        with pytest.raises(ferroq.InvalidArgumentError):
            list(q.failed(**kw))  # type: ignore[arg-type]
        if "limit" not in kw:
            with pytest.raises(ferroq.InvalidArgumentError):
                q.retry_failed(**kw)  # type: ignore[arg-type]
    for limit in (-1, "5", 1.5, None):
        with pytest.raises(ferroq.InvalidArgumentError):
            q.members(limit=limit)  # type: ignore[arg-type]
    # Nothing moved: the dead letter is still there, once.
    assert [r.id for r in q.failed()] == [h.id]
    assert q.members()["jobs"]["failed"] == [h.id]
