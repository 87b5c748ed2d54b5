"""Worker processes under one supervisor (``ferroq worker --processes N``,
``QueueScheduler(processes=N)``): real child processes on real SQLite
files, killed for real."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import python_env, read_log, wait_for
from ferroq import InvalidArgumentError, Queue, QueueScheduler
from ferroq.supervisor import RESTART_BACKOFF

STARTED = re.compile(r"worker process (\d+)/(\d+) started \(pid (\d+)\)")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped
    by whoever adopted it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


class Supervised:
    """``ferroq worker app.tasks --processes N`` in a subprocess, its
    stderr (and its children's) in a file."""

    def __init__(self, tmp_path: Path, url: str, *args: str) -> None:
        self.err_path = tmp_path / "worker.err"
        self.task_log = tmp_path / "tasks.log"
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ferroq", "worker", "app.tasks", "--url", url, *args],
            env=python_env(FERROQ_TEST_LOG=str(self.task_log)),
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    @property
    def err(self) -> str:
        """What the supervisor and its children logged so far."""
        return self.err_path.read_text(errors="replace")

    def started(self) -> list[tuple[int, int]]:
        """(child index, pid) of every child started so far, in order."""
        return [(int(m[1]), int(m[3])) for m in STARTED.finditer(self.err)]

    def wait(self, timeout: float = 120) -> int:
        """The supervisor's exit code."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._err.close()

    def close(self) -> None:
        """Kills what is left (a failed test must not leave processes)."""
        pids = [pid for _, pid in self.started()]
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._err.close()


def fill(url: str, n: int, seconds: float) -> list[int]:
    """``n`` tasks of ``app.tasks:slow`` sleeping ``seconds`` each."""
    with Queue(url) as q:
        ids, _ = q._store.enqueue_many(
            "default",
            "app.tasks:slow",
            [b"J[[%d,%r],{}]" % (i, seconds) for i in range(n)],
            max_attempts=5,
        )
    return list(ids)


def done_once(url: str, ids: list[int]) -> None:
    """Every task finished as done, with its own result."""
    with Queue(url) as q:
        counts = q.stats()["default"]
        assert counts["done"] == len(ids) and sum(counts.values()) == len(ids), counts
        results = {t.id: t.result for t in q.list(status="done", limit=len(ids) + 1)}
        assert sorted(results) == sorted(ids)
        assert [results[i] for i in ids] == list(range(len(ids)))
        assert q.workers() == []


def test_two_processes_drain_a_four_shard_store_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/store?shards=4"
    ids = fill(url, 600, 0.002)
    w = Supervised(tmp_path, url, "--processes", "2", "-c", "2", "--burst")
    try:
        assert w.wait() == 0, w.err
    finally:
        w.close()
    assert "Traceback" not in w.err
    started = w.started()
    assert sorted(i for i, _ in started) == [1, 2]  # two children, none restarted
    assert len({pid for _, pid in started}) == 2
    assert "supervising 2 worker processes" in w.err
    log = read_log(w.task_log)
    ends = Counter(tid for tag, tid, _ in log if tag == "end")
    assert sorted(ends) == sorted(ids) and set(ends.values()) == {1}
    assert {pid for _, _, pid in log} <= {pid for _, pid in started}
    done_once(url, ids)


def test_a_killed_child_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/store?shards=4"
    ids = fill(url, 400, 0.02)
    w = Supervised(tmp_path, url, "--processes", "2", "-c", "2", "--lease", "2")
    try:
        wait_for(lambda: len(w.started()) == 2, 60, "two children")
        (_, victim), (_, other) = w.started()
        # Kill it while it runs tasks (not before its first one).
        wait_for(
            lambda: any(pid == victim for tag, _, pid in read_log(w.task_log) if tag == "start"),
            60, "the child to run tasks",
        )
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(w.started()) == 3, 60, "a replacement child")
        _, replacement = w.started()[2]
        assert replacement not in (victim, other)
        assert f"(pid {victim}) was killed by SIGKILL" in w.err
        with Queue(url) as q:
            wait_for(lambda: q.stats()["default"]["done"] == len(ids), 120, "every task done")
            wait_for(
                lambda: {r.pid for r in q.workers()} == {other, replacement}, 60,
                "the replacement registered, the killed child's record gone",
            )
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait() == 0, w.err
    finally:
        w.close()
    log = read_log(w.task_log)
    ends = Counter(tid for tag, tid, _ in log if tag == "end")
    assert sorted(ends) == sorted(ids)  # nothing lost
    # Only the tasks the killed child was running may have run twice.
    starts = Counter(tid for tag, tid, _ in log if tag == "start")
    by_victim = {tid for tag, tid, pid in log if pid == victim}
    assert {tid for tid, n in starts.items() if n > 1} <= by_victim
    done_once(url, ids)


def test_sigterm_stops_every_child_gracefully(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    ids = fill(url, 300, 0.05)
    w = Supervised(tmp_path, url, "--processes", "2", "-c", "3", "--grace", "60")
    try:
        wait_for(lambda: len(w.started()) == 2, 60, "two children")
        pids = [pid for _, pid in w.started()]
        wait_for(lambda: len(read_log(w.task_log)) >= 20, 60, "tasks to run")
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait() == 0, w.err
    finally:
        w.close()
    assert "Traceback" not in w.err
    assert not any(alive(pid) for pid in pids)
    log = read_log(w.task_log)
    starts = Counter(tid for tag, tid, _ in log if tag == "start")
    ends = Counter(tid for tag, tid, _ in log if tag == "end")
    assert starts == ends  # every task begun was finished within the grace period
    with Queue(url) as q:
        counts = q.stats()["default"]
        assert counts["running"] == 0
        assert counts["done"] == len(ends) and counts["queued"] == len(ids) - len(ends)
        assert q.workers() == []


def test_a_second_interrupt_forces_the_stop(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    ids = fill(url, 4, 60.0)  # far longer than the test: only a forced stop ends them
    w = Supervised(tmp_path, url, "--processes", "2", "-c", "2", "--grace", "600")
    try:
        wait_for(lambda: len(read_log(w.task_log)) >= 2, 60, "tasks to start")
        w.proc.send_signal(signal.SIGINT)
        wait_for(lambda: w.err.count("told to stop") == 2, 60, "the children to start stopping")
        w.proc.send_signal(signal.SIGINT)
        assert w.wait() == 0, w.err
    finally:
        w.close()
    assert "forced stop" in w.err
    with Queue(url) as q:
        counts = q.stats()["default"]
        # Given back, not finished: the grace period was cut short. A child
        # that could not give its tasks back within 5 s of the force (a
        # loaded machine) was killed: its tasks stay running until their
        # lease ends and recovery requeues them. Nothing finished, nothing lost.
        assert counts["done"] == 0 and counts["queued"] + counts["running"] == len(ids)
        if counts["running"]:
            assert "killing it" in w.err, w.err
        else:
            assert q.workers() == []


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    fill(url, 200, 0.05)
    w = Supervised(tmp_path, url, "--processes", "2", "-c", "2", "--grace", "2")
    try:
        wait_for(lambda: len(w.started()) == 2, 60, "two children")
        pids = [pid for _, pid in w.started()]
        wait_for(lambda: len(read_log(w.task_log)) >= 10, 60, "tasks to run")
        w.proc.kill()
        w.proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in pids), 30, "the children to exit")
    finally:
        w.close()
    assert "supervisor gone: stopping" in w.err
    with Queue(url) as q:
        assert q.stats()["default"]["running"] == 0  # finished or given back


def test_processes_option_is_checked(tmp_path: Path) -> None:
    for bad in ("0", "two"):
        out = subprocess.run(
            [sys.executable, "-m", "ferroq", "worker", "app.tasks", "--url",
             str(tmp_path / "s"), "--processes", bad],
            env=python_env(), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 2 and "--processes" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_queue_scheduler_processes_from_python(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/store?shards=4"
    ids = fill(url, 300, 0.002)
    seen: Counter[str] = Counter()
    with Queue(url) as q:
        scheduler = QueueScheduler(
            q, processes=2, imports=["app.tasks"], concurrency=2, hooks=[
                lambda tid, old, new: seen.update([new])
            ],
        )
        assert scheduler.supervisor is not None
        with scheduler:
            wait_for(lambda: q.stats()["default"]["done"] == len(ids), 120, "every task done")
            workers = q.workers()
            pids = {r.pid for r in workers}
            assert len(pids) == 2 and os.getpid() not in pids
            assert set(pids) == set(scheduler.supervisor.pids)
            # The parent's hooks see the children's moves, from the feed.
            wait_for(lambda: seen["done"] == len(ids), 60, "the hooks to see every move")
        assert q.workers() == []
    done_once(url, ids)


def test_a_child_that_cannot_start_is_restarted_with_back_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent only checks the module exists; each child dies importing it.
    (tmp_path / "crashes_on_import.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level(logging.WARNING, "ferroq.supervisor")
    with Queue(str(tmp_path / "store")) as q:
        scheduler = QueueScheduler(q, processes=2, imports=["crashes_on_import"])
        assert scheduler.supervisor is not None
        delays: list[float] = []

        def restarted() -> bool:
            delays[:] = [
                float(m[1]) for m in re.finditer(
                    r"worker process 1/2 .* exited with code 3 .*restarting in ([\d.]+)s",
                    caplog.text,
                )
            ]
            return len(delays) >= 3

        with scheduler:
            wait_for(restarted, 60, "three restarts of the first child")
        # Each early death waits longer than the one before.
        assert delays[:3] == sorted(delays[:3]) and delays[2] > delays[0]
        assert delays[0] == pytest.approx(RESTART_BACKOFF.base, rel=0.11)


def test_what_worker_processes_cannot_do_is_refused(tmp_path: Path) -> None:
    with Queue("memory://") as mem:
        with pytest.raises(InvalidArgumentError, match="memory://"):
            QueueScheduler(mem, processes=2, imports=["app.tasks"])
    with Queue(str(tmp_path / "store")) as q:
        with pytest.raises(InvalidArgumentError, match="no_such_module"):
            QueueScheduler(q, processes=2, imports=["no_such_module"])
        with pytest.raises(InvalidArgumentError, match="list of module names"):
            QueueScheduler(q, processes=2, imports="app.tasks")
        with pytest.raises(InvalidArgumentError, match="processes > 1"):
            QueueScheduler(q, imports=["app.tasks"])
        for bad in (0, True, 1.5):
            with pytest.raises(InvalidArgumentError, match="processes"):
                QueueScheduler(q, processes=bad)  # type: ignore[arg-type]
        for home in ((2, 2), (0,), (-1, 2)):
            with pytest.raises(InvalidArgumentError, match="home"):
                QueueScheduler(q, home=home)  # type: ignore[arg-type]
        assert QueueScheduler(q, home=(1, 2)).home == (1, 2)
        with pytest.raises(InvalidArgumentError, match="must pickle"):
            QueueScheduler(q, processes=2, imports=["app.tasks"], resources=lambda: {})


def test_a_task_in_main_needs_a_module(tmp_path: Path) -> None:
    script = (
        "import ferroq\n"
        "@ferroq.task\n"
        "def hello() -> str:\n"
        "    return 'hi'\n"
        f"q = ferroq.Queue({str(tmp_path / 'store')!r})\n"
        "try:\n"
        "    ferroq.QueueScheduler(q, processes=2)\n"
        "except ferroq.InvalidArgumentError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=python_env(), capture_output=True, text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("InvalidArgumentError task '__main__:hello' is defined in")
    assert "imports=[...]" in out.stdout
