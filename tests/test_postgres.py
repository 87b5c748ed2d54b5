"""PostgreSQL: one queue shared by several worker processes, a worker
killed mid-run, the server restarted mid-run, and connection failures with
clear errors that never show the password.

These run against the real server ``scripts/pg`` starts (``scripts/test``
does, and sets ``FERROQ_TEST_PG_URL``); each test has its own schema."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Callable

import pytest

import conftest
from conftest import PG_URL, ROOT, needs_pg, pg_url, python_env, read_log
from ferroq import InvalidArgumentError, Queue, StoreUnavailableError

pytestmark = needs_pg


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """conftest.wait_for that asks again while the server restarts."""
    conftest.wait_for(predicate, timeout, what, retry_on=(StoreUnavailableError,))




class Worker:
    """``ferroq worker app.tasks`` in a subprocess, its output in a file (a
    pipe nobody reads could fill up and stall it)."""

    def __init__(self, url: str, out: Path, *args: str, **env: str) -> None:
        self.out_path = out
        self._out: IO[bytes] = open(out, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ferroq.cli", "worker", "app.tasks", "--url", url, *args],
            env=python_env(**env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            self._out.close()
        return code

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")


def enqueue_slow(q: Queue, n: int, seconds: float) -> list[int]:
    payloads = [b"J[[%d,%r],{}]" % (i, seconds) for i in range(n)]
    ids, _ = q._store.enqueue_many("default", "app.tasks:slow", payloads, max_attempts=4)
    return ids


def done_count(q: Queue) -> int:
    return q.stats().get("default", {}).get("done", 0)


def test_three_workers_drain_20000_tasks_each_exactly_once(tmp_path: Path) -> None:
    url = pg_url()
    log = tmp_path / "log.txt"
    q = Queue(url)
    ids = enqueue_slow(q, 20_000, 0.0)
    workers = [
        Worker(url, tmp_path / f"w{i}.out", "--concurrency", "4", FERROQ_TEST_LOG=str(log))
        for i in range(3)
    ]
    try:
        wait_for(lambda: done_count(q) == 20_000, 300, "20,000 tasks done")
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0, 0], "\n".join(w.output() for w in workers)
    assert q.stats()["default"] == {
        "waiting": 0, "queued": 0, "running": 0, "done": 20_000, "failed": 0, "cancelled": 0,
        "expired": 0,
    }
    rows = read_log(log)
    starts = collections.Counter(tid for tag, tid, _ in rows if tag == "start")
    ends = collections.Counter(tid for tag, tid, _ in rows if tag == "end")
    assert set(starts) == set(ids), "every task ran"
    assert set(starts.values()) == {1}, "no task ran twice"
    assert starts == ends
    by_pid = collections.Counter(pid for tag, _, pid in rows if tag == "start")
    assert len(by_pid) == 3, f"all three workers took work: {by_pid}"
    q.close()


def test_a_worker_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    url = pg_url()
    log = tmp_path / "log.txt"
    q = Queue(url)
    ids = enqueue_slow(q, 3_000, 0.01)
    args = ("--concurrency", "4", "--lease", "2")
    workers = [
        Worker(url, tmp_path / f"w{i}.out", *args, FERROQ_TEST_LOG=str(log)) for i in range(3)
    ]
    victim = workers[0]
    try:
        wait_for(
            lambda: sum(1 for _, _, pid in read_log(log) if pid == victim.proc.pid) >= 100,
            60,
            "the first worker to make progress",
        )
        victim.stop(signal.SIGKILL)
        rows = read_log(log)
        started = {tid for tag, tid, pid in rows if tag == "start" and pid == victim.proc.pid}
        wait_for(lambda: done_count(q) == 3_000, 180, "all 3,000 done")
    finally:
        codes = [w.stop() for w in workers[1:]]
    assert codes == [0, 0], "\n".join(w.output() for w in workers[1:])
    assert q.stats()["default"]["done"] == 3_000
    starts = collections.Counter(tid for tag, tid, _ in read_log(log) if tag == "start")
    assert set(starts) == set(ids)
    twice = {tid for tid, n in starts.items() if n > 1}
    assert max(starts.values()) <= 2
    # Only tasks the killed worker had started (in flight at the kill, or
    # run but not yet recorded) may have run twice.
    assert twice <= started
    q.close()


def test_server_restart_mid_run_every_task_ends_done(tmp_path: Path) -> None:
    url = pg_url()
    log = tmp_path / "log.txt"
    q = Queue(url)
    ids = enqueue_slow(q, 3_000, 0.005)
    workers = [
        Worker(url, tmp_path / f"w{i}.out", "--concurrency", "4", "--lease", "5",
               FERROQ_TEST_LOG=str(log))
        for i in range(2)
    ]
    try:
        wait_for(lambda: len(read_log(log)) >= 400, 60, "the workers to make progress")
        subprocess.run([str(ROOT / "scripts" / "pg"), "restart"], check=True, timeout=120)
        progress_at_restart = len(read_log(log))
        wait_for(lambda: done_count(q) == 3_000, 180, "all 3,000 done after the restart")
        assert all(w.proc.poll() is None for w in workers), "a worker died with the server"
        assert len(read_log(log)) > progress_at_restart, "work went on after the restart"
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], "\n".join(w.output() for w in workers)
    stats = q.stats()["default"]
    assert (stats["done"], stats["queued"], stats["running"], stats["failed"]) == (3_000, 0, 0, 0)
    starts = collections.Counter(tid for tag, tid, _ in read_log(log) if tag == "start")
    assert set(starts) == set(ids)
    q.close()


SECRET = "Corr3ct-Horse-Battery"


@pytest.fixture(scope="module")
def password_role() -> str:
    """A role that must log in with SECRET (the superuser needs none)."""
    subprocess.run(
        [str(ROOT / "scripts" / "pg"), "psql", "-c",
         "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferroq_py_pw') "
         "THEN CREATE ROLE ferroq_py_pw LOGIN; END IF; END $$; "
         f"ALTER ROLE ferroq_py_pw PASSWORD '{SECRET}'"],
        check=True, capture_output=True,
    )
    return "ferroq_py_pw"


def server() -> tuple[str, str]:
    """(host:port, database) of the test server."""
    rest = PG_URL.split("@", 1)[1]
    hostport, db = rest.split("/", 1)
    return hostport, db.split("?")[0]


@pytest.mark.parametrize(
    "case", ["unreachable port", "wrong password", "missing database", "unknown host"]
)
def test_unusable_server_is_a_clear_error_without_the_password(
    case: str, password_role: str
) -> None:
    hostport, db = server()
    url, expect = {
        "unreachable port": (f"postgresql://someone:{SECRET}@127.0.0.1:1/{db}", "refused"),
        "wrong password": (
            f"postgresql://{password_role}:not-{SECRET}@{hostport}/{db}",
            "password authentication failed",
        ),
        "missing database": (
            f"postgresql://{password_role}:{SECRET}@{hostport}/no_such_database",
            "does not exist",
        ),
        "unknown host": (f"postgresql://u:{SECRET}@no-such-host.invalid/{db}", "cannot connect"),
    }[case]
    with pytest.raises(StoreUnavailableError) as err:
        Queue(url)
    text = str(err.value)
    assert expect in text, text
    assert SECRET not in text and SECRET not in repr(err.value)
    assert isinstance(err.value, OSError)


def test_bad_postgres_urls_are_invalid_arguments() -> None:
    for bad in [
        f"postgresql://u:{SECRET}@/db",
        f"postgresql://u:{SECRET}@h/db?pool=0",
        f"postgresql://u:{SECRET}@h/db?schema=Not-An-Identifier",
        f"postgresql://u:{SECRET}@h/db?shards=4",
        f"postgresql://u:{SECRET}@h/db?notify=sometimes",
    ]:
        with pytest.raises(InvalidArgumentError) as err:
            Queue(bad)
        assert SECRET not in str(err.value)
        assert isinstance(err.value, ValueError)


def test_right_password_works_and_is_never_shown(password_role: str) -> None:
    hostport, db = server()
    schema = pg_url().split("schema=")[1]
    subprocess.run(
        [str(ROOT / "scripts" / "pg"), "psql", "-c",
         f"CREATE SCHEMA {schema} AUTHORIZATION {password_role}"],
        check=True, capture_output=True,
    )
    q = Queue(f"postgresql://{password_role}:{SECRET}@{hostport}/{db}?schema={schema}")
    handle = q._store.enqueue("default", "app.tasks:add", b"J[[1,2],{}]")
    assert handle[1] is True
    assert SECRET not in repr(q._store)
    q.close()


def test_polling_mode_delivers_results_too(tmp_path: Path) -> None:
    url = pg_url(notify="off", poll_ms=20)
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
