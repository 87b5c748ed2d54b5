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

from .. import tracing
from .._errors import SerializationError, TaskCancelledError, TaskTimeoutError
from ..context import Fail, Retry, TaskContext, _current
from ..flow import parent_results
from ..registry import find
from ..serialization import decode, encode, split_context, with_context

if TYPE_CHECKING:
    from .. import _core
    from ..task_function import TaskFunction

__all__ = [
    "Outcome",
    "error_text",
    "execute_async",
    "execute_sync",
    "flow_payload",
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


def _decode_args(
    fn: TaskFunction[Any, Any], payload: bytes, ctx: TaskContext
) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = decode(payload, allow_pickle=fn.defaults.serializer == "pickle")
    # A chain or chord step takes its parents' results first. Process-mode
    # children have no store (ctx._store is None): their parent process
    # already put the results in the payload (flow_payload).
    if ctx._store is not None:
        extra = _flow_args(ctx._store, ctx._task, fn)
        if extra is not None:
            args = [*extra, *args]
    return fn.binder.args(args, kwargs)


def _flow_args(store: _core.Store, task: Any, fn: TaskFunction[Any, Any]) -> Optional[list[Any]]:
    """The parents' results a flow step takes (None: not a step that takes any)."""
    allow_pickle = fn.defaults.serializer == "pickle"

    def result_of(parent: _core.Task) -> Any:
        raw = parent.result
        if raw is None:
            return None
        parent_fn = find(parent.name)
        if parent_fn is not None:
            return parent_fn.result_from(raw, allow_pickle=allow_pickle)
        return decode(raw, allow_pickle=allow_pickle)

    return parent_results(store, task, result_of)


def flow_payload(store: _core.Store, task: _core.Task, fn: TaskFunction[Any, Any]) -> bytes:
    """The payload to run ``task`` with where no store is at hand (a
    process-mode child): for a flow step, its own with the parents'
    results put first; else the stored payload as it is."""
    extra = _flow_args(store, task, fn)
    if extra is None:
        return task.payload
    context, body = split_context(task.payload)
    args, kwargs = decode(body, allow_pickle=fn.defaults.serializer == "pickle")
    out = encode([[*extra, *args], kwargs], fn.defaults.serializer)
    return out if context is None else with_context(out, context)


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
            extra={"task_id": ctx.id, "task_name": ctx.name, "worker": ctx.worker}
            if ctx is not None
            else {},
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


def _produced(fn: TaskFunction[Any, Any], value: Any) -> Outcome:
    """The outcome of an attempt that returned ``value``: its result, or a
    failure when the task returned :class:`~ferroq.Fail`."""
    if isinstance(value, Fail):
        doc: dict[str, Any] = {"type": "ferroq.Fail", "message": value.message, "traceback": ""}
        if value.details is not None:
            doc["details"] = value.details
        try:
            error = json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError) as e:
            bad = SerializationError(f"Fail details are not JSON: {e}")
            return Outcome(error=error_text(bad, ""), retry="never")
        return Outcome(error=error, retry="backoff" if value.retry else "never")
    return Outcome(result=encode(value, fn.defaults.serializer))


def _failed_in(fn: TaskFunction[Any, Any], e: BaseException, ctx: TaskContext) -> Outcome:
    """:func:`_failed`, then the task's ``on_failure`` handler (if any) with
    the exception itself; the handler's own errors are logged, never
    change the outcome."""
    outcome = _failed(e, ctx)
    handler = fn.failure_handler
    if handler is not None and not outcome.cancelled:
        try:
            handler(e, ctx)
        except BaseException:  # noqa: B036 - sys.exit() in a handler is its own error too
            log.exception(
                "the on_failure handler of %s raised (task %s); the task's outcome stands",
                ctx.name,
                ctx.id,
                extra={"task_id": ctx.id, "task_name": ctx.name},
            )
    return outcome


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
    """Runs ``fn`` on the payload in this thread (``async def`` on a private
    loop), inside a ``process`` span when tracing is on."""
    if not tracing.active():
        return _execute_sync(fn, payload, ctx)
    with tracing.execute_span(ctx.name, ctx.queue, ctx.id, ctx.attempt, payload) as span:
        outcome = _execute_sync(fn, payload, ctx)
        tracing.set_outcome(span, error=outcome.error, cancelled=outcome.cancelled)
        return outcome


def _execute_sync(fn: TaskFunction[Any, Any], payload: bytes, ctx: TaskContext) -> Outcome:
    token = _current.set(ctx)
    try:
        try:
            args, kwargs = _decode_args(fn, payload, ctx)
        except Exception as e:
            return Outcome(error=error_text(e), retry="never")
        try:
            value = run_function(fn, args, kwargs)
            return _produced(fn, value)
        except BaseException as e:  # noqa: B036 - every way user code can end an attempt
            return _failed_in(fn, e, ctx)
    finally:
        _current.reset(token)


async def execute_async(
    fn: TaskFunction[Any, Any], payload: bytes, ctx: TaskContext, timeout: Optional[float]
) -> Outcome:
    """Runs ``fn`` on the running event loop: coroutines directly, plain
    functions on the loop's thread pool, inside a ``process`` span when
    tracing is on. A timeout or ``Task.cancel()`` really cancels the
    coroutine."""
    if not tracing.active():
        return await _execute_async(fn, payload, ctx, timeout)
    with tracing.execute_span(ctx.name, ctx.queue, ctx.id, ctx.attempt, payload) as span:
        outcome = await _execute_async(fn, payload, ctx, timeout)
        tracing.set_outcome(span, error=outcome.error, cancelled=outcome.cancelled)
        return outcome


async def _execute_async(
    fn: TaskFunction[Any, Any], payload: bytes, ctx: TaskContext, timeout: Optional[float]
) -> Outcome:
    _current.set(ctx)  # this asyncio task's own context
    try:
        args, kwargs = _decode_args(fn, payload, ctx)
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
        return _produced(fn, value)
    except asyncio.TimeoutError:
        return timeout_outcome(ctx.id, ctx.name)
    except asyncio.CancelledError as e:
        # Cancelled by us (a cancel request): the task ends cancelled. A
        # CancelledError the task's own code raised is a failure like any.
        return _failed_in(fn, e, ctx)
    except _Escaped as e:
        return _failed_in(fn, e.inner, ctx)
    except Exception as e:
        return _failed_in(fn, e, ctx)
    except BaseException as e:  # noqa: B036 - a plain function's SystemExit from the pool
        return _failed_in(fn, e, ctx)
