"""Steering tasks from outside through the native store (issue 12): by-id
verbs, serial queues across processes, cancels that stick across a
SIGKILL, refused duplicate keys and 64-bit priorities."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import ferroq
from ferroq import _core, _errors


@pytest.fixture(params=["memory", "sqlite4"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path / 'store'}?shards=4"
    s = _core.Store(url)
    yield s
    s.close()


def test_priorities_take_any_64_bit_integer(store: _core.Store) -> None:
    stamp = 1_700_000_123_456
    prios = [0, 2**62, -(2**62), stamp, 2**63 - 1, -(2**63)]
    for p in prios:
        store.enqueue("q", "t", b"J[[],{}]", priority=p)
    got = [store.claim("q", "w")[0].priority for _ in prios]
    assert got == sorted(prios, reverse=True)
    with pytest.raises(ferroq.InvalidArgumentError, match="out of range"):
        store.enqueue("q", "t", b"x", priority=2**63)


def test_verbs_by_id_with_their_guards(store: _core.Store) -> None:
    a, _ = store.enqueue("q", "t", b"a")
    b, _ = store.enqueue("q", "t", b"b", run_at=store.now_ms() + 3_600_000)
    t = store.start(b, "person", lease_ms=10_000)
    assert (t.id, t.status, t.worker) == (b, "running", "person")
    with pytest.raises(ferroq.InvalidTransitionError):
        store.start(b, "other")
    with pytest.raises(ferroq.LeaseLostError):
        store.complete(b, "operator", b"r")
    store.progress(b, "operator", 0.5, force=True)
    store.complete(b, "operator", b"answer", force=True)
    assert store.get(b).status == "done"
    with pytest.raises(ferroq.AlreadyFinishedError):
        store.complete(b, "operator", b"again", force=True)
    store.requeue(b)
    assert store.get(b).status == "queued"
    store.set_priority(b, 2**40)
    store.set_run_at(a, store.now_ms() + 60_000)
    assert store.claim("q", "w")[0].id == b
    with pytest.raises(ferroq.InvalidTransitionError):
        store.set_priority(b, 1)
    store.set_metadata(b, '{"seen": true}')
    assert store.get(b).metadata == '{"seen": true}'
    with pytest.raises(ferroq.InvalidArgumentError):
        store.set_metadata(b, "not json")
    with pytest.raises(ferroq.TaskNotFoundError):
        store.requeue(10**12)


def test_queue_options_round_trip(store: _core.Store) -> None:
    rest = (False, None, None, None)  # paused, aging, dead letters: tests/test_queue_flow.py
    assert store.queue_options("q") == ("q", False, None, "requeue", None, *rest)
    store.set_queue_options(
        "q", serial=True, answer_timeout_ms=240_000, on_timeout="expire", retention_ms=10_000
    )
    assert store.queue_options("q") == ("q", True, 240_000, "expire", 10_000, *rest)
    assert store.all_queue_options() == [("q", True, 240_000, "expire", 10_000, *rest)]
    with pytest.raises(ferroq.InvalidArgumentError):
        store.set_queue_options("q", on_timeout="later")  # type: ignore[arg-type]


def test_serial_queue_hands_out_one_and_switches(store: _core.Store) -> None:
    store.set_queue_options("prompts", serial=True)
    ids = [store.enqueue("prompts", "prompt", b"p")[0] for _ in range(3)]
    assert [t.id for t in store.claim("prompts", "page", limit=5)] == [ids[0]]
    assert store.claim("prompts", "page", limit=5) == []
    active = store.active("prompts", "page")
    assert active is not None and active.id == ids[0]
    store.start(ids[2], "page")
    assert store.get(ids[0]).status == "queued"
    assert store.get(ids[0]).attempts == 0
    active = store.active("prompts", "page")
    assert active is not None and active.id == ids[2]


def test_duplicate_key_can_be_an_error(store: _core.Store) -> None:
    first, inserted = store.enqueue("q", "t", b"a", key="user-1")
    assert inserted
    assert store.enqueue("q", "t", b"b", key="user-1") == (first, False)
    with pytest.raises(_errors.DuplicateKeyError) as caught:
        store.enqueue("q", "t", b"b", key="user-1", on_duplicate="error")
    err = caught.value
    assert isinstance(err, ferroq.FerroqError)
    assert (err.task_id, err.queue, err.key) == (first, "q", "user-1")
    with pytest.raises(_errors.DuplicateKeyError):
        store.enqueue_many(
            "q", "t", [b"1", b"2", b"3"], keys=["user-2", None, "user-1"], on_duplicate="error"
        )
    assert store.get_by_key("q", "user-2") is None, "nothing of the batch was stored"
    assert sum(n for _, _, n in store.counts()) == 1
    with pytest.raises(ferroq.InvalidArgumentError):
        store.enqueue("q", "t", b"b", key="x", on_duplicate="ignore")  # type: ignore[arg-type]


def test_cancel_then_late_complete_keeps_the_result_and_ends_cancelled(store: _core.Store) -> None:
    tid, _ = store.enqueue("q", "t", b"a")
    store.claim("q", "w")
    assert store.cancel(tid) == "running"
    store.complete(tid, "w", b"late")
    t = store.get(tid)
    assert (t.status, t.result) == ("cancelled", b"late")


# --- across processes (SQLite) ----------------------------------------------


def _serial_worker(url: str, name: str, use_active: bool, out: Any) -> None:
    s = _core.Store(url)
    spans = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if use_active:
            t = s.active("s", name)
            got = [] if t is None or t.worker != name else [t]
        else:
            got = s.claim("s", name, limit=3)
        if not got:
            if s.unfinished("s") == 0:
                break
            time.sleep(0.001)
            continue
        assert len(got) == 1, got
        begin = time.monotonic_ns()
        time.sleep(0.002)
        end = time.monotonic_ns()
        s.complete(got[0].id, name, b"r")
        spans.append((begin, end, got[0].id))
    s.close()
    out.put(spans)


def test_four_processes_on_a_serial_queue_never_run_two(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store'}?shards=4"
    s = _core.Store(url)
    s.set_queue_options("s", serial=True)
    ids = {s.enqueue("s", "t", b"x")[0] for _ in range(40)}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_serial_worker, args=(url, f"p{i}", i % 2 == 1, out)) for i in range(4)
    ]
    for p in procs:
        p.start()
    spans = [span for _ in procs for span in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(i for _, _, i in spans) == sorted(ids), "each task ran exactly once"
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        assert begin > end, f"tasks {a} and {b} ran at the same time"
    s.close()


def _claim_and_hang(url: str, ready: Any) -> None:
    s = _core.Store(url)
    t = s.claim("q", "doomed", lease_ms=60_000)
    ready.put(t[0].id)
    time.sleep(60)


def test_cancel_while_running_then_sigkill_ends_cancelled(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store'}?shards=4"
    s = _core.Store(url)
    tid, _ = s.enqueue("q", "t", b"x", max_attempts=5)
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    child = ctx.Process(target=_claim_and_hang, args=(url, ready))
    child.start()
    assert ready.get(timeout=30) == tid
    assert s.cancel(tid) == "running"
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    assert s.recover(worker="doomed") == [(tid, "cancelled")]
    assert s.get(tid).status == "cancelled"
    assert s.claim("q", "w", limit=5) == [], "never runs again"
    s.close()
