"""ferroq.qt.QtScheduler on a real Qt application, headless (the offscreen
platform): callbacks, results and status changes arrive on the GUI thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="needs pip install 'ferroq[qt]'")

import ferroq  # noqa: E402
from conftest import ROOT, store_url  # noqa: E402
from ferroq import Queue, QueueScheduler  # noqa: E402
from ferroq.qt import QtScheduler  # noqa: E402


@pytest.fixture(scope="module")
def app() -> Any:
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture
def q(tmp_path: Path) -> Iterator[Queue]:
    queue = Queue(store_url("sqlite-1", tmp_path))
    yield queue
    queue.close()


def spin(app: Any, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Runs the GUI thread's event loop until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting on the Qt event loop")
        app.processEvents()
        time.sleep(0.005)


def test_callbacks_results_and_moves_arrive_on_the_gui_thread(app: Any, q: Queue) -> None:
    @q.task
    def square(x: int) -> int:
        return x * x

    @q.task
    def broken() -> None:
        raise KeyError("no such row")

    gui = threading.current_thread()
    seen: list[tuple[str, Any, bool]] = []

    def note(kind: str, value: Any) -> None:
        seen.append((kind, value, threading.current_thread() is gui))

    qs = QtScheduler(q, concurrency=2)
    qs.succeeded.connect(lambda h, result: note("succeeded", (h.id, result)))
    qs.failed.connect(lambda h, error: note("failed", (h.id, type(error))))
    qs.status_changed.connect(lambda tid, old, new: note("moved", (tid, old, new)))
    qs.start()
    try:
        ok = qs.send(square, 7, callback=lambda h: note("callback", h.result(timeout=0)))
        bad = qs.send(broken, callback=lambda h: note("callback", h.status()))
        spin(app, lambda: sum(kind == "callback" for kind, _, _ in seen) == 2)
        spin(app, lambda: ("moved", (bad.id, "running", "failed"), True) in seen)
    finally:
        qs.stop()
    assert all(on_gui for _, _, on_gui in seen), seen
    assert ("succeeded", (ok.id, 49), True) in seen
    assert ("failed", (bad.id, KeyError), True) in seen
    assert ("callback", 49, True) in seen and ("callback", "failed", True) in seen
    moves = [v for kind, v, _ in seen if kind == "moved" and v[0] == ok.id]
    assert moves == [(ok.id, "queued", "running"), (ok.id, "running", "done")]
    # The callbacks that ran are recorded on the tasks.
    for h in (ok, bad):
        record = q.get(h.id)
        assert record is not None and "callback_delivered_at" in record.metadata


def test_reports_on_tasks_run_elsewhere(app: Any, q: Queue) -> None:
    @q.task
    def echo(x: str) -> str:
        return x

    gui = threading.current_thread()
    threads: list[bool] = []
    moves: list[tuple[int, str, str]] = []
    qs = QtScheduler(q, run_tasks=False)
    assert qs.scheduler is None
    qs.status_changed.connect(lambda tid, old, new: moves.append((tid, old, new)))
    qs.start()
    try:
        h = qs.send(
            echo, "hi", callback=lambda h: threads.append(threading.current_thread() is gui)
        )
        # Another scheduler runs it (as a worker elsewhere would); moves come from the feed.
        with QueueScheduler(q, queues=["default"]):
            spin(app, lambda: bool(threads) and (h.id, "running", "done") in moves)
    finally:
        qs.stop()
    assert threads == [True]
    assert (h.id, "queued", "running") in moves


def test_needs_an_application_and_rejects_bad_input(app: Any, q: Queue) -> None:
    with pytest.raises(ferroq.InvalidArgumentError, match="run_tasks=True"):
        QtScheduler(q, run_tasks=False, concurrency=2)
    qs = QtScheduler(q)
    with pytest.raises(ferroq.InvalidArgumentError, match="callable"):
        qs.watch(q.handle(1), callback="not a function")  # type: ignore[arg-type]
    qs.start()
    with pytest.raises(ferroq.InvalidArgumentError, match="already started"):
        qs.start()
    qs.stop()
    assert not qs.running
    # Without a QApplication (a fresh interpreter): a clear error, not a crash.
    code = (
        "import ferroq, sys\n"
        "from ferroq.qt import QtScheduler\n"
        "try:\n"
        "    QtScheduler(ferroq.Queue())\n"
        "except ferroq.InvalidArgumentError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "create the QApplication first" in out.stdout


def test_the_example_app_runs_offscreen(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "qt_app.py"), "--offscreen", "--seconds", "1",
         "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "callbacks: 3, off the GUI thread: 0" in out.stdout
