"""What a running task can see of itself: :func:`current_task`."""

from __future__ import annotations

import json
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ._checks import seconds
from ._errors import InvalidArgumentError, TaskCancelledError

if TYPE_CHECKING:
    from . import _core

__all__ = ["DetachedTask", "Fail", "Retry", "TaskContext", "current_task"]

_current: ContextVar[Optional[TaskContext]] = ContextVar("ferroq_current_task", default=None)

# How stale the cancellation flag may be before is_cancelled() asks the store.
_CANCEL_CHECK_S = 0.2


class Retry(Exception):
    """Raise inside a task to ask for another attempt after ``delay`` seconds
    (the task's backoff when None). Counts as an attempt; a task out of
    attempts fails with ``reason``."""

    def __init__(self, delay: Optional[float] = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = None if delay is None else seconds(delay, "Retry delay")
        self.reason = reason


class Fail:
    """Return (not raise) from a task to end the attempt as failed, for
    handlers written to report failure as a value::

        @task(retries=3)
        def charge(order: int) -> object:
            if not approved(order):
                return Fail("card declined", details={"order": order})
            return "charged"

    The task fails for good unless ``retry=True`` (then it retries by its
    backoff while attempts remain). Its record's ``error`` is ``message``,
    ``error_type`` is ``ferroq.Fail``, and ``details`` (any JSON value) is
    kept beside them (:attr:`TaskRecord.error_details`); ``handle.result()``
    raises :class:`TaskFailedError` with that message.
    """

    __slots__ = ("details", "message", "retry")

    def __init__(self, message: str, *, details: Any = None, retry: bool = False) -> None:
        self.message = str(message)
        self.details = details
        self.retry = bool(retry)

    def __repr__(self) -> str:
        return f"Fail({self.message!r}, details={self.details!r}, retry={self.retry})"


@dataclass(frozen=True)
class DetachedTask:
    """What a task function called directly (``fn(...)``, not sent) sees of
    itself: no stored record behind it, so id 0 and the first attempt."""

    name: str
    queue: str
    max_attempts: int
    id: int = 0
    attempts: int = 1
    key: Optional[str] = None
    batch: Optional[str] = None
    #: The task's ``@task(meta=...)`` as JSON, if any.
    metadata: Optional[str] = None


class TaskContext:
    """The running task's own view: id, attempt, progress and cancellation.

    A task function called directly (``fn(...)``) gets one too, with no
    store behind it: ``id`` is 0, ``attempt`` 1, :meth:`progress` is kept in
    :attr:`last_progress` only and :meth:`is_cancelled` is False.
    """

    def __init__(
        self,
        store: Optional[_core.Store],
        task: Union[_core.Task, DetachedTask],
        worker: str,
        report_progress: Optional[Callable[[float], None]] = None,
    ) -> None:
        self._store = store
        self._report_progress = report_progress
        self._task = task
        self.id: int = task.id
        self.worker = worker
        #: The last progress reported in this attempt (None before any).
        self.last_progress: Optional[float] = None
        self._cancelled = False
        self._checked = time.monotonic()

    @classmethod
    def detached(
        cls, name: str, queue: str, max_attempts: int, metadata: Optional[str] = None
    ) -> TaskContext:
        """The context of a task function called directly, not by a worker
        (``metadata``: its ``@task(meta=...)`` as JSON)."""
        return cls(None, DetachedTask(name, queue, max_attempts, metadata=metadata), "")

    @property
    def detached_call(self) -> bool:
        """True when the function was called directly (nothing is stored)."""
        return isinstance(self._task, DetachedTask)

    # Read from the task record on first use: most tasks never look.
    @property
    def name(self) -> str:
        """The task's registered name."""
        return self._task.name

    @property
    def queue(self) -> str:
        """The queue it was sent to."""
        return self._task.queue

    @property
    def attempt(self) -> int:
        """This attempt's number (1 for the first run)."""
        return self._task.attempts

    @property
    def max_attempts(self) -> int:
        """Attempts it may have in all (retries + 1)."""
        return self._task.max_attempts

    @property
    def key(self) -> Optional[str]:
        """Its idempotency key, if it was sent with one."""
        return self._task.key

    @property
    def batch(self) -> Optional[str]:
        """Its batch label, if any."""
        return self._task.batch

    @property
    def metadata(self) -> Any:
        """Its metadata, decoded (None when it has none): the task's
        ``@task(meta=...)`` with the send's ``metadata`` over it, as stored
        when it was sent (a function called directly sees its ``meta``)."""
        raw: Optional[str] = getattr(self._task, "metadata", None)
        return None if raw is None else json.loads(raw)

    def progress(self, value: float) -> None:
        """Records progress (0..1), readable through ``handle.progress()``
        (and here as :attr:`last_progress`)."""
        value = float(value)
        if self._report_progress is not None:
            self._report_progress(value)
        elif self._store is not None:
            self._store.progress(self.id, self.worker, value)
        elif not 0.0 <= value <= 1.0:
            # What the store would say, so a direct call fails where a sent one would.
            raise InvalidArgumentError(f"progress must be between 0 and 1, got {value}")
        self.last_progress = value

    def is_cancelled(self) -> bool:
        """True once someone asked this task to stop. Long tasks should check
        it and return (or call :meth:`raise_if_cancelled`)."""
        if (
            not self._cancelled
            and self._store is not None
            and time.monotonic() - self._checked > _CANCEL_CHECK_S
        ):
            self._checked = time.monotonic()
            t = self._store.get(self.id)
            self._cancelled = t is None or t.cancel_requested or t.status != "running"
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raises :class:`TaskCancelledError` if the task was asked to stop."""
        if self.is_cancelled():
            raise TaskCancelledError(f"task {self.id} was cancelled")

    def _flag_cancelled(self) -> None:
        self._cancelled = True

    def __repr__(self) -> str:
        return f"TaskContext(id={self.id}, name={self.name!r}, attempt={self.attempt})"


def current_task() -> TaskContext:
    """The context of the task running in this thread (or coroutine),
    including a task function called directly (``fn(...)``: a context with
    no store behind it, see :class:`TaskContext`).

    Raises ``RuntimeError`` when called outside a task.
    """
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("current_task() called outside a running ferroq task")
    return ctx
