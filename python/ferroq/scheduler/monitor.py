"""The monitor loop: keeps the scheduler's leases alive, passes
cancellation requests to running tasks, and enforces soft timeouts of
thread-mode tasks."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .execute import timeout_outcome

if TYPE_CHECKING:
    from ._state import WorkerState
    from .inflight import InFlight

__all__ = ["MonitorLoop"]

log = logging.getLogger("ferroq.monitor")

# Granularity of soft timeouts.
_TICK_S = 0.05
# How often running tasks are checked for a cancellation request.
_CANCEL_POLL_S = 0.2


class MonitorLoop:
    """Heartbeats, cancellation and soft timeouts for one scheduler."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._stopped = threading.Event()
        self._next_heartbeat = 0.0
        self._next_cancel_poll = 0.0

    def tick(self, now: float) -> None:
        """One step at monotonic time ``now``: heartbeat when due, deliver
        cancellations when due, then time out attempts past their deadline."""
        s = self.state
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + s.lease_ms / 3000.0
            self.heartbeat()
        if now >= self._next_cancel_poll:
            self._next_cancel_poll = now + _CANCEL_POLL_S
            self.poll_cancellations()
        with s.lock:
            overdue = [
                item
                for item in s.claimed.values()
                if item.deadline is not None and now >= item.deadline and not item.abandoned
            ]
            for item in overdue:
                item.abandoned = True
                s.claimed.pop(item.task.id, None)
        for item in overdue:
            t = item.task
            outcome = timeout_outcome(t.id, t.name)
            try:
                status = s.store.fail(t.id, s.worker_id, outcome.error or "", outcome.retry)
            except Exception as e:
                log.warning("could not record timeout of task %s: %s", t.id, e)
                continue
            if item.ctx is not None:
                item.ctx._flag_cancelled()
            s.emit(t.id, "running", status)

    def heartbeat(self) -> None:
        """Extends the leases of every claimed task; flags those asked to cancel."""
        s = self.state
        with s.lock:
            ids = list(s.claimed)
        if not ids:
            return
        for task_id, held, cancel in s.store.heartbeat(ids, s.worker_id, s.lease_ms):
            item = s.claimed.get(task_id)
            if item is None:
                continue
            if not held:
                log.warning("lease of task %s lost; its outcome will be dropped", task_id)
                item.abandoned = True
            elif cancel:
                self._cancel(item)

    def poll_cancellations(self) -> None:
        """Reads the cancel flags of the tasks this scheduler is running."""
        s = self.state
        with s.lock:
            started = [i for i in s.claimed.values() if i.started is not None]
        if not started:
            return
        for item, t in zip(started, s.store.get_many([i.task.id for i in started])):
            if t is not None and t.cancel_requested and not item.cancel_requested:
                self._cancel(item)

    @staticmethod
    def _cancel(item: InFlight) -> None:
        item.cancel_requested = True
        if item.ctx is not None:
            item.ctx._flag_cancelled()
        if item.on_cancel is not None:
            item.on_cancel()

    def run(self) -> None:
        """Ticks until stopped."""
        while not self._stopped.wait(_TICK_S):
            try:
                self.tick(time.monotonic())
            except Exception:
                if self.state.store.closed:
                    return
                log.exception("monitor error; retrying")

    def stop(self) -> None:
        """Stops the loop."""
        self._stopped.set()
