"""Running one task function and turning what happened into an
:class:`Outcome`, the same way in every execution mode."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Union

from .._errors import SerializationError, TaskCancelledError, TaskTimeoutError
from ..context import Retry, TaskContext, _current
from ..serialization import decode, encode

if TYPE_CHECKING:
    from ..task_function import TaskFunction

__all__ = [
    "Outcome",
    "error_text",
    "execute_async",
    "execute_sync",
    "run_function",
    "timeout_outcome",
]

RetrySpec = Union[str, int, None]

log = logging.getLogger("ferroq.worker")


def error_text(exc: BaseException, tb: Optional[str] = None) -> str:
    """The stored form of an exception: JSON with type, message, traceback."""
    cls = type(exc)
    return json.dumps(
        {
            "type": f"{cls.__module__}.{cls.__qualname__}",
            "message": str(exc),
            # The three-argument form: Python 3.9 has no one-argument one.
            "traceback": tb
            if tb is not None
            else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        }
    )


@dataclass
class Outcome:
    """What one attempt produced: a result, an error to retry (or not), or
    a cancellation."""

    result: Optional[bytes] = None
    error: Optional[str] = None
    retry: RetrySpec = None
    cancelled: bool = False


def timeout_outcome(task_id: int, name: str) -> Outcome:
    """The outcome of an attempt that ran past its timeout (retried by backoff)."""
    exc = TaskTimeoutError(f"task {task_id} ({name}) ran past its timeout")
    return Outcome(error=error_text(exc, ""), retry="backoff")


def run_function(fn: TaskFunction[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Runs a task function to completion in this thread (``async def``
    functions on a private event loop)."""
    if fn.is_async:
        return asyncio.run(fn.fn(*args, **kwargs))
    return fn.fn(*args, **kwargs)


def _decode_args(fn: TaskFunction[Any, Any], payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = decode(payload, allow_pickle=fn.defaults.serializer == "pickle")
    return fn.binder.args(args, kwargs)


def _failed(e: BaseException, ctx: Optional[TaskContext] = None) -> Outcome:
    """The outcome of an attempt that raised ``e``. Exceptions that are not
    ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, a stray
    ``CancelledError``...) end the attempt like any other failure: they mean
    the task's code gave up, not that the worker must stop."""
    if not isinstance(e, Exception):
        if isinstance(e, asyncio.CancelledError) and ctx is not None and ctx._cancelled:
            return Outcome(cancelled=True)
        log.warning(
            "task %s raised %s: the attempt fails (the worker carries on)",
            ctx.id if ctx is not None else "?",
            type(e).__name__,
        )
        return Outcome(error=error_text(e), retry="backoff")
    if isinstance(e, Retry):
        retry: RetrySpec = "backoff" if e.delay is None else max(0, int(e.delay * 1000))
        return Outcome(error=error_text(e, ""), retry=retry)
    if isinstance(e, TaskCancelledError):
        return Outcome(cancelled=True)
    if isinstance(e, SerializationError):
        # A value that cannot be (de)serialised will not improve with a retry.
        return Outcome(error=error_text(e), retry="never")
    return Outcome(error=error_text(e), retry="backoff")


class _Escaped(Exception):
    """Carries a ``SystemExit``/``KeyboardInterrupt`` raised by a coroutine
    task past asyncio, which would otherwise stop the whole event loop."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__(repr(inner))
        self.inner = inner


async def _guarded(coro: Any) -> Any:
    try:
        return await coro
    except (asyncio.CancelledError, Exception):
        raise
    except BaseException as e:  # SystemExit, KeyboardInterrupt, GeneratorExit...
        raise _Escaped(e) from e


def _guarded_call(call: Callable[[], Any]) -> Any:
    """:func:`_guarded` for a plain function on the loop's thread pool: an
    exception that is not an ``Exception`` must not cross the future (a
    ``GeneratorExit`` there escapes every handler of the awaiting task)."""
    try:
        return call()
    except Exception:
        raise
    except BaseException as e:
        raise _Escaped(e) from e


def execute_sync(fn: TaskFunction[Any, Any], payload: bytes, ctx: TaskContext) -> Outcome:
    """Runs ``fn`` on the payload in this thread (``async def`` on a private loop)."""
    token = _current.set(ctx)
    try:
        try:
            args, kwargs = _decode_args(fn, payload)
        except Exception as e:
            return Outcome(error=error_text(e), retry="never")
        try:
            value = run_function(fn, args, kwargs)
            return Outcome(result=encode(value, fn.defaults.serializer))
        except BaseException as e:  # noqa: B036 - every way user code can end an attempt
            return _failed(e, ctx)
    finally:
        _current.reset(token)


async def execute_async(
    fn: TaskFunction[Any, Any], payload: bytes, ctx: TaskContext, timeout: Optional[float]
) -> Outcome:
    """Runs ``fn`` on the running event loop: coroutines directly, plain
    functions on the loop's thread pool. A timeout or ``Task.cancel()``
    really cancels the coroutine."""
    _current.set(ctx)  # this asyncio task's own context
    try:
        args, kwargs = _decode_args(fn, payload)
    except Exception as e:
        return Outcome(error=error_text(e), retry="never")
    try:
        work: Awaitable[Any]
        if fn.is_async:
            work = _guarded(fn.fn(*args, **kwargs))
        else:
            call = functools.partial(_guarded_call, functools.partial(fn.fn, *args, **kwargs))
            run = contextvars.copy_context().run
            work = asyncio.get_running_loop().run_in_executor(None, run, call)
        value = await asyncio.wait_for(work, timeout)
        return Outcome(result=encode(value, fn.defaults.serializer))
    except asyncio.TimeoutError:
        return timeout_outcome(ctx.id, ctx.name)
    except asyncio.CancelledError as e:
        # Cancelled by us (a cancel request): the task ends cancelled. A
        # CancelledError the task's own code raised is a failure like any.
        return _failed(e, ctx)
    except _Escaped as e:
        return _failed(e.inner, ctx)
    except Exception as e:
        return _failed(e, ctx)
    except BaseException as e:  # noqa: B036 - a plain function's SystemExit from the pool
        return _failed(e, ctx)
