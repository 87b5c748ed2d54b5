"""The periodic loop: sends the runs of periodic tasks when their ticks come.

Each scheduler runs one, for the periodic tasks it serves (their queue is
among its queues, and they are bound to its queue or to none). Several
schedulers, in one process or on many hosts, send the same ticks: the key
of a run (:func:`ferroq.periodic.tick_key`) makes every send after the
first a no-op of the store, so each tick is stored once. Ticks are read on
the store's clock, so a manual clock drives the loop in tests.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Optional

from ..options import SendOptions
from ..periodic import Schedule, plan, read_mark, scheduled, tick_iso, tick_key, write_mark
from ..task_function import TaskCall, TaskFunction

if TYPE_CHECKING:
    from ._state import WorkerState

__all__ = ["PeriodicLoop"]

log = logging.getLogger("ferroq.periodic")

# Longest wait between looks (seconds): a schedule registered while the
# loop waits, or a manual clock moved by a test, is seen this soon.
_MAX_WAIT_S = 1.0
# Shortest wait: the loop never spins.
_MIN_WAIT_S = 0.01


class PeriodicLoop:
    """Sends due runs of the periodic tasks a scheduler serves."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._stopped = threading.Event()
        # Per task name: no tick of it is due before this (store ms), so a
        # look at a schedule that is not due reads nothing from the store.
        self._next_due: dict[str, int] = {}

    def served(self) -> list[tuple[TaskFunction[Any, Any], Schedule]]:
        """The periodic tasks this loop sends."""
        queues = set(self.state.queues)
        return [(fn, s) for fn, s in scheduled(self.state.conn) if fn.defaults.queue in queues]

    def tick(self, now_ms: int) -> int:
        """One step at store time ``now_ms``: sends the runs due of every
        schedule served, then moves their marks; returns how many runs were
        sent (by this loop: a run another scheduler stored first counts too,
        its send here a no-op)."""
        sent = 0
        for fn, schedule in self.served():
            due = self._next_due.get(fn.name)
            if due is not None and now_ms < due:
                continue
            try:
                sent += self._run(fn, schedule, now_ms)
            except Exception:
                if self.state.store.closed:
                    raise
                log.exception("periodic task %r: could not send its runs; retrying", fn.name)
                continue
            nxt = schedule.next_after(now_ms)
            self._next_due[fn.name] = nxt if nxt is not None else 2**62
        return sent

    def _run(self, fn: TaskFunction[Any, Any], schedule: Schedule, now_ms: int) -> int:
        conn = self.state.conn
        mark = read_mark(conn, fn.name)
        planned = plan(schedule, mark, now_ms)
        for tick_ms, late in planned.runs:
            metadata: dict[str, Any] = {"periodic": fn.name, "tick": tick_iso(tick_ms)}
            if late:
                metadata["catch_up"] = schedule.catch_up
            call: TaskCall[Any, Any] = TaskCall(
                fn, SendOptions(key=tick_key(fn.name, tick_ms), metadata=metadata)
            )
            call.send_to(conn)
        # Marks move after the sends: a crash in between sends the same
        # ticks again, which their keys make no-ops.
        if planned.runs:
            write_mark(conn, fn.name, planned.runs[-1][0], "sent")
        if planned.mark is not None:
            write_mark(conn, fn.name, planned.mark)
        if planned.runs:
            log.info(
                "periodic task %r: sent %d run(s), last for %s",
                fn.name,
                len(planned.runs),
                tick_key(fn.name, planned.runs[-1][0]),
            )
        return len(planned.runs)

    def wait_s(self, now_ms: int) -> float:
        """Seconds until the next tick of a schedule served (bounded)."""
        upcoming = [self._next_due.get(fn.name, now_ms) for fn, _ in self.served()]
        if not upcoming:
            return _MAX_WAIT_S
        return min(_MAX_WAIT_S, max(_MIN_WAIT_S, (min(upcoming) - now_ms) / 1000))

    def run(self) -> None:
        """Ticks until stopped, waking at the next tick due."""
        store = self.state.store
        while not self._stopped.is_set():
            wait: Optional[float] = None
            try:
                now = store.now_ms()
                self.tick(now)
                wait = self.wait_s(store.now_ms())
            except Exception:
                if self._stopped.is_set() or store.closed:
                    return
                log.exception("periodic loop error; retrying")
            self._stopped.wait(_MAX_WAIT_S if wait is None else wait)

    def stop(self) -> None:
        """Stops the loop (it ends its current wait at once)."""
        self._stopped.set()
