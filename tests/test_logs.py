"""Logs per task: one INFO line per finished attempt, the traceback at
WARNING (will retry) and ERROR (failed for good), a loud ERROR naming the
module for a task the worker does not know, the task's fields on every
record, and ``ferroq.logs.configure`` in a real process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import python_env, wait_for
from ferroq import Backoff, InvalidArgumentError, Queue, QueueScheduler, current_task, logs

FIELDS = {"task_id", "task_name", "queue", "attempt", "max_attempts", "worker", "outcome",
          "duration_ms"}


def task_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ferroq.task"]


def test_a_line_per_finished_attempt(queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    @queue.task(name="logs.ok")
    def ok(i: int) -> int:
        return i

    @queue.task(name="logs.flaky", retries=1, backoff=Backoff.fixed(0))
    def flaky() -> None:
        raise ValueError("not today")

    caplog.set_level(logging.INFO, logger="ferroq.task")
    h_ok, h_bad = ok.send(7), flaky.send()
    ghost = queue._store.enqueue("default", "some.module:gone", b"J[[],{}]")[0]
    with QueueScheduler(queue, concurrency=1):
        wait_for(
            lambda: len([r for r in task_records(caplog) if r.levelno >= logging.INFO]) >= 4,
            30,
            "four task lines",
        )
    assert h_ok.result(timeout=5) == 7
    by_task: dict[int, list[logging.LogRecord]] = {}
    for r in task_records(caplog):
        by_task.setdefault(r.task_id, []).append(r)

    [done] = by_task[h_ok.id]
    assert done.levelno == logging.INFO
    assert FIELDS <= set(done.__dict__)
    assert (done.task_name, done.queue, done.attempt, done.outcome) == (
        "logs.ok", "default", 1, "done"
    )
    assert done.duration_ms >= 0
    assert done.getMessage().startswith(f"task {h_ok.id} logs.ok done in ")
    assert done.exc_text is None

    retried, failed = by_task[h_bad.id]
    assert (retried.levelno, retried.outcome, retried.attempt) == (logging.WARNING, "retried", 1)
    assert (failed.levelno, failed.outcome, failed.attempt) == (logging.ERROR, "failed", 2)
    for r in (retried, failed):
        assert r.error_type == "builtins.ValueError" and r.error == "not today"
        # The traceback of the attempt, where any formatter prints it.
        assert "Traceback" in r.exc_text and "ValueError: not today" in r.exc_text
        assert "ValueError: not today" in logging.Formatter().format(r)

    [unknown] = by_task[ghost]
    assert unknown.levelno == logging.ERROR and unknown.outcome == "unknown"
    assert unknown.task_module == "some.module"
    assert "import 'some.module'" in unknown.getMessage()


def test_the_json_formatter_writes_every_field(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    @queue.task(name="logs.broken", retries=0)
    def broken() -> None:
        raise KeyError("missing")

    caplog.set_level(logging.INFO, logger="ferroq.task")
    h = broken.send()
    with QueueScheduler(queue, concurrency=1):
        wait_for(lambda: len(task_records(caplog)) >= 1, 30, "the failure line")
    [record] = task_records(caplog)
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["level"] == "ERROR" and doc["logger"] == "ferroq.task"
    assert doc["task_id"] == h.id and doc["task_name"] == "logs.broken"
    assert doc["outcome"] == "failed" and doc["error_type"] == "builtins.KeyError"
    assert "KeyError: 'missing'" in doc["traceback"]
    assert "exception" not in doc  # the traceback is there once, as a field
    assert doc["time"].endswith("+00:00")
    text = logs.TextFormatter().format(record)
    assert text.splitlines()[0].endswith(doc["message"])
    assert "KeyError: 'missing'" in text


def test_the_json_formatter_keeps_exceptions_and_odd_values() -> None:
    try:
        raise OSError("disk")
    except OSError:
        record = logging.getLogger("ferroq.worker").makeRecord(
            "ferroq.worker", logging.ERROR, __file__, 1, "loop error %s", ("x",),
            sys.exc_info(), extra={"worker": "w1", "path": Path("/tmp/a")},
        )
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["message"] == "loop error x" and doc["worker"] == "w1"
    assert doc["path"] == "/tmp/a"
    assert "OSError: disk" in doc["exception"]


def test_configure_refuses_bad_levels_and_formats() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    with pytest.raises(InvalidArgumentError, match="log level"):
        logs.configure("LOUD")
    with pytest.raises(InvalidArgumentError, match="log format"):
        logs.configure("INFO", "xml")  # type: ignore[arg-type]
    assert (list(root.handlers), root.level) == before


CONFIGURED = textwrap.dedent(
    """
    import logging, sys
    from ferroq import Backoff, Queue, QueueScheduler, logs

    logs.configure("debug", "text")
    logs.configure(sys.argv[2].upper(), "json")  # replaces the first
    assert len(logging.getLogger().handlers) == 1
    q = Queue(sys.argv[1])

    @q.task(name="cfg.work", retries=0)
    def work(i):
        if i == 2:
            raise RuntimeError("two")
        logging.getLogger("user.code").info("working on %d", i)
        return i

    handles = [work.send(i) for i in range(3)]
    with QueueScheduler(q, concurrency=1):
        for h in handles:
            try:
                h.result(timeout=30)
            except RuntimeError:
                pass
    q.close()
    """
)


@pytest.mark.parametrize("level", ["info", "warning"])
def test_configure_in_a_worker_process(tmp_path: Path, level: str) -> None:
    script = tmp_path / "configured.py"
    script.write_text(CONFIGURED)
    done = subprocess.run(
        [sys.executable, str(script), f"sqlite://{tmp_path}/s", level],
        env=python_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    task_lines = [d for d in lines if d["logger"] == "ferroq.task"]
    if level == "warning":
        # Only the failure, with its traceback.
        assert [(d["level"], d["outcome"]) for d in task_lines] == [("ERROR", "failed")]
        assert not [d for d in lines if d["logger"] == "user.code"]
    else:
        assert sorted(d["outcome"] for d in task_lines) == ["done", "done", "failed"]
        # The task's own logging comes out the same way.
        assert sorted(d["message"] for d in lines if d["logger"] == "user.code") == [
            "working on 0", "working on 1",
        ]
    failed = [d for d in task_lines if d["outcome"] == "failed"][0]
    assert failed["error_type"] == "builtins.RuntimeError"
    assert "RuntimeError: two" in failed["traceback"]
    assert failed["worker"] and failed["attempt"] == 1


def test_timeouts_and_cancellations_are_logged(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    @queue.task(name="logs.overdue", retries=0, timeout=0.2)
    def overdue() -> None:
        while not current_task().is_cancelled():
            time.sleep(0.01)

    started = threading.Event()

    @queue.task(name="logs.patient", retries=0)
    def patient() -> None:
        started.set()
        while True:
            current_task().raise_if_cancelled()
            time.sleep(0.01)

    caplog.set_level(logging.INFO, logger="ferroq.task")
    with QueueScheduler(queue, concurrency=2):
        late = overdue.send()
        waiting = patient.send()
        assert started.wait(30)
        waiting.cancel()
        wait_for(lambda: len(task_records(caplog)) >= 2, 30, "both lines")
    by_id = {r.task_id: r for r in task_records(caplog)}
    timed_out = by_id[late.id]
    assert (timed_out.levelno, timed_out.outcome) == (logging.ERROR, "failed")
    assert timed_out.error_type == "ferroq._errors.TaskTimeoutError"
    assert timed_out.duration_ms >= 200
    cancelled = by_id[waiting.id]
    assert (cancelled.levelno, cancelled.outcome) == (logging.INFO, "cancelled")
