"""A Qt window whose work runs on ferroq: each click sends thumbnail jobs to
a SQLite store; worker threads run them; results, status changes and
callbacks reach the window on the GUI thread, so the slots update widgets
directly.

Run: python examples/qt_app.py            (needs pip install 'ferroq[qt]')
Headless, for a quick check: python examples/qt_app.py --offscreen --seconds 1
(sends a few jobs by itself, quits after that many seconds and prints what
the window saw).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    """Builds the window and runs the application; returns its exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="the store directory (default: a new temporary one)")
    parser.add_argument("--offscreen", action="store_true", help="no display needed")
    parser.add_argument("--seconds", type=float, help="send jobs by itself, quit after this")
    args = parser.parse_args(argv)
    if args.offscreen:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"

    # Imported after the platform is chosen.
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import (
        QApplication,
        QLabel,
        QListWidget,
        QPushButton,
        QVBoxLayout,
        QWidget,
    )

    from ferroq import Queue
    from ferroq.qt import QtScheduler

    store = args.store or str(Path(tempfile.mkdtemp()) / "qt_app.db")
    queue = Queue(store)

    @queue.task(name="qt_app.thumbnail")
    def thumbnail(image: str, size: int) -> str:
        """Pretends to render a thumbnail (runs on a worker thread)."""
        return f"{image} at {size}px"

    app = QApplication(sys.argv[:1])
    window = QWidget()
    window.setWindowTitle("ferroq + Qt")
    status = QLabel("idle")
    log = QListWidget()
    button = QPushButton("Render 3 thumbnails")
    layout = QVBoxLayout(window)
    for widget in (button, status, log):
        layout.addWidget(widget)

    scheduler = QtScheduler(queue, concurrency=2)
    seen = {"done": 0, "off_gui_thread": 0, "moves": 0}
    gui = threading.current_thread()

    def on_done(handle: Any) -> None:
        # A callback: runs on the GUI thread, so it may touch widgets.
        seen["done"] += 1
        seen["off_gui_thread"] += threading.current_thread() is not gui
        status.setText(f"{seen['done']} done; last: {handle.result(timeout=0)}")

    def on_move(task_id: int, old: str, new: str) -> None:
        seen["moves"] += 1
        log.addItem(f"task {task_id}: {old} -> {new}")

    def on_failed(handle: Any, error: BaseException) -> None:
        log.addItem(f"task {handle.id} failed: {error}")

    scheduler.status_changed.connect(on_move)
    scheduler.failed.connect(on_failed)

    def render() -> None:
        for i in range(3):
            scheduler.send(thumbnail, f"photo-{i}.png", 128, callback=on_done)

    button.clicked.connect(render)
    window.show()
    scheduler.start()
    if args.seconds is not None:
        QTimer.singleShot(0, button.click)
        QTimer.singleShot(int(args.seconds * 1000), app.quit)
    code = app.exec()
    scheduler.stop()
    queue.close()
    print(
        f"callbacks: {seen['done']}, off the GUI thread: {seen['off_gui_thread']}, "
        f"status changes seen: {seen['moves']}"
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
