"""Failures found under fault injection (issue 13), each tried the way it
was found: user code that raises what is not an ``Exception``, results too
large to store, a scheduler SIGKILLed under its process-mode children, a
scheduler that cannot start, and numbers no store can hold."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest

import ferroq
from conftest import python_env, wait_for
from ferroq import Backoff, Queue, QueueScheduler, Retry

# -- 1. every BaseException from user code ends the attempt -----------------


@pytest.fixture
def q(tmp_path: Path) -> Iterator[Queue]:
    queue = Queue(str(tmp_path / "store"))
    yield queue
    queue.close()


def _raise(exc: BaseException) -> Callable[[], None]:
    def boom() -> None:
        raise exc

    return boom


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), KeyboardInterrupt(), asyncio.CancelledError(), GeneratorExit()],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("mode", ["thread", "asyncio", "asyncio-plain-def"])
def test_a_base_exception_fails_the_attempt_and_the_worker_carries_on(
    q: Queue, exc: BaseException, mode: str
) -> None:
    name = f"{type(exc).__name__}_{mode}"
    if mode == "asyncio-plain-def":
        # A plain function in asyncio mode runs on the loop's thread pool.
        bad = q.task(name=f"bad_{name}")(_raise(exc))
        mode = "asyncio"
    elif mode == "asyncio":

        async def raiser() -> None:
            raise exc

        bad = q.task(name=f"bad_{name}")(raiser)
    else:
        bad = q.task(name=f"bad_{name}")(_raise(exc))

    @q.task(name=f"good_{name}")
    def good(x: int) -> int:
        return x + 1

    with QueueScheduler(q, concurrency=1, mode=mode):  # type: ignore[arg-type]
        h = bad.send()
        with pytest.raises(ferroq.TaskFailedError) as info:
            h.result(timeout=10)
        # ...and the one worker thread is alive to run the next task.
        assert good.send(1).result(timeout=10) == 2
    assert info.value.exc_type.endswith(type(exc).__name__)
    t = q.get(h.id)
    assert t is not None and t.status == "failed" and t.attempts == 1


def test_a_cancelled_error_of_a_task_asked_to_cancel_ends_it_cancelled(q: Queue) -> None:
    @q.task
    def stoppable() -> None:
        ctx = ferroq.current_task()
        while not ctx.is_cancelled():
            time.sleep(0.01)
        raise asyncio.CancelledError()

    with QueueScheduler(q, concurrency=1):
        h = stoppable.send()
        wait_for(lambda: h.status() == "running", 10, "the task to start")
        h.cancel()
        wait_for(lambda: h.status() == "cancelled", 10, "the task to end cancelled")


# -- 5. an oversized result fails once, typed, not retried -----------------


def test_an_oversized_result_fails_the_task_once_with_payload_too_large(tmp_path: Path) -> None:
    q = Queue(f"sqlite://{tmp_path}/small?max_payload=2000")
    runs: list[int] = []

    @q.task(retries=3, backoff=Backoff.fixed(0.01))
    def huge() -> str:
        runs.append(1)
        return "x" * 10_000

    with QueueScheduler(q, concurrency=1, lease=1.0):
        h = huge.send()
        # Stored as the task's error, and re-raised as its own type.
        with pytest.raises(ferroq.PayloadTooLargeError, match="exceeds the limit"):
            h.result(timeout=15)
        time.sleep(1.5)  # past a lease: nothing may run it again
    assert runs == [1]
    t = q.get(h.id)
    assert t is not None and t.status == "failed" and t.attempts == 1
    assert t.error is not None and "exceeds the limit" in t.error
    assert t.error_type == "ferroq._errors.PayloadTooLargeError"
    q.close()


# -- 4. process-mode children die with their scheduler ---------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent, the test, has not reaped it).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_of_the_scheduler_leaves_no_orphan_child(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    pid_file = tmp_path / "child.pid"
    q = Queue(url)
    from app.faults import linger

    linger.options(queue="default").send_to(q, str(pid_file))  # type: ignore[attr-defined]
    worker = subprocess.Popen(
        [sys.executable, "-m", "ferroq.cli", "worker", "app.faults", "--url", url,
         "--mode", "process", "--concurrency", "1"],
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", 60, "the child to start")
        child = int(pid_file.read_text())
        assert child != worker.pid and _alive(child)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        wait_for(lambda: not _alive(child), 5, f"child {child} to die with its scheduler")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    q.close()


# -- 9. a scheduler that cannot start says why -----------------------------


def test_a_failed_start_raises_its_cause_and_can_be_retried(tmp_path: Path) -> None:
    q = Queue(str(tmp_path / "store"))
    s = QueueScheduler(q)
    q.close()  # the scheduler cannot register itself in a closed store
    with pytest.raises(ferroq.StoreUnavailableError, match="closed"):
        s.run_forever()
    with pytest.raises(ferroq.StoreUnavailableError, match="closed"):
        s.start()  # not "already started": the failed start was undone
    assert not any(th.is_alive() for th in s._threads)


# -- 10. every bad number is a FerroqError at the call that caused it -------

BAD_SPANS = [math.nan, math.inf, -math.inf, 1e30, 10**400]


@pytest.mark.parametrize("value", BAD_SPANS, ids=repr)
def test_bad_spans_of_time_are_invalid_argument(q: Queue, value: Any) -> None:
    @q.task
    def noop() -> None:
        return None

    calls: list[Callable[[], object]] = [
        lambda: noop.options(delay=value).send(),
        lambda: noop.options(expires=value).send(),
        lambda: Backoff.fixed(value),
        lambda: Backoff.exponential(1.0, max=value),
        lambda: q.claim(lease=value),
        lambda: QueueScheduler(q, lease=value),
        lambda: q.task(timeout=value)(lambda: None),
        lambda: q.purge(older_than=value),
        lambda: Retry(delay=value),
    ]
    for call in calls:
        with pytest.raises(ferroq.InvalidArgumentError):
            call()
    assert q.stats() == {}  # nothing stored half-way


@pytest.mark.parametrize("value", [math.nan, -1.0, -math.inf])
def test_negative_and_nan_handle_timeouts(q: Queue, value: float) -> None:
    @q.task
    def noop() -> None:
        return None

    h = noop.send()
    if math.isnan(value):
        with pytest.raises(ferroq.InvalidArgumentError):
            h.result(timeout=value)
    else:  # documented: a timeout <= 0 looks once and does not wait
        with pytest.raises(ferroq.TaskTimeoutError):
            h.result(timeout=value)


def test_infinite_handle_timeout_waits_for_the_result(q: Queue) -> None:
    @q.task
    def one() -> int:
        return 1

    with QueueScheduler(q):
        assert one.send().result(timeout=math.inf) == 1
        assert one.send().result(timeout=1e20) == 1


@pytest.mark.parametrize("rate", ["inf/s", float("inf"), "nan/s", float("nan"), 0, "-1/s"])
def test_non_finite_rate_limits_are_refused_at_decoration(q: Queue, rate: Any) -> None:
    with pytest.raises(ferroq.InvalidArgumentError):
        q.task(rate_limit=rate)(lambda: None)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64])
def test_out_of_range_priorities_are_invalid_argument(q: Queue, value: int) -> None:
    @q.task
    def noop() -> None:
        return None

    with pytest.raises(ferroq.InvalidArgumentError):
        noop.options(priority=value).send()
    assert q.stats() == {}


def test_scheduler_arguments_are_checked(q: Queue) -> None:
    for kwargs in ({"concurrency": 0}, {"batch_size": 0}, {"mode": "fibers"}, {"lease": 0.05}):
        with pytest.raises(ferroq.InvalidArgumentError):
            QueueScheduler(q, **kwargs)  # type: ignore[arg-type]


def test_requires_must_be_finite(q: Queue) -> None:
    with pytest.raises(ferroq.InvalidArgumentError):
        q.task(requires={"gpu": math.nan})(lambda: None)
    with pytest.raises(ferroq.InvalidArgumentError):
        q.task(requires={"gpu": math.inf})(lambda: None)


def test_stored_errors_have_tracebacks(q: Queue) -> None:
    """The three-argument ``format_exception`` (one argument needs 3.10)."""

    @q.task
    def fails() -> None:
        raise ValueError("nope")

    with QueueScheduler(q):
        h = fails.send()
        with pytest.raises(ValueError, match="nope"):
            h.result(timeout=10)
    t = q.get(h.id)
    assert t is not None and t.error == "nope" and t.error_type == "builtins.ValueError"
    assert t.traceback is not None
    assert "ValueError: nope" in t.traceback and "in fails" in t.traceback
    # The record as stored keeps the JSON document the decoded fields come from.
    assert json.loads(t.raw.error or "")["message"] == "nope"


def test_timedelta_delays_still_work(q: Queue) -> None:
    @q.task
    def noop() -> None:
        return None

    h = noop.options(delay=timedelta(seconds=30)).send()
    t = q.get(h.id)
    assert t is not None and t.run_at.timestamp() > time.time() + 25


# -- 11. liveness by pid only where the pid means the same process ---------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_worker_in_another_pid_namespace_is_not_declared_gone(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same host name, other PID namespace: its pid says nothing here, so
    only a stale heartbeat may end it (it was recovered at once before)."""
    from ferroq.scheduler import cleanup

    # What a worker in another container with our host name registers.
    with monkeypatch.context() as m:
        m.setattr(cleanup.os, "readlink", lambda path: "pid:[4026599999]")
        other_container = cleanup.host_key()
    assert other_container != cleanup.HOST
    assert other_container.split("/")[0] == cleanup.HOST.split("/")[0]

    @q.task
    def noop() -> None:
        return None

    store = q._store
    pid = _dead_pid()  # no such process here; in its namespace it is alive
    for wid, host in (("container-b", other_container), ("same-ns", cleanup.HOST)):
        store.register_worker(wid, host, pid, ["default"])
        noop.send()
        store.claim("default", wid, 1, 60_000)
    gone = QueueScheduler(q).cleanup.recover_dead_workers()
    # The worker whose pid is dead in this very namespace is gone; the other
    # keeps its task until its heartbeat goes stale.
    assert gone == ["same-ns"]
    running = store.list_tasks(status="running")
    assert [t.worker for t in running] == ["container-b"]


def test_host_key_names_the_pid_namespace() -> None:
    from ferroq.scheduler.cleanup import HOST

    if os.path.exists("/proc/self/ns/pid"):
        assert os.readlink("/proc/self/ns/pid") in HOST


# -- 12. leases renewed without the GIL ------------------------------------


def _gil_hog_length(at_least: float) -> int:
    """A run of a's whose match against ``(a+)+b`` takes ``at_least``
    seconds here: ``re`` holds the GIL for the whole C call, and each extra
    character doubles its time."""
    import re

    n = 18
    while True:
        started = time.perf_counter()
        re.fullmatch(r"(a+)+b", "a" * n)
        took = time.perf_counter() - started
        if took * 2 >= at_least / 4 or n > 40:
            break
        n += 1
    while took < at_least and n <= 40:
        n += 1
        took *= 2
    return n


def test_a_task_holding_the_gil_past_its_lease_keeps_it(tmp_path: Path) -> None:
    import re

    url = str(tmp_path / "store")
    q = Queue(url)
    length = _gil_hog_length(1.5)
    held: list[float] = []

    @q.task
    def hog() -> str:
        # One C call that holds the GIL for well over the 0.5 s lease.
        started = time.perf_counter()
        re.fullmatch(r"(a+)+b", "a" * length)
        held.append(time.perf_counter() - started)
        return "done"

    # Another process sweeps for expired leases the whole time, as another
    # worker's cleanup would (it has a GIL of its own).
    sweeper = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from ferroq._core import Store\n"
         "s = Store(sys.argv[1]); end = time.monotonic() + 6; got = []\n"
         "while time.monotonic() < end:\n"
         "    got += s.recover(); time.sleep(0.05)\n"
         "print(len(got))\n", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    with QueueScheduler(q, concurrency=1, lease=0.5):
        h = hog.send()
        assert h.result(timeout=60) == "done"
    out, _ = sweeper.communicate(timeout=30)
    assert held and held[0] > 1.0, f"the GIL was held {held} s, not past the 0.5 s lease"
    assert out.strip() == "0", "the sweeper took over a lease of a running task"
    t = q.get(h.id)
    assert t is not None and t.attempts == 1
    q.close()


def test_a_child_that_cannot_start_fails_the_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process mode: the task's module exits when the child imports it. The
    attempt fails with the cause; the task does not stay running."""
    from ferroq import registry

    # The module's task is registered for this test only: children of later
    # process-mode schedulers import every registered task's module.
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    sys.modules.pop("app.child_exit", None)
    from app.child_exit import never_runs

    q = Queue(str(tmp_path / "store"))
    h = never_runs.options().send_to(q)  # type: ignore[attr-defined]
    with QueueScheduler(q, concurrency=1, mode="process", queues=["default"]):
        with pytest.raises(ferroq.FerroqError):
            h.result(timeout=60)
    t = q.get(h.id)
    assert t is not None and t.status == "failed" and t.attempts == 1
    q.close()


# -- review findings: restart, exit without stop() --------------------------


def test_a_scheduler_started_again_has_its_monitor_and_cleanup(q: Queue) -> None:
    """stop() then start(): the support loops run again (before, they ended
    at once, so soft timeouts, cancels and the worker record stopped)."""

    @q.task(timeout=0.3)
    def slow() -> int:
        ctx = ferroq.current_task()
        for _ in range(300):
            if ctx.is_cancelled():
                break
            time.sleep(0.01)
        return 1

    s = QueueScheduler(q, concurrency=1)
    s.start()
    s.stop()
    s.start()
    try:
        names = {th.name for th in s._support if th.is_alive()}
        assert {"ferroq-monitor", "ferroq-cleanup", "ferroq-listen"} <= names
        with pytest.raises(ferroq.TaskTimeoutError):
            slow.send().result(timeout=10)
    finally:
        s.stop()


EXIT_SCRIPTS = {
    "scheduler left running": """
import sys, time
from ferroq import Queue, QueueScheduler
q = Queue(sys.argv[1])

@q.task
def one() -> int:
    return 1

s = QueueScheduler(q, concurrency=2).start()
assert one.send().result(timeout=10) == 1
time.sleep(0.5)  # the loops are back in their native waits
""",
    "daemon thread waiting forever": """
import sys, threading, time
from ferroq import Queue
q = Queue(sys.argv[1])

@q.task
def never() -> None:
    return None

h = never.send()
threading.Thread(target=lambda: h.result(timeout=float("inf")), daemon=True).start()
time.sleep(0.3)
""",
}


@pytest.mark.parametrize("script", EXIT_SCRIPTS, ids=list(EXIT_SCRIPTS))
def test_exiting_without_stop_or_close_is_clean(tmp_path: Path, script: str) -> None:
    """Interpreter exit while ferroq threads sit in native waits: the
    process used to abort (SIGABRT, "FATAL: exception not rethrown")."""
    path = tmp_path / "s.py"
    path.write_text(EXIT_SCRIPTS[script])
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, str(path), str(tmp_path / "store")],
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "FATAL" not in out.stderr
