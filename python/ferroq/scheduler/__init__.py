"""``QueueScheduler``: runs tasks in a long-lived process.

It owns a few loops, one file each, every one with a ``tick()`` step that
tests can drive directly:

* task loops — claim batches and run them: on threads (default), in child
  processes (hard timeouts), or on an asyncio event loop;
* the monitor — heartbeats, cancellation delivery, soft timeouts;
* the cleanup loop — worker records, recovery of dead workers' tasks and of
  expired leases, deadlines, retention;
* the listen loop — ``@listener`` functions on listen-data changes;
* the periodic loop — runs of periodic tasks when their ticks come.

Callbacks given at send time are delivered by the sending queue's receive
loop.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional, Sequence, Union

from .._checks import seconds
from .._default import forget, set_default
from .._errors import InvalidArgumentError
from .._loops import wake_waiters
from ..events import Event, EventFollower
from ..logs import configure as configure_logging
from ..registry import discover, registered
from ..resources import ResourceProbe, checked_offer, default_probe
from ..supervisor import ChildControl, Supervisor
from ._state import StatusHook, WorkerState
from .async_loop import AsyncTaskLoop, SharedAsyncRunner
from .cleanup import CleanupIntervals, CleanupLoop
from .listen_loop import ListenLoop
from .monitor import MonitorLoop
from .periodic_loop import PeriodicLoop
from .process_loop import ProcessTaskLoop
from .task_loop import ClaimingLoop, ThreadShare, ThreadTaskLoop

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
    * ``batch_wait``: seconds an idle scheduler waits, once work arrives,
      before claiming it (0 to 1; default 0: at once). Tasks sent one at a
      time by a steady trickle are then claimed and stored several per
      wake-up and transaction: much less CPU per task, for up to this much
      more latency (see "Throughput or latency" in the docs);
    * ``resources``: what this host offers to tasks with ``requires=``: a
      dict, a probe function, or None for :func:`ferroq.resources.default_probe`;
    * ``cleanup``: :class:`CleanupIntervals`; ``replay_listen``: run
      listeners for listen data set before the scheduler started;
    * ``listen_consumer``: a name under which the last listen change
      handled is saved in the store, so a scheduler restarted under the same
      name runs listeners for changes made while it was down, and never
      again for those it handled (names starting ``ferroq:`` are reserved);
    * ``periodic``: send the runs of the periodic tasks served
      (``@task(schedule=...)``, ``@periodic``) when their ticks come
      (default True; several schedulers may do so, each tick is stored once);
    * ``processes``: run the scheduler in this many child processes under a
      supervisor that restarts one that dies (default 1: in this process).
      The children open the store by its URL and import ``imports``
      (module or package names; default: the modules of every registered
      task, refused when one is in ``__main__``); each runs a scheduler with
      these options, listeners run in the first only, and hooks given here
      see their moves through the store's event feed;
    * ``home``: ``(index, count)``: this scheduler is worker ``index`` of
      ``count`` (each child of ``processes`` gets its own). On a sharded
      SQLite store each claiming thread of worker ``index`` is served first
      from its home shards, which no other worker's threads share when
      there are at least as many shards as workers (see "Shards and
      claim order" in the docs).

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
        batch_wait: float = 0.0,
        hooks: Sequence[StatusHook] = (),
        resources: Union[None, Mapping[str, float], ResourceProbe] = None,
        cleanup: Optional[CleanupIntervals] = None,
        replay_listen: bool = False,
        listen_consumer: Optional[str] = None,
        periodic: bool = True,
        processes: int = 1,
        imports: Optional[Sequence[str]] = None,
        home: Optional[tuple[int, int]] = None,
    ) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise InvalidArgumentError(f"processes must be an int >= 1, got {processes!r}")
        if home is not None and not (
            isinstance(home, tuple)
            and len(home) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in home)
            and 0 <= home[0] < home[1]
        ):
            raise InvalidArgumentError(
                f"home must be (index, count) with 0 <= index < count, got {home!r}"
            )
        if imports is not None and processes == 1:
            raise InvalidArgumentError(
                "imports= names what worker processes import: it needs processes > 1"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be an int >= 1, got {concurrency!r}")
        lease = seconds(lease, "lease", minimum=0.1, strict=True)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}")
        batch_wait = seconds(batch_wait, "batch_wait")
        if batch_wait > 1.0:
            raise InvalidArgumentError(
                f"batch_wait must be at most 1 second (it delays every claim), got {batch_wait!r}"
            )
        if listen_consumer is not None and listen_consumer.startswith("ferroq:"):
            # The store keeps the marks of periodic schedules under such names.
            raise InvalidArgumentError(
                f"listen_consumer names starting 'ferroq:' are reserved, got {listen_consumer!r}"
            )
        for m in [mode, *(modes or {}).values()]:
            if m not in _MODES:
                raise InvalidArgumentError(f"mode must be one of {_MODES}, got {m!r}")
        probe: ResourceProbe
        if resources is None:
            probe = default_probe
        elif callable(resources):
            probe = resources
        else:
            fixed = checked_offer(resources)

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
            batch_wait=batch_wait,
        )
        self._threads: list[threading.Thread] = []
        self._support: list[threading.Thread] = []
        self.loops: list[ClaimingLoop] = []
        self._intervals = cleanup or CleanupIntervals()
        self.monitor = MonitorLoop(self.state)
        self.cleanup = CleanupLoop(self.state, self._intervals)
        self.listen: Optional[ListenLoop] = None
        self._periodic = periodic
        #: The periodic loop (None until started, or when turned off).
        self.periodic: Optional[PeriodicLoop] = None
        self._replay_listen = replay_listen
        self._listen_consumer = listen_consumer
        self._feed: Optional[EventFollower] = None
        self._started = False
        self._by_mode: dict[str, list[str]] = {}
        #: How many processes run this scheduler (see :class:`Supervisor`).
        self.processes = processes
        #: ``(index, count)`` among worker processes, for shard-affine claims.
        self.home = home
        # Whether this scheduler runs the listeners (only the first of
        # several worker processes does).
        self._listens = True
        #: The supervisor of the worker processes (with ``processes > 1``).
        self.supervisor: Optional[Supervisor] = None
        if processes > 1:
            self.supervisor = Supervisor(
                _run_child,
                _child_spec(
                    queue,
                    imports,
                    dict(
                        concurrency=concurrency, queues=list(queues) if queues else None,
                        mode=mode, modes=dict(modes or {}), lease=lease, batch_size=batch_size,
                        batch_wait=batch_wait,
                        resources=resources, cleanup=cleanup, replay_listen=replay_listen,
                        listen_consumer=listen_consumer, periodic=periodic,
                    ),
                ),
                processes,
            )

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
                # One event loop per scheduler runs the threads' async def tasks.
                # Its threads share their task-time estimate and one idle watch.
                runner, share = SharedAsyncRunner(self.state), ThreadShare()
                loops += [
                    ThreadTaskLoop(self.state, qs, runner=runner, share=share)
                    for _ in range(self.concurrency)
                ]
                loops.append(runner)
        # Number the claiming loops after those of the schedulers before
        # this one (`home`), so that each takes its home shards first and
        # the loops of one process share their shards with no other process.
        claimers = [loop for loop in loops if loop.queues]
        index, count = self.home or (0, 1)
        for i, claimer in enumerate(claimers):
            claimer.home = (index * len(claimers) + i, count * len(claimers))
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
        if self.supervisor is not None:
            _running.add(self)
            self._feed = None
            if self.state.hooks:  # every move is a child's: all come from the feed
                self._feed = EventFollower(
                    self.state.store, None, self._feed_event, start_at="now"
                )
                self._feed.start()
            self.supervisor.start()
            return
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
        self.listen = (
            ListenLoop(self.state, self._replay_listen, self._listen_consumer)
            if self._listens
            else None
        )
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
        ]
        if self.listen is not None:
            support.append(
                threading.Thread(target=self.listen.run, name="ferroq-listen", daemon=True)
            )
        self.periodic = PeriodicLoop(self.state) if self._periodic else None
        if self.periodic is not None:
            support.append(
                threading.Thread(target=self.periodic.run, name="ferroq-periodic", daemon=True)
            )
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
        if self.supervisor is not None:
            # A second call while the first waits (a second Ctrl+C) forces.
            self.supervisor.stop(grace)
            if self._feed is not None:
                self._feed.stop()
                self._feed = None
            self._started = False
            _running.discard(self)
            return
        state = self.state
        state.stopping.set()
        # Every loop waits for a store change between ticks: end those waits
        # now, so an idle scheduler stops at once.
        self.monitor.signal_stop()
        self.cleanup.signal_stop()
        if self.listen is not None:
            self.listen.signal_stop()
        if self.periodic is not None:
            self.periodic.stop()
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
        """Runs until SIGINT or SIGTERM, then stops gracefully; a second
        SIGINT (Ctrl+C) while stopping stops at once (``stop(0)``: claimed
        tasks go back to the queue). A repeated SIGTERM changes nothing."""
        stop = threading.Event()

        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            if stop.is_set():
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt  # the grace period is not wanted
                return
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
            try:
                self.stop(grace)
            except KeyboardInterrupt:
                log.info("second interrupt: stopping now")
                self.stop(0.0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> QueueScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<QueueScheduler {self.worker_id} mode={self.mode} concurrency={self.concurrency}>"


def _child_spec(
    queue: Connection, imports: Optional[Sequence[str]], options: dict[str, Any]
) -> dict[str, Any]:
    """What a worker process needs to run the scheduler the caller asked
    for; refuses (:class:`InvalidArgumentError`) what a child cannot
    rebuild: a store only this process can see, a task it cannot import."""
    if queue.url.startswith("memory:") or queue.clock is not None:
        raise InvalidArgumentError(
            "worker processes open the store by its URL: a memory:// store, or one on a "
            f"manual clock, lives in this process only (got {queue.url!r})"
        )
    cls = type(queue)
    if cls.__module__ in ("__main__", "__mp_main__"):
        raise InvalidArgumentError(
            f"worker processes cannot import {cls.__name__}, defined in __main__"
        )
    return {
        "cls": cls,
        "url": queue.url,
        "serializer": queue.serializer,
        "imports": _child_imports(imports),
        "path": list(sys.path),
        "options": options,
    }


def _child_imports(imports: Optional[Sequence[str]]) -> list[str]:
    """The modules each worker process imports: those named, each checked
    to exist, or else the modules of every registered task."""
    if imports is None:
        found: list[str] = []
        for name, fn in sorted(registered().items()):
            module = fn.__module__
            if module in ("__main__", "__mp_main__"):
                raise InvalidArgumentError(
                    f"task {name!r} is defined in {module}, which worker processes cannot "
                    "import: move it into a module and name it in imports=[...]"
                )
            if module and module not in found:
                found.append(module)
        if not found:
            raise InvalidArgumentError(
                "no task is registered, so worker processes would import nothing: "
                "name the task modules in imports=[...]"
            )
        return found
    if isinstance(imports, str):
        raise InvalidArgumentError(f"imports must be a list of module names, got {imports!r}")
    names = list(imports)
    for name in names:
        if not isinstance(name, str) or name in ("__main__", "__mp_main__"):
            raise InvalidArgumentError(f"imports must name importable modules, got {name!r}")
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise InvalidArgumentError(f"no module named {name!r} for worker processes to import")
    if not names:
        raise InvalidArgumentError("imports is empty: worker processes would have no task")
    return names


def _run_child(control: ChildControl, spec: dict[str, Any]) -> None:
    """A worker process's body (the supervisor's child target): imports
    the task modules, opens the store, and runs a scheduler as the parent
    asked until the supervisor says stop."""
    path = spec["path"]
    sys.path[:] = path + [p for p in sys.path if p not in path]
    level = os.environ.get("FERROQ_LOG")
    if level:  # set by `ferroq worker --log-level`, or by the caller
        try:
            json_lines = os.environ.get("FERROQ_LOG_FORMAT") == "json"
            configure_logging(level, "json" if json_lines else "text")
        except InvalidArgumentError as e:
            log.warning("FERROQ_LOG ignored: %s", e)
    for module in spec["imports"]:
        discover(module)
    conn: Connection = spec["cls"](spec["url"], serializer=spec["serializer"])
    set_default(conn)
    try:
        scheduler = QueueScheduler(conn, home=(control.index, control.count), **spec["options"])
        scheduler._listens = control.index == 0
        log.info(
            "worker process %d/%d: %s serving %s",
            control.index + 1, control.count, scheduler.worker_id, ",".join(scheduler.queues),
        )
        control.serve(scheduler.start, scheduler.stop)
    finally:
        forget(conn)
        conn.close()


# Registered after ``_connection``'s handler, so it runs before it (atexit
# is last in, first out): schedulers stop before their stores close.
atexit.register(QueueScheduler._stop_all_at_exit)
