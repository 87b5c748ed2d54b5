"""The task loop: one per worker thread. Each tick claims a batch, runs it
in this thread (no hand-off to another pool), and stores the outcomes in
one call per batch."""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any, Optional

from .._errors import SerializationError, TaskCancelledError, UnknownTaskError
from ..context import Retry, TaskContext, _current
from ..serialization import decode, encode
from ..task import _registry, run_function
from .inflight import InFlight

if TYPE_CHECKING:
    from .. import _core
    from . import QueueScheduler

__all__ = ["TaskLoop", "error_text"]

log = logging.getLogger("ferroq.worker")

# How much work (seconds) one claim should fetch, judged by recent task times.
_CLAIM_SECONDS = 0.05
# Longest claim wait, so a stop is noticed promptly.
_WAIT_SLICE_S = 0.25


def error_text(exc: BaseException, tb: Optional[str] = None) -> str:
    """The stored form of an exception: JSON with type, message, traceback."""
    cls = type(exc)
    return json.dumps(
        {
            "type": f"{cls.__module__}.{cls.__qualname__}",
            "message": str(exc),
            "traceback": tb if tb is not None else "".join(traceback.format_exception(exc)),
        }
    )


class TaskLoop:
    """Claims and runs tasks for one worker thread of a scheduler."""

    def __init__(self, scheduler: QueueScheduler, queues: list[str]) -> None:
        self.s = scheduler
        self.queues = queues
        self._next_queue = 0
        self._avg_seconds = _CLAIM_SECONDS  # start by claiming one task
        self._done_ids: list[int] = []
        self._done_results: list[bytes] = []

    def batch_limit(self) -> int:
        """How many tasks the next claim asks for."""
        return max(1, min(self.s.batch_size, int(_CLAIM_SECONDS / max(self._avg_seconds, 1e-6))))

    def claim(self, wait: float) -> list[_core.Task]:
        """Claims a batch from the served queues, waiting up to ``wait``."""
        s = self.s
        store = s.store
        limit = self.batch_limit()
        if len(self.queues) == 1:
            tasks = store.claim(self.queues[0], s.worker_id, limit, s.lease_ms, wait)
        else:
            token = store.change_token()
            tasks = []
            for i in range(len(self.queues)):
                q = self.queues[(self._next_queue + i) % len(self.queues)]
                tasks = store.claim(q, s.worker_id, limit, s.lease_ms, 0.0)
                if tasks:
                    self._next_queue = (self._next_queue + i + 1) % len(self.queues)
                    break
            if not tasks and wait > 0:
                # Delayed tasks become ready without a commit: look again soon.
                store.wait_for_change(token, min(wait, 0.05))
        if tasks:
            with s.lock:
                for t in tasks:
                    s.claimed[t.id] = InFlight(t)
            for t in tasks:
                s.emit(t.id, "queued", "running")
        return tasks

    def tick(self, wait: float = 0.0) -> int:
        """One step: claim a batch (waiting up to ``wait``), run it, store
        the outcomes. Returns how many tasks ran."""
        tasks = self.claim(wait)
        ran = 0
        for i, t in enumerate(tasks):
            if self.s.stopping.is_set():
                self.release(tasks[i:])
                break
            self.run_one(t)
            ran += 1
        self.flush()
        return ran

    def run(self) -> None:
        """Ticks until the scheduler stops."""
        while not self.s.stopping.is_set():
            try:
                self.tick(_WAIT_SLICE_S)
            except Exception:
                if self.s.store.closed:
                    return
                log.exception("task loop error; retrying")
                self.s.stopping.wait(0.5)
        self.flush()

    def release(self, tasks: list[_core.Task]) -> None:
        """Gives claimed, unstarted tasks back to the queue."""
        s = self.s
        with s.lock:
            ids = [t.id for t in tasks if s.claimed.pop(t.id, None) is not None]
        if not ids:
            return
        for task_id, err in zip(ids, s.store.release(ids, s.worker_id)):
            if err is None:
                s.emit(task_id, "running", "queued")

    def run_one(self, t: _core.Task) -> None:
        """Runs one claimed task and records its outcome."""
        s = self.s
        item = s.claimed.get(t.id)
        if item is None or item.abandoned:
            return
        if item.cancel_requested:
            self._finish_cancelled(t.id, item)
            return
        fn = _registry.get(t.name)
        if fn is None:
            err = UnknownTaskError(
                f"no task named {t.name!r} is registered in worker {s.worker_id}"
            )
            self._fail(t.id, item, error_text(err, ""), "never")
            return
        ctx = TaskContext(s.store, t, s.worker_id)
        item.ctx = ctx
        started = time.monotonic()
        item.started = started
        timeout = fn.defaults.timeout
        if timeout is not None:
            item.deadline = started + timeout
        token = _current.set(ctx)
        retry: Any = None
        error: Optional[str] = None
        result: Optional[bytes] = None
        cancelled = False
        try:
            args, kwargs = decode(t.payload, allow_pickle=fn.defaults.serializer == "pickle")
            args, kwargs = fn.binder.args(args, kwargs)
        except Exception as e:
            # Arguments that cannot be decoded will not decode next time either.
            error, retry = error_text(e), "never"
        else:
            try:
                value = run_function(fn, args, kwargs)
                result = encode(value, fn.defaults.serializer)
            except Retry as r:
                error = error_text(r, "")
                retry = "backoff" if r.delay is None else max(0, int(r.delay * 1000))
            except TaskCancelledError:
                cancelled = True
            except SerializationError as e:
                error, retry = error_text(e), "never"
            except Exception as e:
                error, retry = error_text(e), "backoff"
        finally:
            _current.reset(token)
        elapsed = time.monotonic() - started
        self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * elapsed
        with s.lock:
            s.claimed.pop(t.id, None)
            abandoned = item.abandoned
        if abandoned:
            return
        if cancelled or ctx._cancelled:
            # Asked to stop: whatever the function did after that, the
            # caller sees the cancellation it asked for.
            self._finish_cancelled(t.id, item)
        elif result is not None:
            self._done_ids.append(t.id)
            self._done_results.append(result)
        elif error is not None:
            self._fail(t.id, item, error, retry)

    def _fail(self, task_id: int, item: InFlight, error: str, retry: Any) -> None:
        s = self.s
        with s.lock:
            s.claimed.pop(task_id, None)
        try:
            status = s.store.fail(task_id, s.worker_id, error, retry)
        except Exception as e:
            log.warning("could not record failure of task %s: %s", task_id, e)
            return
        s.emit(task_id, "running", status)

    def _finish_cancelled(self, task_id: int, item: InFlight) -> None:
        s = self.s
        with s.lock:
            s.claimed.pop(task_id, None)
        try:
            s.store.cancel(task_id, s.worker_id)
        except Exception as e:
            log.warning("could not record cancellation of task %s: %s", task_id, e)
            return
        s.emit(task_id, "running", "cancelled")

    def flush(self) -> None:
        """Stores the buffered results in one call."""
        if not self._done_ids:
            return
        ids, results = self._done_ids, self._done_results
        self._done_ids, self._done_results = [], []
        s = self.s
        errors = s.store.complete_many(ids, s.worker_id, results)
        for task_id, err in zip(ids, errors):
            if err is None:
                s.emit(task_id, "running", "done")
            else:
                log.warning("result of task %s not stored: %s", task_id, err)
