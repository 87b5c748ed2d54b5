"""The receive loop: calls the callbacks given at send time, in the sending
process, once their tasks have finished — on the loop's own thread, or on
a pool of callback threads (``Queue.callback_threads``) — and records each
delivery in the store."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from ._errors import InvalidArgumentError
from ._loops import run_on_changes, wake_waiters

if TYPE_CHECKING:
    from . import _core
    from ._types import HasId

__all__ = ["DELIVERED_KEY", "ReceiveLoop", "Watch", "deliver", "record_delivered"]

log = logging.getLogger("ferroq.receive")

#: The metadata key under which a task's record says when its callback was
#: delivered (ISO 8601, UTC): the seed's CALLBACKED status, as a field.
DELIVERED_KEY = "callback_delivered_at"


def deliver(handle: HasId, callback: Callable[[Any], None]) -> None:
    """Calls ``callback(handle)``; an exception it raises is logged, not
    propagated (the sender's code is not the place to fail)."""
    try:
        callback(handle)
    except Exception:
        log.exception("callback for task %s raised", handle.id)


def record_delivered(store: _core.Store, tasks: list[_core.Task]) -> None:
    """Records that the callbacks of these finished tasks ran: a
    ``delivered`` event each in the store's feed, and the time under
    :data:`DELIVERED_KEY` in each task's metadata (when the metadata is
    a JSON object or empty; a task whose user metadata is another JSON
    value keeps it unchanged). Failures are logged: the callbacks ran."""
    if not tasks:
        return
    try:
        errors = store.ack_callbacks([t.id for t in tasks])
    except Exception as e:
        log.warning("callback delivery of %d task(s) not recorded: %s", len(tasks), e)
        return
    try:
        at = datetime.fromtimestamp(store.now_ms() / 1000, tz=timezone.utc)
    except Exception as e:  # a closed store
        log.warning("callback delivery not recorded: %s", e)
        return
    stamp = at.isoformat(timespec="milliseconds")
    for task, err in zip(tasks, errors):
        if err is not None:
            continue  # purged or deleted meanwhile: nothing to mark
        try:
            meta = json.loads(task.metadata) if task.metadata else {}
        except ValueError:
            continue
        if not isinstance(meta, dict):
            continue
        meta[DELIVERED_KEY] = stamp
        try:
            store.set_metadata(task.id, json.dumps(meta, allow_nan=False))
        except Exception as e:
            log.warning("callback delivery of task %s not recorded: %s", task.id, e)


class Watch(NamedTuple):
    """One function waiting for a task to finish."""

    handle: HasId
    callback: Callable[[Any], None]
    #: True for a user's callback (its run is recorded as a delivery);
    #: False for ferroq's own bookkeeping (e.g. freeing objects passed by
    #: reference), which is not.
    counts: bool = True


class ReceiveLoop:
    """Watches sent tasks and calls their callbacks once they finish.

    ``threads`` callbacks run at once: with 1 (the default) they run one
    after another on the loop's thread, in the order their tasks are
    seen finished; with more, each finished task's callbacks run on a pool
    of that many threads, so a slow callback does not hold up the others.
    """

    def __init__(self, store: _core.Store, *, threads: int = 1) -> None:
        self.store = store
        self._pending: dict[int, list[Watch]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pool: Optional[ThreadPoolExecutor] = None
        self._futures: set[Future[None]] = set()
        self.threads = check_threads(threads)

    @property
    def threads(self) -> int:
        """How many callbacks may run at once."""
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        n = check_threads(n)
        with self._lock:
            self._threads = n
            old, self._pool = self._pool, None
            if n > 1:
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="ferroq-callback")
        if old is not None:
            old.shutdown(wait=False)  # callbacks running there finish on their own

    def watch(self, handle: HasId, callback: Callable[[Any], None], *, counts: bool = True) -> None:
        """Calls ``callback(handle)`` once the task has finished (``counts``:
        see :class:`Watch`)."""
        with self._lock:
            self._pending.setdefault(handle.id, []).append(Watch(handle, callback, counts))

    def tick(self) -> int:
        """One step: looks up every watched task once and hands the
        callbacks of those finished to :meth:`dispatch`. Returns how many
        callbacks were handed over."""
        with self._lock:
            ids = list(self._pending)
        if not ids:
            return 0
        ran = 0
        inline: list[_core.Task] = []
        for task in self.store.get_many(ids):
            if task is None or task.status in ("queued", "running"):
                continue
            with self._lock:
                waiting = self._pending.pop(task.id, [])
            if not waiting:
                continue
            ran += len(waiting)
            if self.dispatch(task, waiting):
                inline.append(task)
        # Callbacks run here are recorded in one batch.
        record_delivered(self.store, inline)
        return ran

    def dispatch(self, task: _core.Task, waiting: list[Watch]) -> bool:
        """Runs the callbacks of a finished task, here or on the pool.
        Returns True when they ran here and their delivery is still to be
        recorded by the caller (:meth:`tick` records those in one batch)."""
        with self._lock:
            pool = self._pool
        if pool is None:
            run_watches(waiting)
            return any(w.counts for w in waiting)
        future = pool.submit(self._run_and_record, task, waiting)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return False

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run_and_record(self, task: _core.Task, waiting: list[Watch]) -> None:
        run_watches(waiting)
        if any(w.counts for w in waiting):
            record_delivered(self.store, [task])

    def run(self) -> None:
        """Ticks until stopped, waking when the store changes."""
        run_on_changes(self.store, self._stopped, self.tick, log, "receive loop")

    def start(self) -> None:
        """Starts the loop on a daemon thread."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self.run, name="ferroq-receive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the loop, first delivering callbacks of tasks already
        finished; callbacks running on the pool get ``timeout`` seconds to
        end (they are not interrupted, only no longer waited for)."""
        try:
            self.tick()
        except Exception:
            pass
        self._stopped.set()
        if self._thread is not None:
            wake_waiters(self.store)
            self._thread.join(timeout=2.0)
        with self._lock:
            futures = list(self._futures)
            pool, self._pool = self._pool, None
        if futures:
            wait_futures(futures, timeout=timeout)
        if pool is not None:
            pool.shutdown(wait=False)


def run_watches(waiting: list[Watch]) -> None:
    """Calls each waiting function with its handle (see :func:`deliver`)."""
    for w in waiting:
        deliver(w.handle, w.callback)


def check_threads(n: object) -> int:
    """``n`` when it is an int >= 1, else :class:`InvalidArgumentError`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"callback threads must be an int >= 1, got {n!r}")
    return n
