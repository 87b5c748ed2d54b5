"""Steering tasks from outside a scheduler: records put into a queue for a
person or another service to finish, hand-out of a chosen task, the verbs
that move a task by id (guarded by who holds it, or forced by an operator),
and per-queue options such as one-at-a-time hand-out.

Every move is one guarded store transaction, on every backend: a worker
name that does not hold a task's lease gets :class:`LeaseLostError` unless
the caller passes ``force=True`` (an operator's override).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Optional

from ._checks import seconds_to_ms
from ._errors import InvalidArgumentError, LeaseLostError
from .handle import TaskHandle

if TYPE_CHECKING:
    from . import _core
    from ._connection import Connection

__all__ = [
    "RECORD",
    "ExternalTask",
    "cancel_now",
    "fail",
    "heartbeat",
    "lease_ms",
    "release",
    "QueueOptions",
    "external_error",
    "metadata_json",
    "put",
    "when_ms",
]

#: The task name of records put with :meth:`Queue.put` (no function runs them).
RECORD = "ferroq:record"

OnTimeout = Literal["requeue", "expire"]


def external_error(message: str) -> str:
    """The stored form of an error reported from outside a worker."""
    return json.dumps({"type": "ferroq.ExternalError", "message": message, "traceback": ""})


def when_ms(conn: Connection, delay: Optional[float], run_at: Optional[datetime]) -> Optional[int]:
    """A run time in store ms: ``run_at``, or ``delay`` seconds from the
    store's now (its clock, manual or not); None for neither."""
    if run_at is not None and delay is not None:
        raise InvalidArgumentError("give delay or run_at, not both")
    if run_at is not None:
        return int(run_at.timestamp() * 1000)
    if delay is not None:
        return conn._store.now_ms() + seconds_to_ms(delay, "delay")
    return None


def lease_ms(lease: float) -> int:
    """A lease of ``lease`` seconds (checked) in ms."""
    return seconds_to_ms(lease, "lease", minimum=0.001)


def fail(
    conn: Connection, id: int, worker: str, error: str, *, retry: bool, force: bool = False
) -> str:
    """Fails task ``id`` as ``worker`` with the message ``error``; with
    ``retry`` it goes back to its queue while attempts remain."""
    return conn._store.fail(
        id, worker, external_error(error), "backoff" if retry else "never", force=force
    )


def heartbeat(conn: Connection, id: int, worker: str, lease: float, force: bool = False) -> bool:
    """Extends task ``id``'s lease as ``worker``; whether it was held."""
    ((_, held, _),) = conn._store.heartbeat([id], worker, lease_ms(lease), force=force)
    return held


def release(conn: Connection, id: int, worker: str, force: bool = False) -> None:
    """Gives task ``id`` back to its queue as ``worker`` (attempt not counted)."""
    (err,) = conn._store.release([id], worker, force=force)
    if err is not None:
        raise err


def cancel_now(conn: Connection, id: int) -> str:
    """Ends task ``id`` ``cancelled`` now, whoever holds it: a cancel as
    its current holder (read, then guarded by that worker name, so a task
    that changed hands in between is read again)."""
    store = conn._store
    for _ in range(5):
        t = store.get(id)
        if t is None or t.status != "running" or t.worker is None:
            return store.cancel(id)
        try:
            return store.cancel(id, t.worker)
        except LeaseLostError:
            continue  # it changed hands (or went back): look again
    return store.cancel(id)


def metadata_json(value: Any) -> Optional[str]:
    """User metadata as stored: JSON text (None stays None; NaN and
    infinities, which JSON has not, are refused)."""
    if value is None:
        return None
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {e}") from e


def put(
    conn: Connection,
    queue: str,
    payload: Any = None,
    *,
    key: Optional[str] = None,
    priority: int = 0,
    delay: Optional[float] = None,
    run_at: Optional[datetime] = None,
    metadata: Optional[Any] = None,
    on_duplicate: Literal["existing", "error"] = "existing",
) -> TaskHandle[Any]:
    """See :meth:`Queue.put`."""
    if on_duplicate not in ("existing", "error"):
        raise InvalidArgumentError(
            f"on_duplicate must be 'existing' or 'error', got {on_duplicate!r}"
        )
    task_id, _ = conn._store.enqueue(
        queue,
        RECORD,
        conn.encode(payload),
        priority=priority,
        run_at=when_ms(conn, delay, run_at),
        key=key,
        metadata=metadata_json(metadata),
        on_duplicate=on_duplicate,
    )
    return TaskHandle(conn, task_id, None)


@dataclass(frozen=True)
class QueueOptions:
    """A queue's store-wide options (:meth:`Queue.set_queue_options`)."""

    #: The queue.
    queue: str
    #: At most one task handed out at a time, store-wide.
    serial: bool = False
    #: Seconds a handed-out task has to be answered (None: no deadline).
    answer_timeout: Optional[float] = None
    #: What happens at that deadline: back to the queue, or ``expired``.
    on_timeout: OnTimeout = "requeue"
    #: Seconds finished tasks of this queue are kept (None: the store's).
    retention: Optional[float] = None
    #: Whether the queue is paused (:meth:`Queue.pause`): it takes sends
    #: but hands nothing out until :meth:`Queue.resume`.
    paused: bool = False
    #: Priority aging: a waiting task gains one priority level every
    #: ``aging`` seconds (None: plain priority order).
    aging: Optional[float] = None
    #: The queue this queue's failed tasks are filed in (None: they stay).
    dead_letter: Optional[str] = None
    #: Seconds failed tasks of this queue are kept (None: as ``retention``).
    dead_retention: Optional[float] = None

    @classmethod
    def _from_row(cls, row: _core._OptionsRow) -> QueueOptions:
        queue, serial, answer_ms, on_timeout, retention_ms = row[:5]
        paused, aging_ms, dead_letter, dead_ms = row[5:]
        return cls(
            queue=queue,
            serial=serial,
            answer_timeout=None if answer_ms is None else answer_ms / 1000,
            on_timeout="expire" if on_timeout == "expire" else "requeue",
            retention=None if retention_ms is None else retention_ms / 1000,
            paused=paused,
            aging=None if aging_ms is None else aging_ms / 1000,
            dead_letter=dead_letter,
            dead_retention=None if dead_ms is None else dead_ms / 1000,
        )


@dataclass
class ExternalTask:
    """A task handed out to be finished from outside a worker function (a
    person answering in a web page, another service): by
    :meth:`Queue.claim`, :meth:`Queue.active` or :meth:`Queue.start`. Its
    verbs act as ``worker``, the holder of its lease."""

    queue: Connection
    record: _core.Task
    worker: str

    @property
    def id(self) -> int:
        """The task id."""
        return self.record.id

    @property
    def name(self) -> str:
        """The task name it was sent under (:data:`RECORD` for records)."""
        return self.record.name

    @property
    def payload(self) -> Any:
        """The decoded payload: a record's value (:meth:`Queue.put`)."""
        return self.queue.decode(self.record.payload)

    @property
    def args(self) -> tuple[list[Any], dict[str, Any]]:
        """The decoded (positional, keyword) arguments of a function task."""
        args, kwargs = self.queue.decode(self.record.payload)
        return list(args), dict(kwargs)

    @property
    def metadata(self) -> Any:
        """The task's user metadata (decoded JSON), or None."""
        meta = self.record.metadata
        return None if meta is None else json.loads(meta)

    def remaining(self) -> Optional[float]:
        """Seconds left before the hand-out lapses (its lease, or the
        queue's answer deadline), as of when this record was read; None if
        it has none."""
        until = self.record.lease_until
        if until is None:
            return None
        return max(0.0, (until - self.queue._store.now_ms()) / 1000)

    def refresh(self) -> ExternalTask:
        """Reads the task's record again (status, lease, progress)."""
        t = self.queue._store.get(self.id)
        if t is not None:
            self.record = t
        return self

    def complete(self, result: Any = None) -> None:
        """Finishes the task with ``result``."""
        self.queue._store.complete(self.id, self.worker, self.queue.encode(result))

    def fail(self, error: str, *, retry: bool = False) -> str:
        """Fails the task; with ``retry`` it goes back to the queue while
        attempts remain. Returns its new status."""
        return fail(self.queue, self.id, self.worker, error, retry=retry)

    def progress(self, fraction: float) -> None:
        """Records progress, 0..1."""
        self.queue._store.progress(self.id, self.worker, float(fraction))

    def heartbeat(self, lease: float = 300.0) -> bool:
        """Extends the hand-out by ``lease`` seconds (a slow person keeps
        the task); returns whether it was still held."""
        return heartbeat(self.queue, self.id, self.worker, lease)

    def release(self) -> None:
        """Gives the task back to its queue, the attempt not counted."""
        release(self.queue, self.id, self.worker)

    def cancel(self) -> str:
        """Cancels the task as its holder: it ends ``cancelled`` now and
        never runs again (the next task of a serial queue can be handed
        out)."""
        return self.queue._store.cancel(self.id, self.worker)

