"""Changing a SQLite store's shard count offline (issue 17): ``ferroq.reshard``
copies every task and all store-wide data into a store of another shard
count, which real worker processes then drain; a store in use is refused.
(The id placement, every field and every table are checked in the core's
tests, ``rust/ferroq-core/tests/reshard.rs``.)"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import spawn_worker, wait_for
from ferroq import (
    InvalidArgumentError,
    NotAStoreError,
    Queue,
    StoreInUseError,
    reshard,
)


def stats(q: Queue) -> dict[str, dict[str, int]]:
    """Non-zero counts per queue and status."""
    return {
        queue: {s: n for s, n in counts.items() if n}
        for queue, counts in q.stats().items()
        if any(counts.values())
    }


def drain(url: str, q: Queue, queue: str, n: int) -> None:
    """Runs a worker process on ``url`` until ``queue`` has ``n`` done tasks."""
    worker = spawn_worker(url, "--concurrency", "4")
    try:
        wait_for(lambda: q.stats().get(queue, {}).get("done") == n, 60, f"{n} done in {queue}")
    finally:
        worker.send_signal(signal.SIGINT)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out.decode()


@pytest.mark.parametrize(("before", "after"), [(1, 4), (4, 2), (4, 1)])
def test_a_worker_drains_the_resharded_store_and_nothing_is_lost(
    tmp_path: Path, before: int, after: int
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    q = Queue(f"sqlite://{src}?shards={before}")
    payloads = [b"J[[%d,%d],{}]" % (i, 1000) for i in range(120)]
    keys = [f"row-{i}" if i % 3 == 0 else None for i in range(120)]
    ids, _ = q._store.enqueue_many("default", "app.tasks:add", payloads, keys=keys)
    # Some finished before the reshard: their results travel with them.
    for t in q._store.claim("default", "w", limit=30):
        q._store.complete(t.id, "w", b"J%d" % (t.id * 7))
    q.update_listen_data("model", {"version": 3})
    expected = stats(q)
    q.close()

    report = reshard(src, dst, after)
    assert (report.src_shards, report.shards, report.tasks) == (before, after, 120)
    assert report.kept_ids + len(report.renumbered) == 120
    assert report.counts == expected
    assert sorted(p.name for p in dst.iterdir()) == [f"shard-{i:03d}.db" for i in range(after)]
    # The source is as it was, and still a store of its own shard count.
    old = Queue(f"sqlite://{src}?shards={before}")
    assert stats(old) == expected
    old.close()

    new = Queue(str(dst))
    assert stats(new) == expected
    assert new.listen_data("model") == {"version": 3}
    # A key still names its task: sending it again stores nothing.
    for i in range(0, 120, 3):
        again, inserted = new._store.enqueue_many(
            "default", "app.tasks:add", [b"J[[0,0],{}]"], keys=[f"row-{i}"]
        )
        assert inserted == [False]
        assert again == [report.new_id(ids[i])]
    drain(str(dst), new, "default", 120)
    for i, old_id in enumerate(ids):
        record = new._store.get(report.new_id(old_id))
        assert record is not None and record.status == "done"
        if record.result != b"J%d" % (old_id * 7):  # not one finished before
            assert json.loads(record.result[1:]) == i + 1000
    # New sends take ids no task ever had.
    fresh, _ = new._store.enqueue_many("default", "app.tasks:add", [b"J[[1,1],{}]"] * 10)
    everything = set(ids) | {report.new_id(i) for i in ids}
    assert not everything & set(fresh) and min(fresh) > max(everything)
    new.close()


def test_a_running_store_is_refused_until_its_dead_workers_are_released(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    flag = tmp_path / "go"
    q = Queue(f"sqlite://{src}?shards=2")
    payloads = [b'J[["%s",%d],{}]' % (str(flag).encode(), i) for i in range(6)]
    ids, _ = q._store.enqueue_many("default", "app.reshard_tasks:hold", payloads)
    worker = spawn_worker(str(src), "--concurrency", "2", modules=("app.reshard_tasks",))
    try:
        wait_for(lambda: q.stats().get("default", {}).get("running") == 2, 60, "2 running")
        with pytest.raises(StoreInUseError, match="2 task\\(s\\) running.*live worker"):
            reshard(src, dst, 3)
        assert not dst.exists()
        # Killed: its tasks stay running and its record stays fresh.
        worker.kill()
        worker.communicate(timeout=30)
        with pytest.raises(StoreInUseError):
            reshard(src, dst, 3)
        running = [t.id for t in q._store.list_tasks(status="running", limit=10)]
        q.close()
        report = reshard(src, dst, 3, release_running=True)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=30)
    assert sorted(report.released) == sorted(report.new_id(i) for i in running)
    assert report.workers_dropped == 1
    new = Queue(str(dst))
    for i in running:
        record = new._store.get(report.new_id(i))
        assert record is not None and (record.status, record.attempts) == ("queued", 0)
    assert new.workers() == []
    flag.touch()
    worker = spawn_worker(str(dst), "--concurrency", "2", modules=("app.reshard_tasks",))
    try:
        wait_for(lambda: new.stats().get("default", {}).get("done") == 6, 60, "6 done")
    finally:
        worker.send_signal(signal.SIGINT)
        worker.communicate(timeout=30)
    results = [new._store.get(report.new_id(i)) for i in ids]
    assert [json.loads(r.result[1:]) for r in results if r and r.result] == list(range(6))
    new.close()


def test_bad_requests_raise_typed_errors_and_write_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    Queue(f"sqlite://{src}?shards=2").close()
    with pytest.raises(InvalidArgumentError, match="already has 2"):
        reshard(src, tmp_path / "d", 2)
    with pytest.raises(InvalidArgumentError):
        reshard(src, tmp_path / "d", 0)
    with pytest.raises(InvalidArgumentError, match="overlap"):
        reshard(src, src / "inside", 3)
    with pytest.raises(InvalidArgumentError, match="in-memory"):
        reshard("memory://", tmp_path / "d", 3)
    with pytest.raises(NotAStoreError):
        reshard(tmp_path / "nothing-here", tmp_path / "d", 3)
    assert not (tmp_path / "d").exists()
    # A sqlite:/// URL names the store as Queue takes it.
    report = reshard(f"sqlite://{src}?shards=2", tmp_path / "d", 3)
    assert (report.src_shards, report.shards, report.tasks) == (2, 3, 0)
