"""The receive loop: calls the callbacks given at send time, in the sending
process, once their tasks have finished."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from ._loops import run_on_changes, wake_waiters

if TYPE_CHECKING:
    from . import _core
    from ._types import HasId

__all__ = ["ReceiveLoop", "deliver"]

log = logging.getLogger("ferroq.receive")


def deliver(handle: HasId, callback: Callable[[Any], None]) -> None:
    """Calls ``callback(handle)``; an exception it raises is logged, not
    propagated (the sender's code is not the place to fail)."""
    try:
        callback(handle)
    except Exception:
        log.exception("callback for task %s raised", handle.id)


class ReceiveLoop:
    """Watches sent tasks and calls their callbacks once they finish."""

    def __init__(self, store: _core.Store) -> None:
        self.store = store
        self._pending: dict[int, list[tuple[HasId, Callable[[Any], None]]]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, handle: HasId, callback: Callable[[Any], None]) -> None:
        """Calls ``callback(handle)`` once the task has finished."""
        with self._lock:
            self._pending.setdefault(handle.id, []).append((handle, callback))

    def tick(self) -> int:
        """One step: looks up every watched task once and calls the callbacks
        of those finished. Returns how many callbacks ran."""
        with self._lock:
            ids = list(self._pending)
        if not ids:
            return 0
        ran = 0
        delivered: list[int] = []
        for task in self.store.get_many(ids):
            if task is None or task.status in ("queued", "running"):
                continue
            with self._lock:
                waiting = self._pending.pop(task.id, [])
            for handle, callback in waiting:
                ran += 1
                deliver(handle, callback)
            if waiting:
                delivered.append(task.id)
        if delivered:
            # Recorded in the store's event feed ("delivered"): the
            # callback of these tasks ran.
            try:
                self.store.ack_callbacks(delivered)
            except Exception as e:
                log.warning("callback delivery of %d task(s) not recorded: %s", len(delivered), e)
        return ran

    def run(self) -> None:
        """Ticks until stopped, waking when the store changes."""
        run_on_changes(self.store, self._stopped, self.tick, log, "receive loop")

    def start(self) -> None:
        """Starts the loop on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="ferroq-receive", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the loop, first delivering callbacks of tasks already finished."""
        try:
            self.tick()
        except Exception:
            pass
        self._stopped.set()
        if self._thread is not None:
            wake_waiters(self.store)
            self._thread.join(timeout=2.0)
