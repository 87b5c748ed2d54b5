"""Redis: one queue shared by several worker processes (one of them
SIGKILLed mid-run), the server restarted mid-run (append-only file on),
and refused or unreachable servers reported as StoreUnavailableError
without the password.

These run against the real server ``scripts/redis`` starts (``scripts/test``
does, and sets ``FERROQ_TEST_REDIS_URL``); each test has its own key prefix."""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from test_postgres import Worker, done_count, enqueue_slow

import conftest
from conftest import REDIS_URL, ROOT, needs_redis, read_log, redis_url
from ferroq import InvalidArgumentError, Queue, StoreUnavailableError

pytestmark = needs_redis


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """conftest.wait_for that asks again while the server restarts."""
    conftest.wait_for(predicate, timeout, what, retry_on=(StoreUnavailableError,))


def test_three_workers_drain_20000_tasks_exactly_once_while_one_is_killed(tmp_path: Path) -> None:
    url = redis_url()
    log = tmp_path / "log.txt"
    q = Queue(url)
    ids = enqueue_slow(q, 20_000, 0.0)
    args = ("--concurrency", "4", "--lease", "2")
    workers = [
        Worker(url, tmp_path / f"w{i}.out", *args, FERROQ_TEST_LOG=str(log)) for i in range(3)
    ]
    victim = workers[0]
    try:
        wait_for(
            lambda: sum(1 for _, _, pid in read_log(log) if pid == victim.proc.pid) >= 500,
            120,
            "the first worker to make progress",
        )
        victim.stop(signal.SIGKILL)
        rows = read_log(log)
        started = {tid for tag, tid, pid in rows if tag == "start" and pid == victim.proc.pid}
        wait_for(lambda: done_count(q) == 20_000, 600, "all 20,000 done")
    finally:
        codes = [w.stop() for w in workers[1:]]
    assert codes == [0, 0], "\n".join(w.output() for w in workers[1:])
    stats = q.stats()["default"]
    assert (stats["done"], stats["queued"], stats["running"], stats["failed"]) == (20_000, 0, 0, 0)
    rows = read_log(log)
    starts = collections.Counter(tid for tag, tid, _ in rows if tag == "start")
    assert set(starts) == set(ids), "every task ran"
    twice = {tid for tid, n in starts.items() if n > 1}
    # Each task is done once (the counts above); it ran once, except what
    # the killed worker had in hand: a task it started (and perhaps ran to
    # the end, its completion still in the worker's batch) runs again once
    # its lease runs out, never more.
    assert twice <= started, twice - started
    assert max(starts.values()) <= 2
    by_pid = collections.Counter(pid for tag, _, pid in rows if tag == "start")
    assert len(by_pid) == 3, f"all three workers took work: {by_pid}"
    q.close()


def test_server_restart_mid_run_loses_nothing_acknowledged(tmp_path: Path) -> None:
    url = redis_url(reconnect_s=30)
    log = tmp_path / "log.txt"
    q = Queue(url)
    ids = enqueue_slow(q, 3_000, 0.002)
    workers = [
        Worker(url, tmp_path / f"w{i}.out", "--concurrency", "4", "--lease", "5",
               FERROQ_TEST_LOG=str(log))
        for i in range(2)
    ]
    try:
        wait_for(lambda: len(read_log(log)) >= 400, 60, "the workers to make progress")
        done_before = done_count(q)
        subprocess.run([str(ROOT / "scripts" / "redis"), "restart"], check=True, timeout=120)
        # Everything acknowledged before the restart is still there.
        assert done_count(q) >= done_before
        assert len(q._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"])[0]) == 1
        progress_at_restart = len(read_log(log))
        wait_for(lambda: done_count(q) == 3_001, 180, "all 3,001 done after the restart")
        assert all(w.proc.poll() is None for w in workers), "a worker died with the server"
        assert len(read_log(log)) > progress_at_restart, "work went on after the restart"
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], "\n".join(w.output() for w in workers)
    stats = q.stats()["default"]
    assert (stats["done"], stats["queued"], stats["running"], stats["failed"]) == (3_001, 0, 0, 0)
    starts = collections.Counter(tid for tag, tid, _ in read_log(log) if tag == "start")
    assert set(starts) == set(ids)
    q.close()


SECRET = "Corr3ct-Horse-Battery"


def hostport() -> str:
    """host:port of the test server."""
    return REDIS_URL.split("://", 1)[1].split("/", 1)[0]


@pytest.mark.parametrize(
    "case", ["unreachable port", "wrong password", "wrong user", "wrong database"]
)
def test_unusable_server_is_a_clear_error_without_the_password(case: str) -> None:
    url, expect = {
        "unreachable port": (
            f"redis://:{SECRET}@127.0.0.1:1/0?connect_timeout_s=2", "cannot reach"
        ),
        # The test server has no password, so any password is refused.
        "wrong password": (f"redis://:{SECRET}@{hostport()}/0", "refused the password"),
        "wrong user": (f"redis://nobody:{SECRET}@{hostport()}/0", "refused the password"),
        "wrong database": (f"redis://{hostport()}/999", "database 999 does not exist"),
    }[case]
    with pytest.raises(StoreUnavailableError) as err:
        Queue(url)
    text = str(err.value)
    assert expect in text, text
    assert SECRET not in text and SECRET not in repr(err.value)
    assert isinstance(err.value, OSError)


def test_bad_redis_urls_are_invalid_arguments() -> None:
    for bad in [
        f"redis://:{SECRET}@/0",
        f"redis://:{SECRET}@h/zero",
        f"redis://:{SECRET}@h/0?pool=0",
        f"redis://:{SECRET}@h/0?prefix=has space",
        f"redis://:{SECRET}@h/0?shards=4",
        f"rediss://:{SECRET}@h/0",
    ]:
        with pytest.raises(InvalidArgumentError) as err:
            Queue(bad)
        assert SECRET not in str(err.value)
        assert isinstance(err.value, ValueError)


def test_two_prefixes_share_one_redis_without_seeing_each_other() -> None:
    a, b = Queue(redis_url()), Queue(redis_url())
    a._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"] * 3)
    b._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"])
    assert a.stats()["default"]["queued"] == 3
    assert b.stats()["default"]["queued"] == 1
    assert "Corr" not in repr(a._store)
    a.close()
    b.close()


def test_polling_mode_delivers_results_too(tmp_path: Path) -> None:
    url = redis_url(notify="off", poll_ms=20)
    q = Queue(url)
    worker = Worker(url, tmp_path / "w.out", "--concurrency", "2")
    try:
        ids, _ = q._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"] * 50)
        wait_for(lambda: done_count(q) == 50, 60, "50 done with notifications off")
        t = q._store.get(ids[0])
        assert t is not None and t.result == b"J3"
    finally:
        assert worker.stop() == 0, worker.output()
    q.close()
