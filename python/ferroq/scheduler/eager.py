"""Eager runs: tasks executed in the calling thread, through the same
claim → run → record steps a worker's thread loop takes (this loop *is* a
:class:`~ferroq.scheduler.task_loop.ThreadTaskLoop`, ticked by hand).

Used by eager mode (``Queue(..., eager=True)``, ``ferroq.testing.eager()``:
a send runs its task before it returns) and by
``ferroq.testing.run_until_empty``. The differences from a worker are the
ones a caller's thread imposes, each on purpose:

* a failed attempt with attempts left is retried at once, in the same call
  (no sleeping through the backoff) — unless the store runs on a manual
  clock, where the retry waits for its backoff on that clock like any
  delayed task;
* a soft timeout is judged when the attempt returns (nothing can interrupt
  the caller's own thread): an attempt that ran past it is recorded as
  timed out, as the monitor would have recorded it;
* no lease keeper runs: the claim's lease is long instead.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Optional

from .. import _connection
from ..resources import default_probe
from ._state import WorkerState
from .execute import Outcome, execute_sync, timeout_outcome
from .task_loop import ThreadTaskLoop

if TYPE_CHECKING:
    from .. import _core
    from .._connection import Connection
    from .inflight import InFlight

__all__ = ["EagerLoop", "EagerRunner"]

# An eager attempt holds its claim this long (no keeper renews it): longer
# than any task a test runs in its caller's thread.
_EAGER_LEASE_MS = 3_600_000


class EagerLoop(ThreadTaskLoop):
    """A thread task loop driven by its caller, one task per :meth:`tick`."""

    def __init__(self, state: WorkerState, queues: list[str], retry_at_once: bool) -> None:
        super().__init__(state, queues)
        self.retry_at_once = retry_at_once

    def batch_limit(self) -> int:
        """One task per claim: the caller decides when to stop."""
        return 1

    def record(self, t: _core.Task, item: InFlight, outcome: Outcome) -> None:
        """Stores the outcome as a worker would; a retry runs at once unless
        the store's clock is manual."""
        if self.retry_at_once and outcome.error is not None and outcome.retry != "never":
            outcome = Outcome(error=outcome.error, retry=0)
        super().record(t, item, outcome)

    def run_one(self, t: _core.Task) -> None:
        """Runs one claimed task here; an attempt past its timeout is
        recorded as timed out (the monitor's verdict, given late)."""
        begun = self.begin(t)
        if begun is None:
            return
        item, fn = begun
        ctx = self.context(t, item)
        started = time.monotonic()
        outcome = execute_sync(fn, t.payload, ctx)
        timeout = fn.defaults.timeout
        if timeout is not None and time.monotonic() - started > timeout:
            outcome = timeout_outcome(t.id, t.name)
        self.record(t, item, outcome)


class EagerRunner:
    """Runs a store's tasks in the calling thread, as one worker of its own
    (named ``eager:host:pid:random``; never registered as a worker)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state = WorkerState(
            conn,
            worker_id=f"eager:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            concurrency=1,
            lease_ms=_EAGER_LEASE_MS,
            batch_size=1,
            queues=None,
            hooks=[],
            probe=default_probe,
        )

    def loop(self, queues: list[str]) -> EagerLoop:
        """A loop over ``queues`` (a fresh one per call, so a task that sends
        another eagerly runs it in a loop of its own)."""
        # The hooks of this queue and of every open eager() block, as of now.
        self.state.hooks = [*self.conn.eager_hooks, *_connection.eager_hooks]
        return EagerLoop(self.state, queues, retry_at_once=self.conn.clock is None)

    def run_task(self, task_id: int, queue: str) -> None:
        """Runs ready tasks of ``queue`` until task ``task_id`` is no longer
        ready (finished, or waiting for a later run_at): normally just that
        task and its retries; a ready task ahead of it in the queue's order
        runs first, as it would at a worker."""
        store = self.state.store
        loop = self.loop([queue])
        while True:
            t = store.get(task_id)
            if t is None or t.status != "queued" or t.run_at > store.now_ms():
                return
            if loop.tick() == 0:
                return  # not claimable here (a limit, or resources it requires)

    def run_ready(self, queues: list[str], deadline: Optional[float]) -> tuple[int, bool]:
        """Runs ready tasks of ``queues`` until none is ready or the
        monotonic ``deadline`` passes; returns how many attempts ran and
        whether none is ready any more."""
        loop = self.loop(queues)
        ran = 0
        while True:
            n = loop.tick()
            if n == 0:
                return ran, True
            ran += n
            if deadline is not None and time.monotonic() >= deadline:
                return ran, False
