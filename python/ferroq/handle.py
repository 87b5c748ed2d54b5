"""``TaskHandle``: the caller's view of one sent task."""

from __future__ import annotations

import asyncio
import json
import numbers
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

from . import _errors
from ._checks import seconds
from ._errors import (
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from ._watch import AsyncWatch
from .records import TaskRecord
from .serialization import decode

if TYPE_CHECKING:
    from . import _core
    from ._connection import Connection
    from ._types import SentTask

__all__ = ["TaskHandle"]

R = TypeVar("R")

# Longest single wait slice for result(timeout=None).
_FOREVER_SLICE = 3600.0


class TaskHandle(Generic[R]):
    """A sent task: its id, status, progress, and (once done) its result."""

    __slots__ = ("_final", "_fn", "id", "queue")

    def __init__(self, queue: Connection, id: int, fn: Optional[SentTask[R]] = None) -> None:
        self.queue = queue
        self.id = id
        self._fn = fn
        # The record of the task once seen done (by ferroq.wait and friends):
        # a done task never changes, so result() needs no further read.
        self._final: Optional[_core.Task] = None

    def _remember(self, t: _core.Task) -> None:
        """Keeps a record read elsewhere that shows the task done."""
        if t.status == "done":
            self._final = t

    def info(self) -> TaskRecord:
        """The stored task record, decoded (:class:`~ferroq.TaskRecord`)."""
        t = self.queue._store.get(self.id)
        if t is None:
            raise TaskNotFoundError(f"task {self.id} not found (purged after its retention?)")
        return TaskRecord(self.queue, t)

    def status(self) -> str:
        """The status: ``waiting``, ``queued``, ``running``, ``done``, ``failed``,
        ``cancelled`` or ``expired``."""
        return self.info().status

    def progress(self) -> Optional[float]:
        """The last progress (0..1) the task reported, if any."""
        return self.info().progress

    def cancel(self) -> str:
        """Cancels the task: a queued one at once (returns ``cancelled``); a
        running one is asked to stop (returns ``running``)."""
        return self.queue._store.cancel(self.id)

    def result(self, timeout: Optional[float] = None) -> R:
        """Waits for the task to finish and returns its result.

        Raises the task's own exception type when it can be rebuilt (else
        :class:`TaskFailedError`), :class:`TaskCancelledError`,
        :class:`TaskExpiredError`, or :class:`TaskTimeoutError` (a
        ``TimeoutError``) when ``timeout`` seconds pass first. ``None`` or
        ``inf`` waits as long as it takes; a timeout <= 0 looks once.
        """
        if self._final is not None:
            done: R = outcome(self._final, self._fn, allow_pickle=self.queue.allow_pickle)
            return done
        store = self.queue._store
        if timeout is None:
            t = store.wait_finished(self.id, _FOREVER_SLICE)
            while t.status in ("waiting", "queued", "running"):
                t = store.wait_finished(self.id, _FOREVER_SLICE)
        else:
            # The store treats <= 0 as "look once", inf as "no limit", and
            # refuses NaN (which max(0.0, nan) would have turned into 0).
            if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
                raise _errors.InvalidArgumentError(
                    f"timeout must be a number of seconds or None, got {timeout!r}"
                )
            t = store.wait_finished(self.id, timeout)
        value: R = outcome(t, self._fn, allow_pickle=self.queue.allow_pickle)
        return value

    async def aresult(self, timeout: Optional[float] = None) -> R:
        """:meth:`result` for asyncio code: waits without blocking the event
        loop (one thread per store watches every awaited task of this
        process, reading them in batches after each change of the store).
        ``await handle`` is ``await handle.aresult()``. Cancelling the
        awaiting coroutine stops the wait, not the task."""
        if self._final is None:
            if timeout is not None:
                timeout = seconds(timeout, "timeout", inf_ok=True)
            future = AsyncWatch.add(self.queue._store, self.id)
            try:
                t = await asyncio.wait_for(
                    future, None if timeout is None or timeout == float("inf") else timeout
                )
            except asyncio.TimeoutError:
                raise TaskTimeoutError(
                    f"task {self.id} still unfinished after {timeout} s"
                ) from None
            if t is None:
                raise TaskNotFoundError(
                    f"task {self.id} not found (deleted, purged, or its store closed)"
                )
            self._remember(t)
            if self._final is None:
                # Not done: raised the way result() raises it (a flow's handle
                # names the step that stopped the flow), after one more read.
                return self.result(timeout=0)
        done: R = outcome(self._final, self._fn, allow_pickle=self.queue.allow_pickle)
        return done

    def __await__(self) -> Generator[Any, None, R]:
        """``await handle``: the task's result, waited for without blocking
        the event loop (see :meth:`aresult`)."""
        return self.aresult().__await__()

    def __repr__(self) -> str:
        name = self._fn.name if self._fn else "?"
        return f"<TaskHandle {self.id} {name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id and other.queue is self.queue

    def __hash__(self) -> int:
        return hash(self.id)


def outcome(t: _core.Task, fn: Optional[SentTask[Any]], *, allow_pickle: bool) -> Any:
    """The result of a finished task, or the exception it stands for."""
    if t.status == "done":
        raw = t.result
        if raw is None:
            return None
        if fn is not None:
            return fn.result_from(raw, allow_pickle=allow_pickle)
        return decode(raw, allow_pickle=allow_pickle)
    if t.status == "failed":
        raise failure(t)
    if t.status == "cancelled":
        raise TaskCancelledError(f"task {t.id} ({t.name}) was cancelled")
    if t.status == "expired":
        raise TaskExpiredError(f"task {t.id} ({t.name}) expired before it started")
    raise TaskTimeoutError(f"task {t.id} ({t.name}) is still {t.status}")


def failure(t: _core.Task) -> BaseException:
    """Rebuilds the exception a failed task stored: its own class when that
    class is already imported here and takes a message, else
    :class:`TaskFailedError`; the remote traceback rides along."""
    try:
        info = json.loads(t.error or "{}")
    except ValueError:
        info = {"type": "", "message": t.error or "", "traceback": ""}
    exc_type = str(info.get("type", ""))
    message = str(info.get("message", ""))
    tb = str(info.get("traceback", ""))
    summary = f"task {t.id} ({t.name}) failed: {exc_type.rsplit('.', 1)[-1]}: {message}"
    wrapper = TaskFailedError(
        summary, exc_type=exc_type, exc_message=message, traceback=tb, task_id=t.id
    )
    rebuilt = _rebuild(exc_type, message)
    if rebuilt is None:
        return wrapper
    rebuilt.__cause__ = wrapper
    if hasattr(rebuilt, "add_note") and tb:
        rebuilt.add_note(f"Remote traceback (task {t.id}):\n{tb}")
    return rebuilt


def _rebuild(exc_type: str, message: str) -> Optional[BaseException]:
    module_name, _, qualname = exc_type.rpartition(".")
    module = sys.modules.get(module_name or "builtins")
    if module is None:
        return None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, Exception)):
        return None
    if obj is _errors.TaskFailedError:
        return None
    try:
        exc = obj(message)
    except Exception:
        return None
    return exc if isinstance(exc, Exception) else None
