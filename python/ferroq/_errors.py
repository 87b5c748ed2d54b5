"""ferroq's exceptions. Every error ferroq raises is a :class:`FerroqError`;
each class also subclasses the builtin a caller would naturally catch
(``ValueError`` for bad arguments, ``OSError`` for an unreachable store, ...).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AlreadyFinishedError",
    "CorruptStoreError",
    "DuplicateKeyError",
    "FerroqError",
    "InvalidArgumentError",
    "InvalidTransitionError",
    "LeaseLostError",
    "NotAStoreError",
    "PayloadTooLargeError",
    "QueueFullError",
    "QueuePausedError",
    "SerializationError",
    "ShardMismatchError",
    "StoreError",
    "StoreInUseError",
    "StorePermissionError",
    "StoreUnavailableError",
    "TaskCancelledError",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "UnknownTaskError",
]


class FerroqError(Exception):
    """Root of every ferroq exception."""

    task_id: Optional[int] = None
    status: Optional[str] = None


class StoreError(FerroqError):
    """A storage failure with no more specific class."""


class TaskNotFoundError(FerroqError, LookupError):
    """No task has that id (or key)."""


class LeaseLostError(FerroqError):
    """The task is no longer running under this worker (its lease expired,
    it was recovered, released, or claimed by someone else)."""


class AlreadyFinishedError(FerroqError):
    """The task already reached a final status."""


class InvalidTransitionError(FerroqError):
    """The task's status does not allow this move (e.g. retrying a done task)."""


class InvalidArgumentError(FerroqError, ValueError):
    """An argument is out of range or malformed."""


class PayloadTooLargeError(FerroqError, ValueError):
    """A payload or result exceeds the store's size limit."""


class QueueFullError(FerroqError):
    """The queue holds its maximum number of unfinished tasks."""


class QueuePausedError(FerroqError):
    """The queue is paused (:meth:`Queue.pause`): it takes sends but hands
    no task out until it is resumed."""


class DuplicateKeyError(FerroqError):
    """A task with this key already exists in the queue (or the batch names
    it twice), and the send asked for that to be an error
    (``on_duplicate="error"``). Nothing of the batch was stored.
    ``queue`` and ``key`` name it; ``task_id`` is the existing task's id
    (None when the batch itself repeats the key)."""

    queue: Optional[str] = None
    key: Optional[str] = None


class StoreUnavailableError(FerroqError, OSError):
    """The store cannot be opened, created, written or reached."""


class StorePermissionError(StoreUnavailableError, PermissionError):
    """The process may not read or write the store."""


class NotAStoreError(FerroqError, ValueError):
    """The path or database holds something other than a ferroq store."""


class CorruptStoreError(FerroqError):
    """The store's database is damaged."""


class ShardMismatchError(FerroqError, ValueError):
    """The store was created with a different number of shards."""


class StoreInUseError(FerroqError):
    """The store is in use where the operation needs it idle: an offline
    :func:`~ferroq.reshard` of a store with running tasks or live workers.
    Nothing was written."""


class SerializationError(FerroqError, TypeError):
    """A value cannot be serialised (or deserialised) by the task's serializer."""


class UnknownTaskError(FerroqError, LookupError):
    """No task function is registered under that name."""


class TaskFailedError(FerroqError):
    """A task raised; carries the remote exception's type, message and traceback."""

    def __init__(
        self,
        message: str,
        *,
        exc_type: str = "",
        exc_message: str = "",
        traceback: str = "",
        task_id: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback = traceback
        self.task_id = task_id


class TaskCancelledError(FerroqError):
    """The task was cancelled before it produced a result."""


class TaskExpiredError(FerroqError):
    """The task's deadline passed before it started."""


class TaskTimeoutError(FerroqError, TimeoutError):
    """Waiting for a result, or running a task, took longer than allowed."""
