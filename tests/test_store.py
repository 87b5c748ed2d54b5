"""The native store through the public package: verbs, errors, waits."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ferroq
from ferroq import Queue, TokenBucket


def test_enqueue_claim_complete_round_trip(queue: Queue) -> None:
    s = queue._store
    tid, inserted = s.enqueue("q", "f", b"payload", priority=3, key="k1", batch="b")
    assert inserted
    again, inserted2 = s.enqueue("q", "f", b"other", key="k1")
    assert (again, inserted2) == (tid, False)
    [t] = s.claim("q", "w1", limit=10, lease_ms=5_000)
    assert (t.id, t.status, t.attempts, t.worker) == (tid, "running", 1, "w1")
    assert t.payload == b"payload"
    s.complete(tid, "w1", b"result")
    done = s.get(tid)
    assert done is not None
    assert (done.status, done.result, done.key, done.batch) == ("done", b"result", "k1", "b")
    assert s.get_by_key("q", "k1").id == tid  # type: ignore[union-attr]
    assert s.counts() == [("q", "done", 1)]


def test_enqueue_many_keys_and_priorities(queue: Queue) -> None:
    s = queue._store
    ids, inserted = s.enqueue_many(
        "q", "f", [b"a", b"b", b"c", b"d"], priority=[0, 5, 1, 5], keys=["x", None, "x", None]
    )
    assert inserted == [True, True, False, True]
    assert ids[2] == ids[0]
    claimed = s.claim("q", "w", limit=10)
    assert [t.payload for t in claimed] == [b"b", b"d", b"a"]
    with pytest.raises(ValueError, match="priority has 2 values for 4 tasks"):
        s.enqueue_many("q", "f", [b"a"] * 4, priority=[1, 2])


def test_guarded_transitions_raise_typed_errors(queue: Queue) -> None:
    s = queue._store
    tid, _ = s.enqueue("q", "f", b"x", max_attempts=2)
    [t] = s.claim("q", "w1")
    with pytest.raises(ferroq.LeaseLostError) as lost:
        s.complete(t.id, "intruder", b"r")
    assert lost.value.task_id == tid and lost.value.status == "running"
    s.complete(t.id, "w1", b"r")
    with pytest.raises(ferroq.AlreadyFinishedError):
        s.complete(t.id, "w1", b"r")
    with pytest.raises(ferroq.TaskNotFoundError):
        s.cancel(10_000_000)
    with pytest.raises(ferroq.InvalidTransitionError):
        s.retry(tid)
    errors = s.release([tid, 10_000_000], "w1")
    assert isinstance(errors[0], ferroq.AlreadyFinishedError)
    assert isinstance(errors[1], ferroq.TaskNotFoundError)


def test_fail_retry_and_dead_letter(queue: Queue) -> None:
    s = queue._store
    tid, _ = s.enqueue("q", "f", b"x", max_attempts=2, backoff="fixed,0,1,0,0")
    s.claim("q", "w")
    assert s.fail(tid, "w", "boom") == "queued"
    s.claim("q", "w")
    assert s.fail(tid, "w", "boom again") == "failed"
    t = s.get(tid)
    assert t is not None and (t.status, t.error, t.attempts) == ("failed", "boom again", 2)
    s.retry(tid)
    t = s.get(tid)
    assert t is not None and (t.status, t.attempts) == ("queued", 0)


def test_cancel_queued_and_flag_running(queue: Queue) -> None:
    s = queue._store
    a, _ = s.enqueue("q", "f", b"a")
    b, _ = s.enqueue("q", "f", b"b")
    assert s.cancel(a) == "cancelled"
    [t] = s.claim("q", "w")
    assert t.id == b
    assert s.cancel(b) == "running"
    assert s.heartbeat([b], "w", 10_000) == [(b, True, True)]
    assert s.cancel(b, "w") == "cancelled"


def test_release_does_not_count_attempt(queue: Queue) -> None:
    s = queue._store
    tid, _ = s.enqueue("q", "f", b"x")
    s.claim("q", "w")
    assert s.release([tid], "w") == [None]
    [t] = s.claim("q", "w")
    assert t.attempts == 1


def test_list_paging_and_purge(queue: Queue) -> None:
    s = queue._store
    ids, _ = s.enqueue_many("q", "f", [b"%d" % i for i in range(25)], batch="b1")
    seen: list[int] = []
    after = None
    while True:
        page = s.list_tasks(batch="b1", after_id=after, limit=10)
        if not page:
            break
        seen += [t.id for t in page]
        after = page[-1].id
    assert seen == sorted(ids)
    for t in s.claim("q", "w", limit=25):
        s.complete(t.id, "w", b"")
    assert s.purge() == 0  # within retention
    assert s.purge(s.now_ms() + 1) == 25
    assert s.list_tasks(limit=100) == []


def test_listen_data(queue: Queue) -> None:
    s = queue._store
    head = s.listen_head()
    v1 = s.listen_set("config", b"1")
    v2 = s.listen_set("config", b"2")
    assert head < v1 < v2
    assert [(k, v) for _, k, v, _ in s.listen_changes(head)] == [("config", b"1"), ("config", b"2")]
    assert s.listen_get("config") == (v2, b"2")


def test_claim_wait_is_woken_by_enqueue_in_another_thread(queue: Queue) -> None:
    s = queue._store
    threading.Timer(0.2, lambda: s.enqueue("q", "f", b"x")).start()
    t0 = time.monotonic()
    got = s.claim("q", "w", wait=10.0)
    assert len(got) == 1
    assert time.monotonic() - t0 < 5.0


def test_wait_releases_the_gil(queue: Queue) -> None:
    counter = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal counter
        while not stop.is_set():
            counter += 1

    th = threading.Thread(target=spin)
    th.start()
    queue._store.claim("empty", "w", wait=0.5)
    stop.set()
    th.join()
    # A wait that held the GIL would have starved the spinning thread.
    assert counter > 10_000


def test_claim_wait_sees_another_process(disk_url: str) -> None:
    q = Queue(disk_url)
    code = (
        "import time, ferroq; time.sleep(0.5); "
        f"ferroq.Queue({disk_url!r})._store.enqueue('q', 'f', b'from-child')"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        got = q._store.claim("q", "w", wait=20.0)
        assert [t.payload for t in got] == [b"from-child"]
    finally:
        child.wait(timeout=30)
        q.close()


def test_persistence_across_reopen(disk_url: str) -> None:
    q = Queue(disk_url)
    tid, _ = q._store.enqueue("q", "f", b"kept", key="k")
    q.close()
    base = disk_url.split("?")[0]
    with Queue(base) as again:  # shard count read from the store
        t = again._store.get(tid)
        assert t is not None and t.payload == b"kept" and t.status == "queued"


def test_error_classes_subclass_the_right_builtins() -> None:
    assert issubclass(ferroq.InvalidArgumentError, ValueError)
    assert issubclass(ferroq.PayloadTooLargeError, ValueError)
    assert issubclass(ferroq.StoreUnavailableError, OSError)
    assert issubclass(ferroq.StorePermissionError, PermissionError)
    assert issubclass(ferroq.TaskNotFoundError, LookupError)
    assert issubclass(ferroq.TaskTimeoutError, TimeoutError)
    for name in ferroq._errors.__all__:
        assert issubclass(getattr(ferroq, name), ferroq.FerroqError), name


def test_bad_store_paths(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ferroq.StoreUnavailableError):
        Queue(str(blocker / "store"))
    with pytest.raises(ferroq.NotAStoreError, match="is a file"):
        Queue(str(blocker))
    with pytest.raises(ferroq.InvalidArgumentError, match="shards"):
        Queue(f"sqlite://{tmp_path}/x?shards=0")
    with pytest.raises(ferroq.InvalidArgumentError, match="unknown store scheme"):
        Queue("mysql://localhost")


def test_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").write_text("x")
            # Root ignores directory modes; sysfs refuses new directories even to root.
            target = "/sys/ferroq-test-store"
        except PermissionError:
            target = str(locked / "store")
        with pytest.raises(ferroq.StoreUnavailableError):
            Queue(target)
    finally:
        locked.chmod(0o700)


def test_not_sqlite_other_app_and_corrupt(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "shard-000.db").write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(ferroq.NotAStoreError, match="not a SQLite database"):
        Queue(str(garbage))

    other = tmp_path / "other"
    other.mkdir()
    con = sqlite3.connect(other / "shard-000.db")
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    with pytest.raises(ferroq.NotAStoreError, match="something else"):
        Queue(str(other))

    damaged = tmp_path / "damaged"
    with Queue(str(damaged)) as q:
        q._store.enqueue_many("q", "f", [b"x" * 1000] * 200)
    path = damaged / "shard-000.db"
    # Fold the WAL into the main file, then overwrite the pages after the header.
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(path.read_bytes())
    data[4096:4096 * 8] = b"\xff" * (4096 * 7)
    path.write_bytes(bytes(data))
    with pytest.raises((ferroq.CorruptStoreError, ferroq.NotAStoreError)):
        with Queue(str(damaged)) as q:
            q._store.list_tasks(limit=1000)


def test_shard_mismatch_and_payload_limit(tmp_path: Path) -> None:
    Queue(f"sqlite://{tmp_path}/s?shards=2").close()
    with pytest.raises(ferroq.ShardMismatchError, match="has 2 shards, but 3"):
        Queue(f"sqlite://{tmp_path}/s?shards=3")
    with Queue(f"sqlite://{tmp_path}/small?max_payload=100") as q:
        with pytest.raises(ferroq.PayloadTooLargeError):
            q._store.enqueue("q", "f", b"x" * 101)
        with pytest.raises(ferroq.PayloadTooLargeError):
            q._store.enqueue_many("q", "f", [b"ok", b"x" * 101])
        assert q._store.counts() == []  # nothing stored, not even the valid row


def test_out_of_range_arguments(queue: Queue) -> None:
    s = queue._store
    with pytest.raises(ferroq.InvalidArgumentError):
        s.enqueue("", "f", b"x")
    with pytest.raises(ferroq.InvalidArgumentError):
        s.enqueue("q", "f", b"x", priority=2**63)
    with pytest.raises(ferroq.InvalidArgumentError):
        s.enqueue("q", "f", b"x", max_attempts=0)
    with pytest.raises(ferroq.InvalidArgumentError):
        s.claim("q", "w", limit=0)
    with pytest.raises(ferroq.InvalidArgumentError):
        s.claim("q", "w", lease_ms=0)
    assert s.counts() == []


def test_closed_store_raises(tmp_path: Path) -> None:
    q = Queue(str(tmp_path / "c"))
    q.close()
    assert q.closed
    # A FerroqError like every other (it was a bare RuntimeError).
    with pytest.raises(ferroq.StoreUnavailableError, match="closed"):
        q._store.enqueue("q", "f", b"x")


def test_token_bucket_limits_rate() -> None:
    bucket = TokenBucket(rate=50, burst=5)
    assert sum(bucket.try_acquire() for _ in range(20)) == 5
    t0 = time.monotonic()
    taken = sum(bucket.acquire(timeout=5) for _ in range(10))
    elapsed = time.monotonic() - t0
    assert taken == 10
    # 10 tokens at 50/s cannot be had in much less than 0.2 s.
    assert elapsed >= 0.15
    slow = TokenBucket(rate=1, burst=1)
    assert slow.try_acquire()
    assert not slow.acquire(timeout=0.05)
    with pytest.raises(ferroq.InvalidArgumentError):
        TokenBucket(rate=0)
    with pytest.raises(ferroq.InvalidArgumentError):
        bucket.try_acquire(100)
