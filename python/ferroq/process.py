"""The blocking batch run behind :meth:`Queue.process`: enqueue a frame's
rows (idempotently), run them with a :class:`QueueScheduler` serving only
the batch's queue, show progress, and return the results frame.

Resuming needs nothing of its own: rows are keyed, so enqueueing the same
frame again stores only what is missing; finished rows stay finished; a
Ctrl+C releases claimed rows that had not started; and a run that was
killed leaves its rows leased to a dead process, which the scheduler's
cleanup step recovers as it starts. Failed rows stay failed unless the run
is asked to retry them (``retry_failed=True``).

The function given is the function run, on every row of the batch: the
scheduler sees it under every task name the batch's rows were stored under
(rows enqueued alone, or, with ``rebind=True``, for another function), and
nothing else; a batch of another function's rows is refused up front
(:func:`ferroq.frames.check_function`).
"""

from __future__ import annotations

import sys
import threading
import time
import typing
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from pydantic import BaseModel

from ._errors import InvalidArgumentError
from ._polars import require_polars
from ._types import FINISHED
from .backoff import Backoff
from .frames import (
    ROW,
    Manifest,
    as_task,
    batch_queue,
    check_function,
    default_batch,
    enqueue_frame,
    fit_rows,
    results_frame,
)
from .progress import ProgressStyle, open_progress
from .registry import Overlay
from .resilience import RateLimit, backing_off
from .scheduler import QueueScheduler
from .task_function import TaskFunction

if TYPE_CHECKING:
    import polars as pl

    from ._connection import Connection

__all__ = ["process"]

# How often the store is asked whether the batch has finished, when the
# scheduler's own counts do not already say so.
_CHECK_EVERY_S = 1.0


def _return_model(fn: TaskFunction[Any, Any]) -> Optional[type[BaseModel]]:
    try:
        hint = typing.get_type_hints(fn.fn).get("return")
    except Exception:
        return None
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


class _BatchTasks(Overlay):
    """The registry as a batch run's scheduler sees it: the run's function
    under each task name of the batch's rows, and nothing else (a row of
    any other name fails as unknown, naming it, rather than running some
    registered function the caller did not give)."""

    def find(self, name: str) -> Optional[TaskFunction[Any, Any]]:
        """The run's function for the batch's names, else None."""
        return self._replacements.get(name)


def _running_as(
    fn: TaskFunction[Any, Any],
    names: list[str],
    manifest: Optional[Manifest],
    limit: Optional[RateLimit],
) -> Overlay:
    """The registry as the run's scheduler sees it: ``fn`` (fitted to rows
    stored another way, rate-limited when asked) under ``names``. Only that
    scheduler runs the wrapper; the registry and any other scheduler in the
    process are left alone."""
    run = fn
    stored = manifest.tasks or [] if manifest is not None else []
    if any(t != fn.name for t in stored):
        # Rows enqueued alone, or for another function (rebind=True).
        run = TaskFunction(fit_rows(fn, manifest), fn.name, fn.defaults, fn.bound_queue)
    if limit is not None:
        run = TaskFunction(limit.wrap(run.fn), fn.name, fn.defaults, fn.bound_queue)
    return _BatchTasks(dict.fromkeys(names, run))


class _Counts:
    """Rows this run finished, counted by the scheduler's status hook, and
    rows waiting to be retried after a failed attempt (in backoff)."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self._retrying: set[int] = set()
        self._lock = threading.Lock()

    @property
    def retrying(self) -> int:
        """Rows back in the queue after a failed attempt, not yet claimed."""
        return len(self._retrying)

    def hook(self, task_id: int, old: str, new: str) -> None:
        """A status hook: counts moves to done and failed, and rows put back
        in the queue by a failed attempt until they run again."""
        with self._lock:
            if new == "done":
                self.done += 1
            elif new == "failed":
                self.failed += 1
            if new == "queued" and old == "running":
                self._retrying.add(task_id)
            else:
                self._retrying.discard(task_id)


def _retry_failed(queue: Connection, queue_name: str, batch: str) -> int:
    """Puts the batch's failed rows back in its queue with fresh attempts."""
    store = queue._store
    n = 0
    after: Optional[int] = None
    while True:
        page = store.list_tasks(
            queue=queue_name, status="failed", batch=batch, after_id=after, limit=1000
        )
        if not page:
            return n
        for err in store.retry_many([t.id for t in page]):
            if err is not None:
                raise err
        n += len(page)
        after = page[-1].id


def _label(batch: str) -> str:
    """What the progress display calls a batch: its label, without the
    ``__main__:`` a session with no script file gives its functions."""
    for prefix in ("__main__:", "__mp_main__:"):
        if batch.startswith(prefix):
            return batch[len(prefix) :]
    return batch


def run_batch(
    queue: Connection,
    fn: TaskFunction[Any, Any],
    *,
    batch: str,
    queue_name: str,
    names: list[str],
    manifest: Optional[Manifest],
    concurrency: int,
    qps: Optional[float],
    progress: ProgressStyle,
    lease: float,
    grace: float,
    on_interrupt: str,
) -> bool:
    """Runs the batch's queue until nothing in it is queued or running.
    Returns False when Ctrl+C stopped it first (with ``on_interrupt=
    "return"``; with ``"raise"`` the ``KeyboardInterrupt`` propagates)."""
    store = queue._store
    st = {status: n for q, status, n in store.counts() if q == queue_name}
    done0, failed0 = st.get("done", 0), st.get("failed", 0)
    pending = st.get("queued", 0) + st.get("running", 0)
    bar = open_progress(
        done0 + failed0 + pending, done0 + failed0, label=_label(batch), style=progress, qps=qps
    )
    counts = _Counts()

    def show(note: str = "", final: bool = False) -> None:
        d, f = done0 + counts.done, failed0 + counts.failed
        waiting = counts.retrying + backing_off()
        if final:
            bar.close(d, f, waiting, note)
        else:
            bar.update(d, f, waiting)

    scheduler = QueueScheduler(
        queue,
        concurrency=concurrency,
        queues=[queue_name],
        mode="asyncio" if fn.is_async else "thread",
        lease=lease,
        hooks=[counts.hook],
    )
    limit = RateLimit(qps) if qps is not None else None
    scheduler.state.tasks = _running_as(fn, names, manifest, limit)
    stopped = False
    try:
        scheduler.start()
        check_at = 0.0
        while True:
            time.sleep(0.1)
            show()
            now = time.monotonic()
            if counts.done + counts.failed >= pending or now >= check_at:
                if store.unfinished(queue_name) == 0:
                    break
                check_at = now + _CHECK_EVERY_S
        show(final=True)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"\nCtrl+C: stopping; running rows get {grace:g} s to finish "
            "(Ctrl+C again to stop now)\n"
        )
        sys.stderr.flush()
        try:
            scheduler.stop(grace)
        except KeyboardInterrupt:
            # Stop now: rows still running are released for the next run.
            scheduler.stop(0)
        stopped = True
        left = store.unfinished(queue_name)
        # Drawn after the grace period: rows finished in it are counted.
        show(f"stopped with {left:,} rows left: run it again to continue", final=True)
        if on_interrupt == "raise":
            raise
        return False
    finally:
        if not stopped:
            scheduler.stop(grace)
    return True


def process(
    queue: Connection,
    fn: Union[Callable[..., Any], str],
    frame: Any = None,
    *,
    batch: Optional[str] = None,
    key: Union[str, Sequence[str], None] = None,
    queue_name: Optional[str] = None,
    concurrency: int = 10,
    qps: Optional[float] = None,
    retries: int = 3,
    backoff: Optional[Backoff] = None,
    progress: ProgressStyle = True,
    model: Optional[type[Any]] = None,
    include: Union[str, Sequence[str], None] = FINISHED,
    lease: float = 30.0,
    grace: float = 10.0,
    retry_failed: bool = False,
    rebind: bool = False,
    on_interrupt: str = "raise",
    order: str = "id",
) -> pl.DataFrame:
    """See :meth:`Queue.process`."""
    require_polars()  # fail before anything is stored when Polars is missing
    if qps is not None and not 0 < qps < float("inf"):
        raise InvalidArgumentError(f"qps must be a finite number > 0, got {qps!r}")
    if on_interrupt not in ("raise", "return"):
        raise InvalidArgumentError(
            f"on_interrupt must be 'raise' or 'return', got {on_interrupt!r}"
        )
    if order not in ("id", "finished"):
        raise InvalidArgumentError(f"order must be 'id' or 'finished', got {order!r}")
    if progress not in (True, False, "auto", "rich", "plain"):
        raise InvalidArgumentError(
            f"progress must be True, False, 'auto', 'rich' or 'plain', got {progress!r}"
        )
    task = as_task(queue, fn)
    batch = batch or default_batch(queue, task.name)
    qname = queue_name or batch_queue(batch)
    names, _ = check_function(queue, batch, task, rebind=rebind)
    if frame is not None:
        enqueue_frame(
            queue, frame, task=task, key=key, batch=batch, queue_name=qname,
            retries=retries, backoff=backoff, by_position=key is None,
        )
    names, manifest = check_function(queue, batch, task, rebind=rebind)
    if retry_failed:
        _retry_failed(queue, qname, batch)
    run_batch(
        queue, task, batch=batch, queue_name=qname, names=names, manifest=manifest,
        concurrency=concurrency, qps=qps, progress=progress, lease=lease, grace=grace,
        on_interrupt=on_interrupt,
    )
    out = results_frame(
        queue, batch, queue_name=qname, model=model or _return_model(task), include=include,
        order=order,
    )
    if order == "id" and ROW in out.columns and (key is None or frame is None):
        return out.sort(ROW)
    return out
