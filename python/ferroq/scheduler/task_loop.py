"""The task loops. :class:`ClaimingLoop` holds what every execution mode
shares — claiming batches, releasing, recording outcomes, flushing results
in one call per batch — and :class:`ThreadTaskLoop` runs tasks in its own
worker thread: each tick claims a batch, runs it here (no hand-off to
another pool), and stores the outcomes."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Protocol

from .. import logs
from .._errors import PayloadTooLargeError, UnknownTaskError
from ..context import TaskContext
from . import _state
from .execute import Outcome, error_text, execute_sync
from .inflight import InFlight
from .retrying import LoopRetry

if TYPE_CHECKING:
    from .. import _core
    from ..task_function import TaskFunction
    from ._state import WorkerState

__all__ = [
    "ClaimingLoop",
    "CoroutineRunner",
    "ThreadShare",
    "ThreadTaskLoop",
    "error_text",
    "log_attempt",
    "outcome_of",
]

log = logging.getLogger("ferroq.worker")
task_log = logging.getLogger("ferroq.task")

# How much work (seconds) one claim should fetch, judged by recent task times.
_CLAIM_SECONDS = 0.05
# Longest claim wait, so a stop is noticed promptly.
WAIT_SLICE_S = 0.25
# How long an idle worker thread waits for work (or for its turn to) at a
# time: a stop ends the wait at once (the scheduler wakes the store, and the
# watching thread lets the others go), so it can be long, and an idle
# scheduler wakes a few times a second whatever its concurrency.
IDLE_CLAIM_WAIT_S = 1.0
# Results wait in a buffer at most this long (or this many) before being
# stored in one call: fast tasks share a transaction, while a crash can only
# re-run work finished in the last few milliseconds.
_FLUSH_AFTER_S = 0.002
_FLUSH_AT = 64
# A thread still running its batch this long after claiming it (slower
# tasks than the claim was sized for) gives the tasks it has not started
# back to the queue, for idle threads: a batch claimed after fast tasks
# must not run 100 ms tasks one after another while other threads wait.
_GIVE_BACK_AFTER_S = 2 * _CLAIM_SECONDS
# The level of the line for each way an attempt ends (others: INFO).
_LEVELS = {"retried": logging.WARNING, "failed": logging.ERROR, "unknown": logging.ERROR}


def outcome_of(status: str) -> str:
    """The outcome an attempt's failure left, from the status the store
    gave it: ``retried`` (queued again), ``failed`` (for good), or the
    status itself (``cancelled``...)."""
    return "retried" if status == "queued" else status


def log_attempt(
    state: WorkerState,
    t: _core.Task,
    outcome: str,
    seconds: float,
    error: Optional[str] = None,
) -> None:
    """Logs one finished attempt on ``ferroq.task``: INFO when done or
    cancelled, WARNING with the traceback when it will be retried, ERROR
    with the traceback when it failed for good. The task's fields ride on
    the record (``extra``), the traceback also as its ``exc_text`` so any
    formatter prints it."""
    level = _LEVELS.get(outcome, logging.INFO)
    if not task_log.isEnabledFor(level):
        return
    ms = round(seconds * 1000, 3)
    fields = logs.task_fields(
        t.id, t.name, t.queue, t.attempts, t.max_attempts, state.worker_id,
        outcome=outcome, duration_ms=ms,
    )
    err = logs.error_fields(error)
    fields.update(err)
    what = {"retried": "failed", "failed": "failed for good"}.get(outcome, outcome)
    then = ", will retry" if outcome == "retried" else ""
    msg = "task %s %s %s in %.1f ms%s (queue %s, attempt %d/%d)"
    args: tuple[object, ...] = (
        t.id, t.name, what, ms, then, t.queue, t.attempts, t.max_attempts
    )
    if err:
        msg += ": %s: %s"
        args += (err.get("error_type") or "error", err.get("error"))
    record = task_log.makeRecord(task_log.name, level, __file__, 0, msg, args, None, extra=fields)
    if err.get("traceback"):
        record.exc_text = str(err["traceback"]).rstrip()
    task_log.handle(record)


def _log_unknown(state: WorkerState, t: _core.Task) -> None:
    """The loud line for a task no function is registered for here: which
    module to import so this worker knows it."""
    module = t.name.partition(":")[0] if ":" in t.name else None
    how = (
        f"import {module!r} in the worker (ferroq worker {module} ..., or "
        f"ferroq.discover({module!r})) so its @task functions are registered"
        if module
        else "register a function under this name (@task(name=...)) in the worker"
    )
    task_log.error(
        "task %s failed: no task named %r is registered in worker %s; %s",
        t.id, t.name, state.worker_id, how,
        extra=logs.task_fields(
            t.id, t.name, t.queue, t.attempts, t.max_attempts, state.worker_id,
            outcome="unknown", duration_ms=0.0, task_module=module,
        ),
    )


class ClaimingLoop:
    """Claims tasks for one loop of a scheduler and records their outcomes."""

    def __init__(self, state: WorkerState, queues: list[str]) -> None:
        self.state = state
        self.queues = queues
        self._next_queue = 0
        self._avg_seconds = _CLAIM_SECONDS  # start by claiming one task
        self._done_ids: list[int] = []
        self._done_results: list[bytes] = []
        # (task, seconds it ran) of each buffered result, for its log line
        # and metrics once stored.
        self._done_runs: list[tuple[_core.Task, float]] = []
        # Tasks being failed because no function is registered for them.
        self._unknown: set[int] = set()
        self._first_done_at = 0.0
        # (index, count) among every claiming loop of the store's workers:
        # a sharded store serves this loop from its home shards first.
        self.home: Optional[tuple[int, int]] = None

    def batch_limit(self) -> int:
        """How many tasks the next claim asks for (about 50 ms of work)."""
        per_claim = int(_CLAIM_SECONDS / max(self._avg_seconds, 1e-6))
        return max(1, min(self.state.batch_size, per_claim))

    def observe(self, seconds: float) -> None:
        """Feeds one task's run time into the claim sizing."""
        self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * seconds

    def claim(self, wait: float, limit: Optional[int] = None) -> list[_core.Task]:
        """Claims up to ``limit`` tasks from the served queues, waiting up to ``wait``."""
        s = self.state
        store = s.store
        limit = limit or self.batch_limit()
        resources = s.resources_json()
        tasks = []
        if len(self.queues) == 1 and wait > 0:
            if s.stopping.is_set():
                return []
            # One queue: the store waits for ready work itself, claiming
            # again after each change without coming back here (a commit
            # that adds nothing to claim, such as our own results, costs no
            # Python), and gives up at once when the scheduler stops
            # (wake_waiters wakes the store).
            tasks = store.claim(
                self.queues[0], s.worker_id, limit, s.lease_ms, wait, resources, self.home,
                gather=s.batch_wait,
            )
        else:
            # Several queues: claim from each in turn, then wait for a
            # change here (a scheduler that stops wakes this wait too).
            token = store.change_token() if wait > 0 else 0
            for i in range(len(self.queues)):
                q = self.queues[(self._next_queue + i) % len(self.queues)]
                tasks = store.claim(q, s.worker_id, limit, s.lease_ms, 0.0, resources, self.home)
                if tasks:
                    self._next_queue = (self._next_queue + i + 1) % len(self.queues)
                    break
            if not tasks and wait > 0 and not s.stopping.is_set():
                # Delayed tasks become ready without a commit: look again soon.
                if store.wait_for_change(token, min(wait, 0.05)) and s.batch_wait:
                    s.stopping.wait(s.batch_wait)  # let a trickle gather (see batch_wait)
        if tasks:
            with s.lock:
                for t in tasks:
                    s.claimed[t.id] = InFlight(t)
            s.keep([t.id for t in tasks])
            if s.has_hooks:
                for t in tasks:
                    s.emit(t.id, "queued", "running")
        return tasks

    def release(self, tasks: list[_core.Task]) -> None:
        """Gives claimed, unstarted tasks back to the queue."""
        s = self.state
        with s.lock:
            ids = [t.id for t in tasks if s.claimed.pop(t.id, None) is not None]
        if not ids:
            return
        for task_id, err in zip(ids, s.store.release(ids, s.worker_id)):
            if err is None:
                s.emit(task_id, "running", "queued")

    def forget(self, tasks: list[_core.Task]) -> None:
        """Gives back claimed tasks this loop will not run: released when the
        store answers, else dropped here so their leases lapse and any
        scheduler recovers them."""
        s = self.state
        with s.lock:
            left = [t for t in tasks if s.claimed.pop(t.id, None) is not None]
        if not left:
            return
        try:
            s.store.release([t.id for t in left], s.worker_id)
        except Exception as e:
            log.warning(
                "%d claimed task(s) left to lease expiry: %s", len(left), e,
                extra={"worker": s.worker_id, "task_ids": [t.id for t in left]},
            )

    def begin(self, t: _core.Task) -> Optional[tuple[InFlight, TaskFunction[Any, Any]]]:
        """Starts a claimed task's attempt: None when it must not run (asked
        to cancel, no function registered — both recorded here)."""
        s = self.state
        item = s.claimed.get(t.id)
        if item is None or item.abandoned:
            return None
        if item.cancel_requested:
            self.record(t, item, Outcome(cancelled=True))
            return None
        fn = s.tasks.find(t.name)
        if fn is None:
            err = UnknownTaskError(
                f"no task named {t.name!r} is registered in worker {s.worker_id}"
            )
            _log_unknown(s, t)
            self._unknown.add(t.id)
            try:
                self.record(t, item, Outcome(error=error_text(err, ""), retry="never"))
            finally:
                self._unknown.discard(t.id)
            return None
        item.started = time.monotonic()
        meter = _state.meter
        if meter is not None:
            meter.started(t.queue, t.name)
        return item, fn

    def context(self, t: _core.Task, item: InFlight) -> TaskContext:
        """The task's :class:`TaskContext`, remembered on its in-flight record."""
        ctx = TaskContext(self.state.store, t, self.state.worker_id)
        item.ctx = ctx
        return ctx

    def record(self, t: _core.Task, item: InFlight, outcome: Outcome) -> None:
        """Stores an attempt's outcome (results are buffered until :meth:`flush`)."""
        s = self.state
        with s.lock:
            s.claimed.pop(t.id, None)
            abandoned = item.abandoned
        if abandoned:
            return  # timed out, lease lost or released: the outcome is not ours to store
        now = time.monotonic()
        ran = now - item.started if item.started is not None else 0.0
        if outcome.cancelled or (item.ctx is not None and item.ctx._cancelled) or (
            item.cancel_requested and outcome.result is None
        ):
            # Asked to stop: whatever the function did after that, the
            # caller sees the cancellation it asked for.
            if self._store_cancelled(t.id):
                self._ended(t, "cancelled", ran)
        elif outcome.result is not None:
            if not self._done_ids:
                self._first_done_at = now
            self._done_ids.append(t.id)
            self._done_results.append(outcome.result)
            self._done_runs.append((t, ran))
            # Held only while the next result is due in time to share its
            # commit: a slow task's result is stored at once, so a crash
            # re-runs no task whose function had already returned long ago.
            due = now + self.next_result_in() - self._first_done_at
            if len(self._done_ids) >= _FLUSH_AT or due >= _FLUSH_AFTER_S:
                self.flush()
        elif outcome.error is not None:
            try:
                status = s.store.fail(t.id, s.worker_id, outcome.error, outcome.retry)
            except Exception as e:
                log.warning(
                    "could not record failure of task %s: %s", t.id, e,
                    extra=logs.task_fields(
                        t.id, t.name, t.queue, t.attempts, t.max_attempts, s.worker_id
                    ),
                )
                return
            if t.id in self._unknown:  # logged already, loudly; it never started
                meter = _state.meter
                if meter is not None:
                    meter.ended(t.queue, t.name, "unknown", 0.0)
            else:
                self._ended(t, outcome_of(status), ran, outcome.error)
            s.emit(t.id, "running", status)

    def _ended(
        self, t: _core.Task, outcome: str, seconds: float, error: Optional[str] = None
    ) -> None:
        """Logs a stored outcome and tells the metrics, if they are on."""
        log_attempt(self.state, t, outcome, seconds, error)
        meter = _state.meter
        if meter is not None:
            meter.ended(t.queue, t.name, outcome, seconds)

    def next_result_in(self) -> float:
        """How soon this loop expects to record its next result (seconds).
        Loops that flush after every round of concurrent tasks say 0."""
        return 0.0

    def _store_cancelled(self, task_id: int) -> bool:
        """Records a cancellation; False when the store refused it (logged)."""
        s = self.state
        try:
            s.store.cancel(task_id, s.worker_id)
        except Exception as e:
            log.warning(
                "could not record cancellation of task %s: %s", task_id, e,
                extra={"task_id": task_id, "worker": s.worker_id},
            )
            return False
        s.emit(task_id, "running", "cancelled")
        return True

    def flush(self) -> None:
        """Stores the buffered results in one call."""
        if not self._done_ids:
            return
        ids, results, runs = self._done_ids, self._done_results, self._done_runs
        self._done_ids, self._done_results, self._done_runs = [], [], []
        s = self.state
        errors = s.store.complete_many(ids, s.worker_id, results)
        hooks = s.has_hooks
        # Per-task work only when someone listens: INFO lines or metrics.
        meter = _state.meter
        lines = task_log.isEnabledFor(logging.INFO)
        finals: dict[int, str] = {}
        if hooks and any(err is None for err in errors):
            # What each stored result left: ``done``, or ``cancelled`` for a
            # task whose cancel came after its last check.
            stored = [i for i, err in zip(ids, errors) if err is None]
            for t in s.store.get_many(stored):
                if t is not None:
                    finals[t.id] = t.status
        for (t, ran), err in zip(runs, errors):
            task_id = t.id
            if isinstance(err, PayloadTooLargeError):
                # The same function would return the same result: fail the
                # task once, with the reason, instead of letting its lease
                # lapse and running it again.
                self._fail_oversized(t, ran, err)
            elif err is not None:
                log.warning(
                    "result of task %s not stored: %s", task_id, err,
                    extra=logs.task_fields(
                        task_id, t.name, t.queue, t.attempts, t.max_attempts, s.worker_id
                    ),
                )
            else:
                final = finals.get(task_id, "done")
                if lines:
                    self._ended(t, final, ran)
                elif meter is not None:
                    meter.ended(t.queue, t.name, final, ran)
                if hooks:
                    s.emit(task_id, "running", final)

    def _fail_oversized(self, t: _core.Task, ran: float, err: PayloadTooLargeError) -> None:
        s = self.state
        error = error_text(err, "")
        try:
            status = s.store.fail(t.id, s.worker_id, error, "never")
        except Exception as e:
            log.warning(
                "could not record failure of task %s: %s", t.id, e,
                extra=logs.task_fields(
                    t.id, t.name, t.queue, t.attempts, t.max_attempts, s.worker_id
                ),
            )
            return
        self._ended(t, outcome_of(status), ran, error)
        s.emit(t.id, "running", status)

    def run(self) -> None:
        """The loop's thread: ticks until the scheduler stops."""
        raise NotImplementedError

    def abort(self) -> None:
        """Called when the grace period ran out: stop what can be stopped."""


class ThreadShare:
    """What the thread loops of one scheduler share.

    * ``seconds``: the recent task time claims are sized by: a thread that
      has not met the slow tasks yet must not claim a batch sized for the
      fast ones that came before.
    * One idle watch: of the threads that found nothing to claim, one (the
      watcher) waits on the store's change notification; the others wait
      here for a ticket. Every commit would otherwise wake every idle
      thread of the scheduler (hundreds at ``concurrency=500``), each
      making a claim that finds nothing. A previously idle thread whose
      claim came back full hands a ticket on, so new work fans out one
      claim at a time, as fast as the store takes claims.
    """

    __slots__ = ("cond", "followers", "seconds", "tickets", "watching")

    def __init__(self) -> None:
        self.seconds = _CLAIM_SECONDS  # start by claiming one task
        self.cond = threading.Condition()
        self.watching = False  # an idle thread waits on the store; under cond
        self.followers = 0  # idle threads waiting for a ticket; under cond
        self.tickets = 0  # followers let through, not yet gone; under cond

    def pass_on(self, more: bool) -> None:
        """Called by an idle thread whose claim got work. When ``more`` may
        be ready, two waiting threads may claim (a burst of work reaches a
        hundred threads in a handful of rounds, not a hundred hand-offs);
        else one, only when no thread watches the store any more (it claims
        once and, finding nothing, watches). So while threads wait here, one
        watches or one is on its way."""
        with self.cond:
            n = 2 if more else (0 if self.watching else 1)
            n = min(n, self.followers - self.tickets)
            if n > 0:
                self.tickets += n
                self.cond.notify(n)

    def wake_all(self) -> None:
        """Lets every waiting idle thread go (the scheduler stops)."""
        with self.cond:
            self.tickets = self.followers
            self.cond.notify_all()


class CoroutineRunner(Protocol):
    """Where thread loops hand ``async def`` tasks: the scheduler's shared
    event loop (:class:`~ferroq.scheduler.async_loop.SharedAsyncRunner`)."""

    def submit(self, t: _core.Task) -> bool:
        """Starts a claimed task on the loop, waiting for a free slot; False
        when the runner no longer takes tasks (the scheduler stops)."""


class ThreadTaskLoop(ClaimingLoop):
    """Runs tasks in one worker thread (soft timeouts, cooperative cancel).

    ``async def`` tasks are handed to ``runner``, the scheduler's one event
    loop, when there is one (the thread goes on claiming); else they run
    on a private loop in this thread."""

    def __init__(
        self,
        state: WorkerState,
        queues: list[str],
        runner: Optional[CoroutineRunner] = None,
        share: Optional[ThreadShare] = None,
    ) -> None:
        self.share = share or ThreadShare()
        super().__init__(state, queues)
        self.runner = runner
        # True once a claim found nothing: the next claim goes through the
        # shared idle watch instead of straight to the store.
        self._idle = False

    @property
    def _avg_seconds(self) -> float:
        """The recent task time claims are sized by: the scheduler's threads
        share it (:class:`ThreadShare`; a race between threads loses an
        observation, never corrupts the value)."""
        return self.share.seconds

    @_avg_seconds.setter
    def _avg_seconds(self, value: float) -> None:
        self.share.seconds = value

    def claim(self, wait: float, limit: Optional[int] = None) -> list[_core.Task]:
        """Claims up to ``limit`` tasks. A thread that was busy claims at
        once; one that found nothing last time waits through the shared
        idle watch (:class:`ThreadShare`) when ``wait`` > 0."""
        if wait <= 0:
            return super().claim(wait, limit)
        if not self._idle:
            tasks = super().claim(0.0, limit)
            if tasks:
                return tasks
            self._idle = True
        share, stopping = self.share, self.state.stopping
        with share.cond:
            follower = share.watching
            if follower:
                share.followers += 1
                try:
                    while not share.tickets and not stopping.is_set():
                        share.cond.wait(IDLE_CLAIM_WAIT_S)
                    if share.tickets:
                        share.tickets -= 1
                finally:
                    share.followers -= 1
            else:
                share.watching = True
        # Sized now, not before the wait: what was learnt meanwhile counts.
        size = limit or self.batch_limit()
        if follower:
            tasks = super().claim(0.0, size) if not stopping.is_set() else []
        else:
            try:
                tasks = super().claim(wait, size)  # claims, or waits for a change
            finally:
                with share.cond:
                    share.watching = False
                if stopping.is_set():
                    share.wake_all()
        if tasks:
            self._idle = False
            # Off to work: a full claim says more may be ready.
            share.pass_on(more=len(tasks) >= size)
        return tasks

    def next_result_in(self) -> float:
        """Tasks run one after another here: the next result is one recent
        task time away."""
        return self._avg_seconds

    def tick(self, wait: float = 0.0) -> int:
        """One step: claim a batch (waiting up to ``wait``), run it, store
        the outcomes. Returns how many tasks ran."""
        tasks = self.claim(wait)
        ran = 0
        claimed_at = time.monotonic()
        try:
            for i, t in enumerate(tasks):
                if self.state.stopping.is_set() or (
                    i and time.monotonic() - claimed_at > _GIVE_BACK_AFTER_S
                ):
                    self.release(tasks[i:])
                    break
                self.run_one(t)
                ran += 1
            self.flush()
        except Exception:
            # A store call failed mid-batch: the tasks not run yet must not
            # stay claimed here (the monitor would renew their leases forever).
            self.forget(tasks[ran:])
            raise
        return ran

    def run(self) -> None:
        """Ticks until the scheduler stops."""
        retry = LoopRetry(log, "task loop error", {"worker": self.state.worker_id})
        while not self.state.stopping.is_set():
            try:
                self.tick(IDLE_CLAIM_WAIT_S)
            except Exception:
                if self.state.store.closed:
                    return
                self.state.stopping.wait(retry.failed())
            else:
                retry.ok()
        self.flush()

    def run_one(self, t: _core.Task) -> None:
        """Runs one claimed task here and records its outcome (an ``async
        def`` one is handed to the scheduler's event loop instead)."""
        if self.runner is not None:
            fn = self.state.tasks.find(t.name)
            if fn is not None and fn.is_async:
                handed_at = time.monotonic()
                if not self.runner.submit(t):
                    self.release([t])  # the scheduler stops: back to the queue
                # What this thread spent: claims grow while the loop has
                # room, and shrink (with give-backs) while it is full.
                self.observe(time.monotonic() - handed_at)
                return
        begun = self.begin(t)
        if begun is None:
            return
        item, fn = begun
        if fn.defaults.timeout is not None and item.started is not None:
            item.deadline = item.started + fn.defaults.timeout
        ctx = self.context(t, item)
        outcome = execute_sync(fn, t.payload, ctx)
        self.observe(time.monotonic() - (item.started or time.monotonic()))
        self.record(t, item, outcome)
