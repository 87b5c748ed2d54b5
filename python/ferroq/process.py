"""The blocking batch run behind :meth:`Queue.process`: enqueue a frame's
rows (idempotently), run them with a :class:`QueueScheduler` serving only
the batch's queue, show progress, and return the results frame.

Resuming needs nothing of its own: rows are keyed, so enqueueing the same
frame again stores only what is missing; finished rows stay finished; a
Ctrl+C releases claimed rows that had not started; and a run that was
killed leaves its rows leased to a dead process, which the scheduler's
cleanup step recovers as it starts.
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
from .frames import ROW, as_task, batch_queue, enqueue_frame, results_frame
from .progress import ProgressBar
from .registry import Overlay
from .resilience import RateLimit
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


def _running_as(fn: TaskFunction[Any, Any], limit: Optional[RateLimit]) -> Overlay:
    """The registry as the run's scheduler sees it: ``fn`` under its name,
    rate-limited when asked. Only that scheduler runs the wrapper; the
    registry and any other scheduler in the process are left alone."""
    run = fn
    if limit is not None:
        run = TaskFunction(limit.wrap(fn.fn), fn.name, fn.defaults, fn.bound_queue)
    return Overlay({fn.name: run})


class _Counts:
    """Rows this run finished, counted by the scheduler's status hook."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()

    def hook(self, task_id: int, old: str, new: str) -> None:
        """A status hook: counts moves to done and failed."""
        if new in ("done", "failed"):
            with self._lock:
                if new == "done":
                    self.done += 1
                else:
                    self.failed += 1


def run_batch(
    queue: Connection,
    fn: TaskFunction[Any, Any],
    *,
    batch: str,
    queue_name: str,
    concurrency: int,
    qps: Optional[float],
    progress: bool,
    lease: float,
    grace: float,
) -> None:
    """Runs the batch's queue until nothing in it is queued or running."""
    store = queue._store
    st = {status: n for q, status, n in store.counts() if q == queue_name}
    done0, failed0 = st.get("done", 0), st.get("failed", 0)
    pending = st.get("queued", 0) + st.get("running", 0)
    bar = ProgressBar(done0 + failed0 + pending, done0 + failed0, label=batch, enabled=progress)
    counts = _Counts()
    scheduler = QueueScheduler(
        queue,
        concurrency=concurrency,
        queues=[queue_name],
        mode="asyncio" if fn.is_async else "thread",
        lease=lease,
        hooks=[counts.hook],
    )
    limit = RateLimit(qps) if qps is not None else None
    scheduler.state.tasks = _running_as(fn, limit)
    stopped = False
    try:
        scheduler.start()
        check_at = 0.0
        while True:
            time.sleep(0.1)
            bar.update(done0 + counts.done, failed0 + counts.failed)
            now = time.monotonic()
            if counts.done + counts.failed >= pending or now >= check_at:
                if store.unfinished(queue_name) == 0:
                    break
                check_at = now + _CHECK_EVERY_S
        bar.close(done0 + counts.done, failed0 + counts.failed)
    except KeyboardInterrupt:
        bar.close(
            done0 + counts.done,
            failed0 + counts.failed,
            f"Ctrl+C: stopping; running rows get {grace:g} s to finish "
            "(Ctrl+C again to stop now)",
        )
        try:
            scheduler.stop(grace)
        except KeyboardInterrupt:
            # Stop now: rows still running are released for the next run.
            scheduler.stop(0)
        stopped = True
        left = store.unfinished(queue_name)
        sys.stderr.write(f"stopped with {left:,} rows left: run it again to continue\n")
        raise
    finally:
        if not stopped:
            scheduler.stop(grace)


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
    progress: bool = True,
    model: Optional[type[Any]] = None,
    include: Union[str, Sequence[str], None] = FINISHED,
    lease: float = 30.0,
    grace: float = 10.0,
) -> pl.DataFrame:
    """See :meth:`Queue.process`."""
    require_polars()  # fail before anything is stored when Polars is missing
    if qps is not None and not 0 < qps < float("inf"):
        raise InvalidArgumentError(f"qps must be a finite number > 0, got {qps!r}")
    task = as_task(queue, fn)
    batch = batch or task.name
    qname = queue_name or batch_queue(batch)
    if frame is not None:
        enqueue_frame(
            queue, frame, task=task, key=key, batch=batch, queue_name=qname,
            retries=retries, backoff=backoff, by_position=key is None,
        )
    run_batch(
        queue, task, batch=batch, queue_name=qname, concurrency=concurrency, qps=qps,
        progress=progress, lease=lease, grace=grace,
    )
    out = results_frame(
        queue, batch, queue_name=qname, model=model or _return_model(task), include=include
    )
    return out.sort(ROW) if key is None and ROW in out.columns else out
