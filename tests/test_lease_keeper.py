"""``LeaseKeeper``: leases renewed by a Rust thread, without the GIL (issue
13): a task holding the GIL in a long C call past its lease is not run
again by another worker meanwhile.

Written against the native module directly; the scheduler builds on it."""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import store_url
from ferroq import InvalidArgumentError
from ferroq._core import LeaseKeeper, Store

LEASE_MS = 300
INTERVAL_S = 0.1
KINDS = ["memory", "sqlite-1", "sqlite-4"]


def keeper_threads() -> int:
    """Live keeper threads of this process (Linux names them in /proc)."""
    tasks = Path("/proc/self/task")
    count = 0
    for p in tasks.iterdir() if tasks.exists() else ():
        try:
            count += (p / "comm").read_text().startswith("ferroq-lease")
        except OSError:  # a thread that ended while we looked
            pass
    return count


# ``re`` never releases the GIL while matching, and this pattern on a run
# of a's backtracks exponentially: one C call that holds the GIL.
GIL_HOG = re.compile(r"(a+)+b")


def gil_hog_length(seconds: float) -> int:
    """The run of a's that keeps ``GIL_HOG`` busy for about ``seconds``."""
    start = time.monotonic()
    GIL_HOG.fullmatch("a" * 20)
    base = max(time.monotonic() - start, 1e-6)
    return min(32, 20 + max(0, math.ceil(math.log2(seconds / base))))


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(store_url(request.param, tmp_path))
    yield s
    s.close()


def claim_one(store: Store, worker: str) -> int:
    store.enqueue("q", "job", b"p")
    [task] = store.claim("q", worker, lease_ms=LEASE_MS)
    return task.id


def wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_leases_are_kept_while_a_task_holds_the_gil(store: Store) -> None:
    hog = "a" * gil_hog_length(1.0)
    kept = claim_one(store, "w1")
    unkept = claim_one(store, "w1")
    keeper = LeaseKeeper(store, "w1", LEASE_MS, INTERVAL_S)
    keeper.add([kept])
    # A Python heartbeat thread, as the scheduler had: it cannot run while
    # the call holds the GIL.
    beats = 0
    stop = threading.Event()

    def python_heartbeat() -> None:
        nonlocal beats
        while not stop.is_set():
            beats += 1
            time.sleep(0.005)

    t = threading.Thread(target=python_heartbeat)
    t.start()
    try:
        time.sleep(0.05)
        before, start = beats, time.monotonic()
        GIL_HOG.fullmatch(hog)
        held_for, during = time.monotonic() - start, beats - before
    finally:
        stop.set()
        t.join()
    assert held_for > 2 * LEASE_MS / 1000, f"the call took only {held_for:.2f}s"
    assert during <= 1, f"a Python thread ran {during} times while the GIL was held"

    # Another worker looks for tasks whose lease ran out.
    recovered = dict(store.recover())
    assert unkept in recovered, "without the keeper the lease ran out"
    assert kept not in recovered, "the kept task was taken away while it ran"
    assert store.heartbeat([kept], "w1", LEASE_MS) == [(kept, True, False)]
    task = store.get(kept)
    assert task is not None and (task.status, task.worker) == ("running", "w1")
    assert keeper.lost() == [] and keeper.errors() == []
    keeper.close()


def test_a_lost_lease_is_reported_and_no_longer_renewed(store: Store) -> None:
    a, b = claim_one(store, "w1"), claim_one(store, "w1")
    keeper = LeaseKeeper(store, "w1", LEASE_MS, INTERVAL_S)
    keeper.add([a, b])
    assert keeper.ids() == [a, b]
    assert store.release([b], "w1") == [None]
    wait_until("the lost lease", lambda: keeper.lost() == [b])
    assert keeper.ids() == [a]
    keeper.remove([b])
    assert keeper.lost() == []
    keeper.close()


def test_a_cancellation_request_is_seen(store: Store) -> None:
    a = claim_one(store, "w1")
    keeper = LeaseKeeper(store, "w1", LEASE_MS, INTERVAL_S)
    keeper.add([a])
    assert keeper.cancel_requested() == []
    assert store.cancel(a) == "running"
    wait_until("the cancel flag", lambda: keeper.cancel_requested() == [a])
    assert keeper.ids() == [a], "still renewed until the task stops"
    keeper.remove([a])
    assert keeper.cancel_requested() == [] and keeper.ids() == []
    keeper.close()


def test_close_and_drop_stop_the_thread(store: Store) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("counts threads in /proc")
    wait_until("earlier tests' keepers to end", lambda: keeper_threads() == 0)
    keeper = LeaseKeeper(store, "w1", LEASE_MS, INTERVAL_S)
    wait_until("the keeper thread", lambda: keeper_threads() == 1)
    assert not keeper.closed
    keeper.close()
    keeper.close()
    assert keeper.closed and keeper_threads() == 0, "close() waits for the thread"
    keeper.add([1])  # harmless once closed
    dropped = LeaseKeeper(store, "w1", LEASE_MS, INTERVAL_S)
    wait_until("the second keeper thread", lambda: keeper_threads() == 1)
    del dropped
    wait_until("the dropped keeper's thread to end", lambda: keeper_threads() == 0)


def test_closing_the_store_stops_the_keeper(tmp_path: Path) -> None:
    store = Store(store_url("sqlite-1", tmp_path))
    a = claim_one(store, "w1")
    keeper = LeaseKeeper(store, "w1", LEASE_MS, INTERVAL_S)
    keeper.add([a])
    store.close()
    wait_until("the keeper to notice", lambda: keeper.closed)
    assert any("closed" in e for e in keeper.errors())
    keeper.close()


def test_bad_arguments_are_refused(store: Store) -> None:
    with pytest.raises(InvalidArgumentError):
        LeaseKeeper(store, "w1", 0, INTERVAL_S)
    for interval in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(InvalidArgumentError):
            LeaseKeeper(store, "w1", LEASE_MS, interval)
