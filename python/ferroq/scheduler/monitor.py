"""The monitor loop: keeps the scheduler's leases alive, passes
cancellation requests to running tasks, and enforces soft timeouts of
thread-mode tasks.

Leases are renewed by a :class:`ferroq._core.LeaseKeeper`: a Rust thread
that needs no GIL, so a task holding the GIL in a long C call past its
lease is not run again by another worker while it still runs. This loop
only tells the keeper which tasks are claimed and acts on what it saw
(leases lost, cancellations asked for)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Optional

from .. import _core, logs
from . import _state
from .execute import timeout_outcome
from .task_loop import log_attempt, outcome_of

if TYPE_CHECKING:
    from ._state import WorkerState
    from .inflight import InFlight

__all__ = ["MonitorLoop"]

log = logging.getLogger("ferroq.monitor")

# Granularity of soft timeouts.
_TICK_S = 0.05
# How often running tasks are checked for a cancellation request.
_CANCEL_POLL_S = 0.2
# With nothing claimed the monitor has nothing to watch: it sleeps until a
# loop claims (WorkerState.busy) or this long passes.
_IDLE_S = 1.0


class MonitorLoop:
    """Heartbeats, cancellation and soft timeouts for one scheduler."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._stopped = threading.Event()
        self._next_heartbeat = 0.0
        self._next_cancel_poll = 0.0

    def _sync_keeper(self) -> Optional[_core.LeaseKeeper]:
        """Makes the keeper hold exactly the claimed tasks (loops add new
        claims themselves, at once; finished ones are taken out here). None
        once this monitor was stopped: a tick racing ``stop()`` must not
        start a keeper nobody will close."""
        s = self.state
        if self._stopped.is_set():
            return None
        keeper = s.start_keeper()
        kept = set(keeper.ids())
        with s.lock:
            ids = set(s.claimed)
        added, gone = ids - kept, kept - ids
        if added:
            keeper.add(sorted(added))
        if gone:
            keeper.remove(sorted(gone))
        return keeper

    def tick(self, now: float) -> None:
        """One step at monotonic time ``now``: heartbeat when due, deliver
        cancellations when due, then time out attempts past their deadline."""
        s = self.state
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + min(s.lease_ms / 3000.0, _CANCEL_POLL_S)
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
                log.warning(
                    "could not record timeout of task %s: %s", t.id, e,
                    extra=logs.task_fields(
                        t.id, t.name, t.queue, t.attempts, t.max_attempts, s.worker_id
                    ),
                )
                continue
            if item.ctx is not None:
                item.ctx._flag_cancelled()
            ran = now - item.started if item.started is not None else 0.0
            log_attempt(s, t, outcome_of(status), ran, outcome.error)
            meter = _state.meter
            if meter is not None:
                meter.ended(t.queue, t.name, outcome_of(status), ran)
            s.emit(t.id, "running", status)

    def heartbeat(self) -> None:
        """Keeps the leases of every claimed task (through the keeper, which
        renews them on its own thread) and acts on what its renewals saw:
        outcomes of tasks whose lease was lost are dropped, tasks asked to
        cancel are told so."""
        s = self.state
        keeper = self._sync_keeper()
        if keeper is None:
            return
        for err in keeper.errors():
            log.warning("lease renewal failed: %s", err, extra={"worker": s.worker_id})
        lost, cancel = keeper.lost(), keeper.cancel_requested()
        for task_id in lost:
            item = s.claimed.get(task_id)
            if item is not None and not item.abandoned:
                t = item.task
                log.warning(
                    "lease of task %s lost; its outcome will be dropped", task_id,
                    extra=logs.task_fields(
                        t.id, t.name, t.queue, t.attempts, t.max_attempts, s.worker_id
                    ),
                )
                item.abandoned = True
        if lost:
            # Seen and acted on: the keeper forgets them (a task that ended
            # just before a beat would otherwise stay listed for good).
            keeper.remove(lost)
        for task_id in cancel:
            item = s.claimed.get(task_id)
            if item is not None and not item.cancel_requested:
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
        s = self.state
        ticked_busy = False
        while True:
            if s.claimed or ticked_busy:
                # One more tick after the last claimed task is gone, which
                # takes it out of the lease keeper.
                ticked_busy = bool(s.claimed)
                if self._stopped.wait(_TICK_S):
                    return
            else:
                # Cleared before looking, so a claim made after the look
                # ends the wait at once.
                s.busy.clear()
                if not s.claimed:
                    s.busy.wait(_IDLE_S)
                if self._stopped.is_set():
                    return
                # Tick after the usual wait: a claim wakes this loop at most
                # once per tick however fast tasks come and go.
                ticked_busy = True
                continue
            try:
                self.tick(time.monotonic())
            except Exception:
                if self.state.store.closed:
                    return
                log.exception("monitor error; retrying", extra={"worker": self.state.worker_id})

    def signal_stop(self) -> None:
        """Tells the loop to stop (it ends its current wait at once)."""
        self._stopped.set()
        self.state.busy.set()

    def stop(self) -> None:
        """Stops the loop and the lease keeper's thread."""
        self._stopped.set()
        self.state.busy.set()
        if self.state.keeper is not None:
            self.state.keeper.close()
