"""QueueScheduler beyond the everyday path: listeners, cleanup, crash
recovery, process and asyncio modes, capacity, limits, external finishing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_processes import enqueue_slow

import ferroq
from app import modes, more  # noqa: F401  (registers app.more.echo)
from conftest import read_log, spawn_worker, wait_for
from ferroq import CleanupIntervals, Queue, QueueScheduler, set_default_queue
from ferroq.scheduler.cleanup import pid_alive


@pytest.fixture
def q(queue: Queue):  # type: ignore[no-untyped-def]
    set_default_queue(queue)
    yield queue
    set_default_queue(None)


def log_lines(path: Path, tag: str) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split()[1:] for line in path.read_text().splitlines() if line.startswith(tag)]


def test_listener_in_another_process_sees_every_change_in_order(tmp_path: Path) -> None:
    url = str(tmp_path / "listen")
    log = tmp_path / "log.txt"
    q = Queue(url)
    q.update_listen_data("config", "before-start")  # not replayed
    worker = spawn_worker(url, modules=("app.modes",), FERROQ_TEST_LOG=str(log))
    try:
        wait_for(lambda: len(q._store.workers()) == 1, 30, "worker to register")
        for i in range(20):
            q.update_listen_data("config", i)
        wait_for(lambda: len(log_lines(log, "config")) >= 20, 30, "20 listener calls")
        time.sleep(0.3)  # nothing more arrives
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    values = [v for v, _pid in log_lines(log, "config")]
    assert values == [str(i) for i in range(20)]
    assert q.listen_data("config") == 19
    q.close()


def test_listener_replay_when_asked(q: Queue) -> None:
    seen: list[object] = []
    q.update_listen_data("replayed", {"a": 1})
    q.listener("replayed")(seen.append)
    s = QueueScheduler(q, replay_listen=True)
    assert s.listen is None
    s.start()
    try:
        wait_for(lambda: seen == [{"a": 1}], 10, "replayed value")
    finally:
        s.stop()


def test_cleanup_steps_recover_leases_and_expire_deadlines(q: Queue) -> None:
    s = QueueScheduler(q, cleanup=CleanupIntervals(leases=0, deadlines=0))
    tid, _ = q._store.enqueue("default", "app.tasks:add", b"J[[1,2],{}]", max_attempts=2)
    [t] = q._store.claim("default", "ghost-worker", 1, 20)  # 20 ms lease, never renewed
    late = modes.sleep_for.options(expires=0.02).send(1.0)
    time.sleep(0.05)
    s.cleanup.tick(time.monotonic())
    assert q.get(tid).status == "queued"  # type: ignore[union-attr]
    assert "ghost-worker" in (q.get(tid).error or "")  # type: ignore[union-attr]
    assert late.status() == "expired"
    with pytest.raises(ferroq.TaskExpiredError):
        late.result(timeout=1)
    s.cleanup.stop()


def test_dead_worker_on_this_host_is_recovered_at_once(q: Queue) -> None:
    s = QueueScheduler(q)
    q._store.register_worker("gone:1", ferroq.scheduler.cleanup.HOST, 2**22 + 12345, ["default"])
    assert not pid_alive(2**22 + 12345)
    tid, _ = q._store.enqueue("default", "f", b"J[[],{}]")
    q._store.claim("default", "gone:1", 1, 3_600_000)
    assert s.cleanup.recover_dead_workers() == ["gone:1"]
    assert q.get(tid).status == "queued"  # type: ignore[union-attr]
    assert [w[0] for w in q._store.workers()] == []


def test_sigkill_then_restart_recovers_within_about_a_second(tmp_path: Path) -> None:
    url = str(tmp_path / "fast")
    log = tmp_path / "log.txt"
    q = Queue(url)
    enqueue_slow(q, 40, 2.0)  # long tasks: the kill leaves them running
    first = spawn_worker(url, "--concurrency", "4", "--lease", "120", FERROQ_TEST_LOG=str(log))
    wait_for(lambda: len(read_log(log)) >= 4, 30, "four tasks started")
    first.kill()
    first.communicate(timeout=10)  # also closes its stdout pipe
    stuck = {tid for tag, tid, _ in read_log(log) if tag == "start"}
    assert len(stuck) == 4 and q.stats()["default"]["running"] == 4
    restarted = time.monotonic()
    second = spawn_worker(url, "--concurrency", "4", "--lease", "120", FERROQ_TEST_LOG=str(log))
    try:
        # With a 120 s lease only dead-worker detection can bring them back soon.
        wait_for(
            lambda: stuck <= {tid for tag, tid, pid in read_log(log) if pid == second.pid},
            30,
            "the killed worker's tasks to run again",
        )
        took = time.monotonic() - restarted
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=60)
    print(f"killed worker's tasks running again {took:.2f}s after the restart")
    assert took < 20
    q.close()


def test_process_mode_kills_a_hung_task_and_retries(tmp_path: Path) -> None:
    url = str(tmp_path / "proc")
    log = tmp_path / "log.txt"
    import os

    os.environ["FERROQ_TEST_LOG"] = str(log)
    try:
        with Queue(url) as q:
            set_default_queue(q)
            with QueueScheduler(q, mode="process", concurrency=1):
                h = modes.hang_once.send()
                assert h.result(timeout=60) == 2
            info = h.info()
            assert info.attempts == 2
            [(first_attempt, pid1), (second_attempt, pid2)] = log_lines(log, "hang")
            assert (first_attempt, second_attempt) == ("1", "2")
            assert pid1 != pid2 and not pid_alive(int(pid1))
    finally:
        del os.environ["FERROQ_TEST_LOG"]
        set_default_queue(None)


def test_asyncio_mode_runs_hundreds_at_once(q: Queue) -> None:
    modes.STATE["max_in_flight"] = 0
    with QueueScheduler(q, mode="asyncio", concurrency=500, queues=["default"]):
        t0 = time.monotonic()
        handles = [modes.async_sleep.send(0.1) for _ in range(500)]
        results = [h.result(timeout=30) for h in handles]
        took = time.monotonic() - t0
    assert results == [0.1] * 500
    assert modes.STATE["max_in_flight"] >= 100
    assert took < 2.0, took


@pytest.mark.parametrize("mode", ["thread", "process", "asyncio"])
def test_cancel_a_running_task_in_each_mode(mode: str, tmp_path: Path) -> None:
    with Queue(str(tmp_path / mode)) as q:
        set_default_queue(q)
        try:
            with QueueScheduler(q, mode=mode, concurrency=2):  # type: ignore[arg-type]
                if mode == "asyncio":
                    h = modes.async_sleep.send(30.0)
                elif mode == "process":
                    h = modes.sleep_for.send(30.0)  # type: ignore[assignment]
                else:
                    from test_tasks import STARTED, cooperative

                    STARTED.clear()
                    h = cooperative.send()  # type: ignore[assignment]
                wait_for(lambda: h.status() == "running", 30, "task to start")
                time.sleep(0.2)
                t0 = time.monotonic()
                assert h.cancel() == "running"
                with pytest.raises(ferroq.TaskCancelledError):
                    h.result(timeout=20)
                assert time.monotonic() - t0 < 10
        finally:
            set_default_queue(None)


def test_capacity_refuses_or_waits(q: Queue) -> None:
    q.set_capacity("default", 2)
    assert q.capacity("default") == 2
    modes.sleep_for.send(0.2)
    modes.sleep_for.send(0.2)
    with pytest.raises(ferroq.QueueFullError, match="full"):
        modes.sleep_for.send(0.2)
    assert q.stats()["default"]["queued"] == 2
    with QueueScheduler(q, concurrency=2):
        h = modes.sleep_for.options(wait=20).send(0.0)  # waits for a free place
        assert h.result(timeout=20) == "slept"
    q.set_capacity("default", None)


def test_tasks_finished_from_outside(q: Queue) -> None:
    a = q.send("app.more.echo", {"question": "approve?"})
    b = q.send("app.more.echo", {"question": "second"})
    active = q.active()
    assert active is not None and active.id == a.id
    assert q.active().id == a.id  # type: ignore[union-attr]  # still the same one
    args, kwargs = active.args
    assert args == [{"question": "approve?"}] and kwargs == {}
    active.complete({"approved": True})
    assert a.result(timeout=1) == {"approved": True}
    nxt = q.active()
    assert nxt is not None and nxt.id == b.id
    assert nxt.fail("rejected by reviewer") == "failed"
    with pytest.raises(ferroq.TaskFailedError, match="rejected by reviewer"):
        b.result(timeout=1)
    assert q.claim() is None
    c = q.send("app.more.echo", 3)
    held = q.claim(worker="reviewer-1")
    assert held is not None and held.id == c.id
    with pytest.raises(ferroq.LeaseLostError):
        q.complete(c.id, 1, worker="someone-else")
    with pytest.raises(ferroq.AlreadyFinishedError):
        q.complete(b.id, 1, worker=nxt.worker)
    held.complete(3)
    assert c.result(timeout=1) == 3


def test_concurrency_limit_holds_under_four_workers(q: Queue) -> None:
    modes.STATE["max_running"] = 0
    handles = [modes.limited.send(0.05) for _ in range(16)]
    schedulers = [QueueScheduler(q, concurrency=4, queues=["default"]) for _ in range(4)]
    for s in schedulers:
        s.start()
    try:
        for h in handles:
            h.result(timeout=60)
    finally:
        for s in schedulers:
            s.stop()
    assert modes.STATE["max_running"] == 2


def test_rate_limit_holds_under_four_workers(q: Queue) -> None:
    modes.STARTS.clear()
    handles = [modes.rated.send() for _ in range(60)]
    schedulers = [QueueScheduler(q, concurrency=4, queues=["default"]) for _ in range(4)]
    for s in schedulers:
        s.start()
    try:
        for h in handles:
            h.result(timeout=60)
    finally:
        for s in schedulers:
            s.stop()
    starts = sorted(modes.STARTS)
    assert len(starts) == 60
    # In any one-second window: at most the burst (20) plus 20 refilled.
    worst = max(sum(1 for t in starts if s0 <= t < s0 + 1.0) for s0 in starts)
    assert worst <= 40, worst


def test_resource_requirements_pick_the_right_worker(q: Queue) -> None:
    h = modes.needs_gpu.send()
    with QueueScheduler(q, resources={"gpu_memory_gb": 4}):
        time.sleep(0.5)
        assert h.status() == "queued"
    with QueueScheduler(q, resources=lambda: {"gpu_memory_gb": 16.0}):
        assert h.result(timeout=10) == "ran"
    assert ferroq.gpu_probe() == {} or "gpu_memory_gb" in ferroq.gpu_probe()


def test_threads_stop_is_graceful_with_thread_threads_count() -> None:
    # A scheduler's threads all end after stop().
    with Queue() as q:
        s = QueueScheduler(q, concurrency=3).start()
        before = threading.active_count()
        s.stop()
        assert threading.active_count() <= before - 6


def test_a_failed_store_call_mid_batch_gives_the_rest_back(q: Queue) -> None:
    from ferroq.scheduler.task_loop import ThreadTaskLoop

    for i in range(10):
        q.send("app.more.echo", i)
    s = QueueScheduler(q, queues=["default"], batch_size=10)
    loop = ThreadTaskLoop(s.state, ["default"])
    loop._avg_seconds = 1e-6  # claim the whole batch at once

    class Flaky:
        """The store, but complete_many fails once."""

        def __init__(self, store: object) -> None:
            self._store = store
            self.failed = False

        def __getattr__(self, name: str) -> object:
            return getattr(self._store, name)

        def complete_many(self, *a: object) -> object:
            if not self.failed:
                self.failed = True
                raise ferroq.StoreUnavailableError("simulated outage")
            return self._store.complete_many(*a)  # type: ignore[attr-defined]

    s.state.store = Flaky(q._store)  # type: ignore[assignment]
    import ferroq.scheduler.task_loop as tl

    old = tl._FLUSH_AT
    tl._FLUSH_AT = 2  # flush after every two results, mid-batch
    try:
        with pytest.raises(ferroq.StoreUnavailableError):
            loop.tick(0)
    finally:
        tl._FLUSH_AT = old
    assert s.state.claimed == {}  # nothing left for the monitor to keep alive
    stats = q.stats()["default"]
    # Two results were lost with the failed call (their tasks stay running
    # until their leases lapse); the eight not yet run went back to the queue.
    assert (stats["queued"], stats["running"]) == (8, 2)


def test_results_share_a_commit_only_while_tasks_are_fast(q: Queue) -> None:
    # Results of fast tasks share one store call; a slow task's result is
    # stored at once rather than waiting for the next task to finish (a
    # crash in between would run a finished task again).
    from ferroq.scheduler.task_loop import ThreadTaskLoop

    s = QueueScheduler(q, queues=["default"], batch_size=10)
    calls: list[int] = []

    class Counting:
        """The store, counting results per complete_many call."""

        def __init__(self, store: object) -> None:
            self._store = store

        def __getattr__(self, name: str) -> object:
            return getattr(self._store, name)

        def complete_many(self, ids: list[int], *a: object) -> object:
            calls.append(len(ids))
            return self._store.complete_many(ids, *a)  # type: ignore[attr-defined]

    s.state.store = Counting(q._store)  # type: ignore[assignment]
    loop = ThreadTaskLoop(s.state, ["default"])
    for i in range(10):
        q.send("app.more.echo", i)
    loop._avg_seconds = 1e-6  # fast tasks: the whole batch at once
    assert loop.tick(0) == 10
    assert calls == [10]

    calls.clear()
    for _ in range(4):
        q.send(modes.sleep_for, 0.02)
    loop._avg_seconds = 0.02 / 4  # claim all four in one batch
    assert loop.tick(0) == 4
    assert calls == [1, 1, 1, 1]
    assert q.stats()["default"]["done"] == 14


def test_queue_repr_hides_passwords() -> None:
    from ferroq.queue import redact

    assert redact("postgresql://app:s3cret@db:5432/jobs") == "postgresql://app:***@db:5432/jobs"
    assert redact("tasks.db") == "tasks.db"
    with Queue() as q:
        q.url = "postgresql://app:s3cret@db/jobs"
        assert "s3cret" not in repr(q)


def test_process_mode_task_reads_its_metadata(tmp_path: Path) -> None:
    with Queue(str(tmp_path / "proc-meta")) as q:
        set_default_queue(q)
        try:
            with QueueScheduler(q, mode="process", concurrency=1):
                h = modes.own_metadata.options(metadata={"run": 3}).send()
                out = h.result(timeout=60)
        finally:
            set_default_queue(None)
    assert out["pid"] != os.getpid(), "ran in a child process"
    assert out["metadata"] == {"team": "media", "run": 3}


@pytest.mark.parametrize("kind", ["sqlite-1", "sqlite-4"])
def test_batch_wait_claims_a_trickle_together(kind: str, tmp_path: Path) -> None:
    """With ``batch_wait``, two tasks sent 50 ms apart to an idle scheduler
    are claimed in the same wake-up: the first is not started before the
    second is sent. Without it, the first starts at once."""
    from conftest import store_url

    for batch_wait in (0.0, 0.5):
        q = Queue(store_url(kind, tmp_path / str(batch_wait)))

        @q.task(name="trickle.echo")
        def echo(x: int) -> int:
            return x

        with QueueScheduler(q, concurrency=2, batch_wait=batch_wait):
            # Idle: past the wait its own start-up commits began (any change
            # starts one), and not when an idle thread's 1 s wait ends (a
            # claim that finds work at once takes it at once).
            time.sleep(0.7)
            first = echo.send(1)
            if not batch_wait:
                wait_for(
                    lambda q=q, first=first: q.get(first.id).started_at is not None,
                    10,
                    "first task started",
                )
            time.sleep(0.05)
            sent_second_ms = time.time() * 1000
            second = echo.send(2)
            assert first.result(timeout=10) == 1 and second.result(timeout=10) == 2
        a, b = q.get(first.id).raw, q.get(second.id).raw
        assert a.started_at is not None and b.started_at is not None
        if batch_wait:
            assert a.started_at >= int(sent_second_ms), "the first waited for the second"
            assert b.started_at - a.started_at < batch_wait * 1000 / 2, "no second wait"
        else:
            assert a.started_at < b.created_at, "the first started at once"
        q.close()


def test_batch_wait_is_checked() -> None:
    q = Queue("memory://")
    for bad in (-1, 1.5, "0.1", True):
        with pytest.raises(ferroq.InvalidArgumentError, match="batch_wait"):
            QueueScheduler(q, batch_wait=bad)  # type: ignore[arg-type]
    q.close()


def test_a_failing_loop_backs_off_and_logs_a_repeated_error_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LoopRetry: waits of 0.5 s doubling to 5 s; the same error logged once
    (with its traceback), a different one again; a step that works is
    logged and starts the waits over."""
    import logging

    from ferroq.scheduler.retrying import LoopRetry

    log = logging.getLogger("ferroq.worker.test")
    retry = LoopRetry(log, "task loop error", {"worker": "w"})
    waits = []
    with caplog.at_level(logging.INFO, logger="ferroq.worker.test"):
        for _ in range(6):
            try:
                raise ConnectionError("store is down")
            except ConnectionError:
                waits.append(retry.failed())
        assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None
        assert errors[0].__dict__["worker"] == "w"
        try:
            raise ValueError("something else")
        except ValueError:
            retry.failed()
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
        retry.ok()
        assert any("working again after 7 failure(s)" in r.getMessage() for r in caplog.records)
        try:
            raise ConnectionError("store is down")
        except ConnectionError:
            assert retry.failed() == 0.5
