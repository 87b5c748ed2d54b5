"""Real worker processes: the CLI, graceful SIGTERM, and SIGKILL recovery."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

from conftest import python_env, read_log, spawn_worker, wait_for
from ferroq import Queue


def enqueue_slow(q: Queue, n: int, seconds: float) -> list[int]:
    payloads = [b'J[[%d,%r],{}]' % (i, seconds) for i in range(n)]
    ids, _ = q._store.enqueue_many("default", "app.tasks:slow", payloads, max_attempts=4)
    return ids


def test_cli_worker_and_stats(tmp_path: Path) -> None:
    url = str(tmp_path / "cli")
    q = Queue(url)
    ids, _ = q._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"] * 20)
    other, _ = q._store.enqueue("other", "app.tasks:shout", b'J[["hi"],{}]')
    worker = spawn_worker(url, "--concurrency", "2")
    try:
        wait_for(lambda: q.stats().get("default", {}).get("done") == 20, 30, "20 done")
        wait_for(lambda: q.stats().get("other", {}).get("done") == 1, 30, "other done")
    finally:
        worker.send_signal(signal.SIGINT)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out.decode()
    shouted = q.get(other)
    assert shouted is not None and shouted.result == "HI" and shouted.raw.result == b'J"HI"'
    stats = subprocess.run(
        [sys.executable, "-m", "ferroq.cli", "stats", "--url", url],
        env=python_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    header, *rows = stats.splitlines()
    done = header.split().index("done")
    lines = {line.split()[0]: line.split() for line in rows if line.strip()}
    assert lines["default"][done] == "20"
    assert lines["other"][done] == "1"
    q.close()


def test_sigterm_finishes_in_flight_and_releases_the_rest(tmp_path: Path) -> None:
    url = str(tmp_path / "graceful")
    log = tmp_path / "log.txt"
    q = Queue(url)
    enqueue_slow(q, 300, 0.02)
    worker = spawn_worker(url, "--concurrency", "4", FERROQ_TEST_LOG=str(log))
    wait_for(lambda: len(read_log(log)) >= 40, 30, "worker to start tasks")
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out.decode()
    stats = q.stats()["default"]
    assert stats["running"] == 0
    assert stats["done"] + stats["queued"] == 300
    rows = read_log(log)
    starts = collections.Counter(tid for tag, tid, _ in rows if tag == "start")
    ends = collections.Counter(tid for tag, tid, _ in rows if tag == "end")
    assert starts == ends  # every started task finished before the exit
    assert stats["done"] == len(ends)

    worker2 = spawn_worker(url, "--concurrency", "4", FERROQ_TEST_LOG=str(log))
    try:
        wait_for(lambda: q.stats()["default"]["done"] == 300, 60, "all 300 done")
    finally:
        worker2.send_signal(signal.SIGTERM)
        worker2.communicate(timeout=30)
    starts = collections.Counter(tid for tag, tid, _ in read_log(log) if tag == "start")
    assert len(starts) == 300 and set(starts.values()) == {1}
    q.close()


def test_sigkill_mid_run_loses_nothing(tmp_path: Path) -> None:
    url = str(tmp_path / "crash")
    log = tmp_path / "log.txt"
    q = Queue(url)
    ids = enqueue_slow(q, 400, 0.02)
    first = spawn_worker(url, "--concurrency", "4", "--lease", "2", FERROQ_TEST_LOG=str(log))
    wait_for(lambda: len(read_log(log)) >= 100, 30, "first worker to make progress")
    first.kill()
    first.communicate(timeout=10)  # also closes its stdout pipe
    rows = read_log(log)
    pid1 = {pid for _, _, pid in rows}.pop()
    started1 = {tid for tag, tid, pid in rows if tag == "start" and pid == pid1}
    ended1 = {tid for tag, tid, pid in rows if tag == "end" and pid == pid1}
    in_flight = started1 - ended1
    assert q.stats()["default"]["running"] > 0  # the kill left leases behind

    second = spawn_worker(url, "--concurrency", "4", "--lease", "2", FERROQ_TEST_LOG=str(log))
    try:
        wait_for(lambda: q.stats()["default"]["done"] == 400, 90, "all 400 done")
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
    assert q.stats()["default"] == {
        "waiting": 0, "queued": 0, "running": 0, "done": 400, "failed": 0, "cancelled": 0,
        "expired": 0,
    }
    starts = collections.Counter(tid for tag, tid, _ in read_log(log) if tag == "start")
    assert set(starts) == set(ids)
    twice = {tid for tid, n in starts.items() if n > 1}
    assert max(starts.values()) <= 2
    # Only tasks in flight at the kill (and finished-but-not-yet-stored
    # ones of the same batch) may have run twice.
    assert twice <= started1
    assert in_flight <= twice or not in_flight
    q.close()
