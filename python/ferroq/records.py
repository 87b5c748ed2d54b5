"""``TaskRecord``: a stored task as people read it — arguments, result and
error decoded, times as dates — for :meth:`Queue.get`, :meth:`Queue.list`
and :meth:`TaskHandle.info`, the CLI and the dashboard."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from . import _core
    from ._connection import Connection

__all__ = ["RECORD_NAME", "TaskRecord", "from_ms"]

#: The task name of records stored with :meth:`Queue.put` (a value, not a call).
RECORD_NAME = "ferroq:record"


def from_ms(ms: Optional[int]) -> Optional[datetime]:
    """A store time (ms since the epoch) as a timezone-aware UTC datetime."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class TaskRecord:
    """One stored task, decoded.

    Identity and state read as stored: ``id``, ``queue``, ``name``,
    ``status``, ``priority``, ``attempts``, ``max_attempts``, ``worker``,
    ``key``, ``batch``, ``cancel_requested``. Decoded on first use:
    ``args`` / ``kwargs`` (a function task's arguments), ``payload`` (the
    whole stored value: a record's value for :meth:`Queue.put`),
    ``result``, ``metadata`` (JSON), and the error as ``error`` (its
    message), ``error_type`` and ``traceback``. ``progress`` is the last
    fraction reported, 0.0 to 1.0. Times (``created_at``, ``run_at``,
    ``started_at``, ``finished_at``, ``lease_until``, ``expires_at``) are
    timezone-aware UTC datetimes. ``raw`` is the record exactly as the
    store returned it (payload and result bytes, times in ms).

    A payload or result pickled by a task that opted into
    ``serializer="pickle"`` decodes only on a queue that allows pickle;
    elsewhere reading ``args``, ``payload`` or ``result`` raises
    :class:`SerializationError` (the other fields still read).
    """

    __slots__ = ("_conn", "_error", "raw")

    def __init__(self, conn: Connection, raw: _core.Task) -> None:
        self._conn = conn
        self.raw = raw
        self._error: Optional[dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"<TaskRecord {self.id} {self.name!r} queue={self.queue!r} {self.status}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskRecord):
            return NotImplemented
        return self.id == other.id and self.raw_tuple() == other.raw_tuple()

    def __hash__(self) -> int:
        return hash(self.id)

    def raw_tuple(self) -> tuple[Any, ...]:
        """Every stored field, for comparing two reads of a task."""
        t = self.raw
        return (
            t.id, t.queue, t.name, t.payload, t.priority, t.status, t.run_at, t.attempts,
            t.max_attempts, t.lease_until, t.worker, t.key, t.batch, t.progress, t.result,
            t.error, t.created_at, t.started_at, t.finished_at, t.expires_at, t.metadata,
            t.cancel_requested,
        )

    # -- stored as is ---------------------------------------------------------

    @property
    def id(self) -> int:
        """The task id."""
        return self.raw.id

    @property
    def queue(self) -> str:
        """The queue it was sent to."""
        return self.raw.queue

    @property
    def name(self) -> str:
        """The task name it was sent under."""
        return self.raw.name

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``done``, ``failed``, ``cancelled`` or ``expired``."""
        return self.raw.status

    @property
    def priority(self) -> int:
        """Higher runs first."""
        return self.raw.priority

    @property
    def attempts(self) -> int:
        """Attempts started so far."""
        return self.raw.attempts

    @property
    def max_attempts(self) -> int:
        """Attempts allowed in all (retries + 1)."""
        return self.raw.max_attempts

    @property
    def worker(self) -> Optional[str]:
        """The worker holding (or that last held) it."""
        return self.raw.worker

    @property
    def key(self) -> Optional[str]:
        """Its idempotency key, if sent with one."""
        return self.raw.key

    @property
    def batch(self) -> Optional[str]:
        """The batch (DataFrame enqueue) it belongs to, if any."""
        return self.raw.batch

    @property
    def cancel_requested(self) -> bool:
        """A running task was asked to stop."""
        return self.raw.cancel_requested

    @property
    def progress(self) -> Optional[float]:
        """The last progress reported, a fraction from 0.0 to 1.0."""
        return self.raw.progress

    @property
    def finished(self) -> bool:
        """Whether it reached a final status."""
        return self.status not in ("queued", "running")

    # -- decoded --------------------------------------------------------------

    @property
    def payload(self) -> Any:
        """The stored payload, decoded: ``[args, kwargs]`` for a function
        task, the value for a record stored with :meth:`Queue.put`."""
        return self._conn.decode(self.raw.payload)

    @property
    def args(self) -> tuple[Any, ...]:
        """A function task's positional arguments (empty for a record)."""
        return self._call()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        """A function task's keyword arguments (empty for a record)."""
        return self._call()[1]

    def _call(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.name == RECORD_NAME:
            return (), {}
        value = self.payload
        if (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and isinstance(value[0], (list, tuple))
            and isinstance(value[1], dict)
        ):
            return tuple(value[0]), dict(value[1])
        return (value,), {}

    @property
    def result(self) -> Any:
        """The decoded result of a finished task (None when it has none)."""
        data = self.raw.result
        return None if not data else self._conn.decode(data)

    @property
    def metadata(self) -> Any:
        """The task's user metadata (decoded JSON), or None."""
        meta = self.raw.metadata
        return None if meta is None else json.loads(meta)

    def _error_doc(self) -> dict[str, Any]:
        if self._error is None:
            text = self.raw.error
            doc: dict[str, Any] = {}
            if text:
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = None
                doc = parsed if isinstance(parsed, dict) else {"message": text}
            self._error = doc
        return self._error

    @property
    def error(self) -> Optional[str]:
        """The last error's message (None if it never failed)."""
        message = self._error_doc().get("message")
        return None if message is None else str(message)

    @property
    def error_type(self) -> Optional[str]:
        """The last error's exception type, ``module.Name``."""
        kind = self._error_doc().get("type")
        return None if kind is None else str(kind)

    @property
    def error_details(self) -> Any:
        """The ``details`` a task gave :class:`~ferroq.Fail`, if any."""
        return self._error_doc().get("details")

    @property
    def traceback(self) -> Optional[str]:
        """The last error's traceback, as the worker formatted it."""
        tb = self._error_doc().get("traceback")
        return str(tb) if tb else None

    # -- times ----------------------------------------------------------------

    @property
    def created_at(self) -> datetime:
        """When it was sent."""
        at = from_ms(self.raw.created_at)
        assert at is not None
        return at

    @property
    def run_at(self) -> datetime:
        """When it is (or was) due."""
        at = from_ms(self.raw.run_at)
        assert at is not None
        return at

    @property
    def started_at(self) -> Optional[datetime]:
        """When its last attempt started."""
        return from_ms(self.raw.started_at)

    @property
    def finished_at(self) -> Optional[datetime]:
        """When it reached its final status."""
        return from_ms(self.raw.finished_at)

    @property
    def lease_until(self) -> Optional[datetime]:
        """When a running task's lease ends unless renewed."""
        return from_ms(self.raw.lease_until)

    @property
    def expires_at(self) -> Optional[datetime]:
        """The deadline after which a queued task expires unrun."""
        return from_ms(self.raw.expires_at)

    @property
    def duration(self) -> Optional[float]:
        """Seconds from its last start to its finish (finished tasks)."""
        if self.raw.started_at is None or self.raw.finished_at is None:
            return None
        return max(0.0, (self.raw.finished_at - self.raw.started_at) / 1000)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (times in ISO 8601); fields that
        cannot be decoded here hold ``"<undecodable: reason>"``."""
        out: dict[str, Any] = {}
        for field in (
            "id", "queue", "name", "status", "priority", "attempts", "max_attempts",
            "worker", "key", "batch", "progress", "cancel_requested",
        ):
            out[field] = getattr(self, field)
        for field in ("args", "kwargs", "result", "metadata"):
            try:
                out[field] = getattr(self, field)
            except Exception as e:  # noqa: BLE001 - shown, not raised, in a dump
                out[field] = f"<undecodable: {e}>"
        if isinstance(out.get("args"), tuple):
            out["args"] = list(out["args"])
        out["error"] = self.error
        out["error_type"] = self.error_type
        out["error_details"] = self.error_details
        out["traceback"] = self.traceback
        for field in (
            "created_at", "run_at", "started_at", "finished_at", "lease_until", "expires_at",
        ):
            at = getattr(self, field)
            out[field] = None if at is None else at.isoformat()
        out["duration"] = self.duration
        return out
