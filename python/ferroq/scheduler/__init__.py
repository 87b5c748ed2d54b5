"""``QueueScheduler``: runs tasks in a long-lived process.

It owns a few loops, one file each, every one with a ``tick()`` step that
tests can drive directly:

* task loops — claim batches and run them: on threads (default), in child
  processes (hard timeouts), or on an asyncio event loop;
* the monitor — heartbeats, cancellation delivery, soft timeouts;
* the cleanup loop — worker records, recovery of dead workers' tasks and of
  expired leases, deadlines, retention;
* the listen loop — ``@listener`` functions on listen-data changes.

Callbacks given at send time are delivered by the sending queue's receive
loop.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
import time
import uuid
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Literal, Mapping, Optional, Sequence, Union

from .._checks import seconds
from .._errors import InvalidArgumentError
from .._loops import wake_waiters
from ..events import Event, EventFollower
from ..registry import registered
from ..resources import ResourceProbe, default_probe
from ._state import StatusHook, WorkerState
from .async_loop import AsyncTaskLoop
from .cleanup import CleanupIntervals, CleanupLoop
from .listen_loop import ListenLoop
from .monitor import MonitorLoop
from .process_loop import ProcessTaskLoop
from .task_loop import ClaimingLoop, ThreadTaskLoop

if TYPE_CHECKING:
    from .._connection import Connection

__all__ = ["CleanupIntervals", "Mode", "QueueScheduler", "StatusHook", "WorkerState"]

log = logging.getLogger("ferroq.scheduler")

Mode = Literal["thread", "process", "asyncio"]
_MODES = ("thread", "process", "asyncio")
# How long a move read back from the feed under this scheduler's name waits
# for the loop that made it to pass it on itself.
_OWN_MOVE_WAIT_S = 0.1
# Schedulers started and not yet stopped (stopped at interpreter exit).
_running: weakref.WeakSet[QueueScheduler] = weakref.WeakSet()


class QueueScheduler:
    """Claims and runs tasks from ``queue``.

    * ``concurrency``: worker threads (thread mode), child processes
      (process mode), or tasks in flight (asyncio mode);
    * ``queues``: queue names to serve (default: ``"default"``, every
      queue a registered task uses, and — looked for every
      ``cleanup.queues`` seconds — every queue whose next task is one
      registered here: frame batches, sends with ``options(queue=...)``);
    * ``mode``: ``"thread"`` (default), ``"process"`` (CPU-bound work; a
      task past its timeout has its process killed), or ``"asyncio"``
      (``async def`` tasks, hundreds in flight on one thread); ``modes``
      overrides it per queue, e.g. ``{"render": "process"}``;
    * ``lease``: seconds a claim stays valid without a heartbeat
      (heartbeats run every ``lease / 3``);
    * ``batch_size``: most tasks one thread claims at once (it claims about
      50 ms of work; one at a time for slow tasks);
    * ``resources``: what this host offers to tasks with ``requires=``: a
      dict, a probe function, or None for :func:`ferroq.resources.default_probe`;
    * ``cleanup``: :class:`CleanupIntervals`; ``replay_listen``: run
      listeners for listen data set before the scheduler started;
    * ``listen_consumer``: a name under which the last listen change
      handled is saved in the store, so a scheduler restarted under the same
      name runs listeners for changes made while it was down, and never
      again for those it handled.

    Use ``start()`` / ``stop(grace)``, a ``with`` block, or
    ``run_forever()``, which stops gracefully on SIGINT or SIGTERM.
    """

    def __init__(
        self,
        queue: Connection,
        *,
        concurrency: int = 4,
        queues: Optional[Sequence[str]] = None,
        mode: Mode = "thread",
        modes: Optional[Mapping[str, Mode]] = None,
        lease: float = 30.0,
        batch_size: int = 32,
        hooks: Sequence[StatusHook] = (),
        resources: Union[None, Mapping[str, float], ResourceProbe] = None,
        cleanup: Optional[CleanupIntervals] = None,
        replay_listen: bool = False,
        listen_consumer: Optional[str] = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be an int >= 1, got {concurrency!r}")
        lease = seconds(lease, "lease", minimum=0.1, strict=True)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for m in [mode, *(modes or {}).values()]:
            if m not in _MODES:
                raise InvalidArgumentError(f"mode must be one of {_MODES}, got {m!r}")
        probe: ResourceProbe
        if resources is None:
            probe = default_probe
        elif callable(resources):
            probe = resources
        else:
            fixed = {k: float(v) for k, v in resources.items()}

            def offer() -> dict[str, float]:
                return fixed

            probe = offer
        #: The queue served.
        self.queue = queue
        self.concurrency = concurrency
        self.mode: Mode = mode
        self.modes = dict(modes or {})
        #: What the loops share (store, worker id, claimed tasks, hooks...).
        self.state = WorkerState(
            queue,
            worker_id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            concurrency=concurrency,
            lease_ms=int(lease * 1000),
            batch_size=batch_size,
            queues=list(queues) if queues else None,
            hooks=list(hooks),
            probe=probe,
        )
        self._threads: list[threading.Thread] = []
        self._support: list[threading.Thread] = []
        self.loops: list[ClaimingLoop] = []
        self._intervals = cleanup or CleanupIntervals()
        self.monitor = MonitorLoop(self.state)
        self.cleanup = CleanupLoop(self.state, self._intervals)
        self.listen: Optional[ListenLoop] = None
        self._replay_listen = replay_listen
        self._listen_consumer = listen_consumer
        self._feed: Optional[EventFollower] = None
        self._started = False
        self._by_mode: dict[str, list[str]] = {}

    @property
    def worker_id(self) -> str:
        """This scheduler's name in the store (``host:pid:random``)."""
        return self.state.worker_id

    @property
    def queues(self) -> list[str]:
        """The queue names this scheduler serves."""
        return self.state.queues

    def on_status_change(self, hook: StatusHook) -> StatusHook:
        """Registers ``hook(task_id, old_status, new_status)``; usable as a
        decorator. It is called for every move of a task: at once for the
        moves this scheduler makes, and, from the store's event feed, for
        moves made anywhere else in the store (other workers and processes,
        verbs by id from outside, recoveries). Sends and purges are in the
        feed only (:meth:`Queue.follow`)."""
        self.state.hooks.append(hook)
        if self._started and self._feed is None:
            self._feed = EventFollower(self.state.store, None, self._feed_event, start_at="now")
            self._feed.start()
        return hook

    def _feed_event(self, event: Event) -> None:
        """Passes a move made elsewhere to the status hooks."""
        s = self.state
        if event.old is None or event.new is None or event.old == event.new:
            return  # sends, purges and cancel requests are not moves
        key = (event.task_id, event.old, event.new)
        # A move of our own may be read back before the loop that made it
        # has passed it on: give that loop a moment (only for moves under
        # our worker name, which are nearly always ours).
        deadline = time.monotonic() + (_OWN_MOVE_WAIT_S if event.worker == s.worker_id else 0.0)
        while True:
            with s.lock:
                ours = key in s.emitted
                if ours:
                    del s.emitted[key]
            if ours or time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        if not ours:  # a move made elsewhere, or one this scheduler did not see end so
            s.emit(event.task_id, event.old, event.new, seen=True)

    def _publish_limits(self) -> None:
        for t in registered().values():
            d = t.defaults
            if d.concurrency is not None or d.rate_limit is not None:
                self.state.store.set_function_limit(t.name, d.concurrency, d.rate_limit, None)

    def _serve(self, queue: str) -> None:
        """Adds a queue found in the store to the loops of its mode (they
        share one list per mode and read it at every claim)."""
        served = self._by_mode.get(self.modes.get(queue, self.mode))
        if served is None:
            log.warning("queue %r has tasks to run, but no loop of its mode runs here", queue)
        elif queue not in served:
            served.append(queue)

    def _build_loops(self) -> list[ClaimingLoop]:
        by_mode: dict[str, list[str]] = {}
        for q in self.queues:
            by_mode.setdefault(self.modes.get(q, self.mode), []).append(q)
        self._by_mode = by_mode
        loops: list[ClaimingLoop] = []
        for mode, qs in sorted(by_mode.items()):
            if mode == "asyncio":
                loops.append(AsyncTaskLoop(self.state, qs))
            elif mode == "process":
                loops += [ProcessTaskLoop(self.state, qs) for _ in range(self.concurrency)]
            else:
                loops += [ThreadTaskLoop(self.state, qs) for _ in range(self.concurrency)]
        return loops

    def start(self) -> QueueScheduler:
        """Starts the loops; returns self."""
        if self._started:
            raise InvalidArgumentError("scheduler already started")
        self._started = True
        try:
            self._start()
        except BaseException:
            # Undo what began, so the caller sees the cause (not an error of
            # a half-started scheduler) and may start again.
            self.stop(grace=0.0)
            self._started = False
            raise
        return self

    def _start(self) -> None:
        self.state.stopping.clear()
        # Fresh support loops: those of an earlier run were told to stop.
        self.monitor = MonitorLoop(self.state)
        self.cleanup = CleanupLoop(self.state, self._intervals)
        _running.add(self)
        self.state.start_keeper()
        self._publish_limits()
        self.cleanup.tick(time.monotonic())  # register, and recover dead workers' tasks now
        self.loops = self._build_loops()
        self.state.on_new_queue = self._serve
        self.listen = ListenLoop(self.state, self._replay_listen, self._listen_consumer)
        self._feed = None
        if self.state.hooks:
            # Moves made anywhere else reach the hooks through the feed,
            # from now on (a place kept in memory: hooks are live).
            self._feed = EventFollower(self.state.store, None, self._feed_event, start_at="now")
        self._threads = [
            threading.Thread(target=loop.run, name=f"ferroq-task-{i}", daemon=True)
            for i, loop in enumerate(self.loops)
        ]
        support = [
            threading.Thread(target=self.monitor.run, name="ferroq-monitor", daemon=True),
            threading.Thread(target=self.cleanup.run, name="ferroq-cleanup", daemon=True),
            threading.Thread(target=self.listen.run, name="ferroq-listen", daemon=True),
        ]
        self._support = support
        for th in self._threads + support:
            th.start()
        if self._feed is not None:
            self._feed.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stops gracefully: running tasks get ``grace`` seconds to finish,
        claimed tasks not yet started go back to the queue, and tasks still
        running after the grace period are stopped where the mode allows
        (processes killed, coroutines cancelled) and released for another
        worker."""
        if not self._started:
            return
        state = self.state
        state.stopping.set()
        # Every loop waits for a store change between ticks: end those waits
        # now, so an idle scheduler stops at once.
        self.monitor.signal_stop()
        self.cleanup.signal_stop()
        if self.listen is not None:
            self.listen.signal_stop()
        if self._feed is not None:
            self._feed.signal_stop()
        wake_waiters(state.store)
        deadline = time.monotonic() + max(0.0, grace)
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))
        if any(th.is_alive() for th in self._threads):
            with state.lock:
                leftovers = list(state.claimed.values())
                for item in leftovers:
                    item.abandoned = True
                state.claimed.clear()
            for loop in self.loops:
                loop.abort()
            if leftovers:
                log.warning(
                    "%d task(s) still running after %.1fs grace; releasing them",
                    len(leftovers),
                    grace,
                )
                ids = [item.task.id for item in leftovers]
                for task_id, err in zip(ids, state.store.release(ids, state.worker_id)):
                    if err is None:
                        state.emit(task_id, "running", "queued")
        self.monitor.stop()
        self.cleanup.stop()
        if self.listen is not None:
            self.listen.stop()
        if self._feed is not None:
            self._feed.stop()
            self._feed = None
        for th in self._support:
            th.join(timeout=5.0)
        self._started = False
        _running.discard(self)

    @staticmethod
    def _stop_all_at_exit() -> None:
        """At interpreter exit, stops schedulers still running (a script
        that ends without ``stop()``): their claimed tasks go back to the
        queue and no thread is left inside native code while the
        interpreter shuts down, which would abort the process."""
        for s in list(_running):
            try:
                s.stop(grace=0.0)
            except Exception as e:  # exit goes on
                log.debug("could not stop %r at exit: %s", s, e)

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
        return f"<QueueScheduler {self.worker_id} mode={self.mode} concurrency={self.concurrency}>"


# Registered after ``_connection``'s handler, so it runs before it (atexit
# is last in, first out): schedulers stop before their stores close.
atexit.register(QueueScheduler._stop_all_at_exit)
