"""The monitor loop: keeps the scheduler's leases alive, passes
cancellation requests to running tasks, and enforces soft timeouts."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .._errors import TaskTimeoutError
from .task_loop import error_text

if TYPE_CHECKING:
    from . import QueueScheduler

__all__ = ["MonitorLoop"]

log = logging.getLogger("ferroq.monitor")

# Granularity of soft timeouts and cancellation delivery.
_TICK_S = 0.05
# How often expired leases (of any worker) are recovered.
_RECOVER_EVERY_S = 1.0


class MonitorLoop:
    """Heartbeats, cancellation flags and soft timeouts for one scheduler."""

    def __init__(self, scheduler: QueueScheduler) -> None:
        self.s = scheduler
        self._stopped = threading.Event()
        self._next_heartbeat = 0.0
        self._next_recover = 0.0

    def tick(self, now: float) -> None:
        """One step at monotonic time ``now``: heartbeat when due, recover
        expired leases when due, then time out attempts past their deadline."""
        s = self.s
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + s.lease_ms / 3000.0
            self.heartbeat()
        if now >= self._next_recover:
            self._next_recover = now + _RECOVER_EVERY_S
            for task_id, status in s.store.recover():
                log.info("recovered task %s from an expired lease: now %s", task_id, status)
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
            exc = TaskTimeoutError(f"task {t.id} ({t.name}) ran past its timeout")
            try:
                status = s.store.fail(t.id, s.worker_id, error_text(exc, ""), "backoff")
            except Exception as e:
                log.warning("could not record timeout of task %s: %s", t.id, e)
                continue
            if item.ctx is not None:
                item.ctx._flag_cancelled()
            s.emit(t.id, "running", status)

    def heartbeat(self) -> None:
        """Extends the leases of every claimed task; flags those asked to cancel."""
        s = self.s
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
                item.cancel_requested = True
                if item.ctx is not None:
                    item.ctx._flag_cancelled()

    def run(self) -> None:
        """Ticks until stopped."""
        while not self._stopped.wait(_TICK_S):
            try:
                self.tick(time.monotonic())
            except Exception:
                if self.s.store.closed:
                    return
                log.exception("monitor error; retrying")

    def stop(self) -> None:
        """Stops the loop."""
        self._stopped.set()
