"""``QueueScheduler``: runs tasks in a long-lived process.

It owns a few loops, one file each: the task loop (one per worker thread:
claim a batch, run it, store the outcomes), the monitor loop (heartbeats,
soft timeouts, cancellation flags), and uses the queue's receive loop for
callbacks. Each loop has a ``tick()`` step that tests can drive directly.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..task import registered
from .inflight import InFlight
from .monitor import MonitorLoop
from .task_loop import TaskLoop

if TYPE_CHECKING:
    from ..queue import Queue

__all__ = ["QueueScheduler", "StatusHook"]

log = logging.getLogger("ferroq.scheduler")

StatusHook = Callable[[int, str, str], None]


class QueueScheduler:
    """Claims and runs tasks from ``queue`` on ``concurrency`` threads.

    ``queues`` names the queues to serve (default: ``"default"`` and every
    queue a registered task uses). ``lease`` is how long a claim stays
    valid without a heartbeat (heartbeats run every ``lease / 3``);
    ``batch_size`` caps how many tasks one thread claims at once (it claims
    about 50 ms of work, one at a time for slow tasks).

    Use ``start()`` / ``stop(grace)``, a ``with`` block, or
    ``run_forever()``, which stops gracefully on SIGINT or SIGTERM.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        concurrency: int = 4,
        queues: Optional[Sequence[str]] = None,
        lease: float = 30.0,
        batch_size: int = 32,
        hooks: Sequence[StatusHook] = (),
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if lease <= 0.1:
            raise ValueError(f"lease must be > 0.1 seconds, got {lease}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.queue = queue
        self.store = queue.store
        self.concurrency = concurrency
        self.lease_ms = int(lease * 1000)
        self.batch_size = batch_size
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._queues = list(queues) if queues else None
        self.claimed: dict[int, InFlight] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._hooks: list[StatusHook] = list(hooks)
        self._threads: list[threading.Thread] = []
        self.loops: list[TaskLoop] = []
        self.monitor = MonitorLoop(self)
        self._started = False

    @property
    def queues(self) -> list[str]:
        """The queue names this scheduler serves."""
        if self._queues is None:
            names = {"default"} | {t.defaults.queue for t in registered().values()}
            return sorted(names)
        return list(self._queues)

    def on_status_change(self, hook: StatusHook) -> StatusHook:
        """Registers ``hook(task_id, old_status, new_status)``, called for every
        move this scheduler makes; usable as a decorator."""
        self._hooks.append(hook)
        return hook

    def emit(self, task_id: int, old: str, new: str) -> None:
        """Calls the status hooks; a hook that raises is logged, not propagated."""
        for hook in self._hooks:
            try:
                hook(task_id, old, new)
            except Exception:
                log.exception("status hook %r raised", hook)

    def start(self) -> QueueScheduler:
        """Starts the worker threads and the monitor; returns self."""
        if self._started:
            raise RuntimeError("scheduler already started")
        self._started = True
        self.stopping.clear()
        queues = self.queues
        self.loops = [TaskLoop(self, queues) for _ in range(self.concurrency)]
        self._threads = [
            threading.Thread(target=loop.run, name=f"ferroq-task-{i}", daemon=True)
            for i, loop in enumerate(self.loops)
        ]
        self._threads.append(
            threading.Thread(target=self.monitor.run, name="ferroq-monitor", daemon=True)
        )
        for th in self._threads:
            th.start()
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stops gracefully: running tasks get ``grace`` seconds to finish,
        claimed tasks not yet started go back to the queue, and tasks still
        running after the grace period are released for another worker."""
        if not self._started:
            return
        self.stopping.set()
        deadline = time.monotonic() + max(0.0, grace)
        workers = self._threads[:-1]
        for th in workers:
            th.join(max(0.0, deadline - time.monotonic()))
        stuck = [th.name for th in workers if th.is_alive()]
        if stuck:
            with self.lock:
                leftovers = list(self.claimed.values())
                for item in leftovers:
                    item.abandoned = True
                self.claimed.clear()
            if leftovers:
                log.warning(
                    "%d task(s) still running after %.1fs grace; releasing them",
                    len(leftovers),
                    grace,
                )
                ids = [item.task.id for item in leftovers]
                errors = self.store.release(ids, self.worker_id)
                for task_id, err in zip(ids, errors):
                    if err is None:
                        self.emit(task_id, "running", "queued")
        self.monitor.stop()
        self._threads[-1].join(timeout=5.0)
        self._started = False

    def run_forever(self, grace: float = 10.0) -> None:
        """Runs until SIGINT or SIGTERM, then stops gracefully."""
        stop = threading.Event()

        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            log.info("signal %s: stopping", signum)
            stop.set()

        previous = {
            sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.start()
            while not stop.wait(0.5):
                pass
        finally:
            self.stop(grace)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> QueueScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<QueueScheduler {self.worker_id} concurrency={self.concurrency}>"
