"""The listen loop: runs the listeners registered for a key once per
change of that key's listen data, in order of change, on the loop's own
thread (never blocking task execution)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Optional

from .._loops import IDLE_WAIT_S
from ..listen import any_listeners, listeners_for

if TYPE_CHECKING:
    from ._state import WorkerState

__all__ = ["ListenLoop"]

log = logging.getLogger("ferroq.listen")



class ListenLoop:
    """Follows the store's listen data and dispatches changes to listeners."""

    def __init__(
        self, state: WorkerState, replay: bool = False, consumer: Optional[str] = None
    ) -> None:
        self.state = state
        self._stopped = threading.Event()
        #: Saves the last handled version in the store under this name.
        self.consumer = consumer
        saved = None if consumer is None else state.store.listen_cursor_get(consumer)
        # A named consumer resumes after the last change it handled (seeing
        # changes made while it was down); otherwise listeners see changes
        # made after the scheduler started, unless asked to replay.
        if saved is not None:
            self.since = saved
        else:
            self.since = 0 if replay else state.store.listen_head()

    def tick(self) -> int:
        """One step: dispatches every change after ``since``; returns how many ran."""
        ran = 0
        start = self.since
        for version, key, value, _at in self.state.store.listen_changes(self.since, 1000):
            self.since = version
            fns = listeners_for(key, self.state.conn)
            if not fns:
                continue
            try:
                decoded = self.state.conn.decode(value)
            except Exception:
                log.exception("listen data for %r cannot be decoded", key)
                continue
            for fn in fns:
                ran += 1
                try:
                    fn(decoded)
                except Exception:
                    log.exception("listener %r for %r raised", fn, key)
        if self.consumer is not None and self.since != start:
            self.state.store.listen_cursor_set(self.consumer, self.since)
        return ran

    def run(self) -> None:
        """Ticks until stopped, waking when the listen data changes (the
        store waits for that itself: commits of tasks do not wake this
        thread) and at least every half second."""
        store = self.state.store
        while not self._stopped.is_set():
            try:
                self.tick()
                if self._stopped.is_set():
                    return
                if any_listeners(self.state.conn):
                    store.wait_listen(self.since, IDLE_WAIT_S)
                else:
                    # Nobody listens (yet): no need to wake for each change;
                    # a listener registered later runs within this wait.
                    self._stopped.wait(IDLE_WAIT_S)
            except Exception:
                if self._stopped.is_set() or store.closed:
                    return
                log.exception("listen loop error; retrying")
                self._stopped.wait(IDLE_WAIT_S)

    def signal_stop(self) -> None:
        """Tells the loop to stop (the scheduler then wakes its wait)."""
        self._stopped.set()

    def stop(self) -> None:
        """Stops the loop."""
        self._stopped.set()
