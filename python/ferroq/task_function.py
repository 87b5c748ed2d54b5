"""``TaskFunction``: a function that can be sent to a queue, and
:class:`TaskCall`, the send path every ``send`` goes through
(:meth:`TaskCall.send_to`). ``@task`` builds them (:mod:`ferroq.task`)."""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generic,
    Optional,
    TypeVar,
    Union,
    cast,
)

from typing_extensions import ParamSpec

from . import _connection, _default
from ._checks import seconds
from ._errors import InvalidArgumentError, QueueFullError
from .context import TaskContext, _current
from .handle import TaskHandle
from .options import NO_OVERRIDES, SendOptions, TaskOptions, check_retries
from .resources import stored_requirements
from .serialization import ArgBinder, decode, encode

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["TaskCall", "TaskFunction"]

P = ParamSpec("P")
R = TypeVar("R")


class TaskFunction(Generic[P, R]):
    """A function registered as a task. Calling it runs it here and now;
    :meth:`send` enqueues it and returns a :class:`TaskHandle`."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        options: TaskOptions,
        queue: Optional[Connection] = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.defaults = options
        self.bound_queue = queue
        self.is_async = inspect.iscoroutinefunction(fn)
        self.binder = ArgBinder(fn)
        self._enqueue_defaults: Optional[dict[str, Any]] = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = getattr(fn, "__module__", "")
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the function directly, in this process. Inside, a
        :func:`~ferroq.current_task` that is not already set (by a running
        task) is a context with no store behind it: id 0, attempt 1,
        progress kept in memory, never cancelled."""
        if _current.get() is not None:
            return self.fn(*args, **kwargs)
        if self.is_async:
            # The body runs when awaited: set the context there, not here.
            return cast(R, self._call_async(args, kwargs))
        token = _current.set(self._detached_context())
        try:
            return self.fn(*args, **kwargs)
        finally:
            _current.reset(token)

    def _detached_context(self) -> TaskContext:
        d = self.defaults
        return TaskContext.detached(self.name, d.queue, d.retries + 1)

    async def _call_async(self, args: Any, kwargs: Any) -> Any:
        _current.set(self._detached_context())  # this coroutine's own context
        return await cast(Any, self.fn)(*args, **kwargs)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueues a call; returns its handle once the task is durable.

        A ``callback=`` keyword is also accepted here (it is not passed to
        the function); :meth:`options` is the typed way to give one.
        """
        callback = cast(Optional[Callable[[Any], None]], kwargs.pop("callback", None))
        opts = SendOptions(callback=callback) if callback is not None else NO_OVERRIDES
        return TaskCall(self, opts).send(*args, **kwargs)

    def options(
        self,
        *,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        delay: Optional[Union[float, timedelta]] = None,
        run_at: Optional[datetime] = None,
        key: Optional[str] = None,
        batch: Optional[str] = None,
        retries: Optional[int] = None,
        expires: Optional[Union[float, timedelta]] = None,
        metadata: Optional[dict[str, Any]] = None,
        wait: Optional[float] = None,
        callback: Optional[Callable[[TaskHandle[R]], None]] = None,
    ) -> TaskCall[P, R]:
        """Overrides for one send: ``fn.options(priority=5, key="a").send(x)``.

        ``delay`` (seconds or timedelta) or ``run_at`` schedule the task;
        ``key`` makes the send idempotent within the queue; ``expires``
        (seconds from now) is a deadline to start by; ``wait`` (seconds) waits
        for room when the queue is at capacity instead of raising
        :class:`QueueFullError`; ``callback`` is called with the handle in
        this process once the task has finished.
        """
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        if isinstance(expires, timedelta):
            expires = expires.total_seconds()
        return TaskCall(
            self,
            SendOptions(
                queue=queue,
                priority=priority,
                delay=delay,
                run_at=run_at,
                key=key,
                batch=batch,
                retries=retries,
                expires=expires,
                metadata=metadata,
                wait=wait,
                callback=callback,
            ),
        )

    def enqueue_defaults(self) -> dict[str, Any]:
        """The store's enqueue options this task sends with when a call
        overrides nothing (only those that differ from the store's own
        defaults, so the native call parses as little as possible)."""
        if self._enqueue_defaults is None:
            d = self.defaults
            opts: dict[str, Any] = {}
            if d.priority:
                opts["priority"] = d.priority
            if d.retries:
                opts["max_attempts"] = d.retries + 1
            if d.backoff is not None:
                opts["backoff"] = d.backoff.encode()
            if d.result_ttl is not None:
                opts["result_ttl_ms"] = int(d.result_ttl * 1000)
            if d.requires is not None:
                opts["requires"] = json.dumps(stored_requirements(d.requires))
            self._enqueue_defaults = opts
        return self._enqueue_defaults

    def result_from(self, raw: bytes, *, allow_pickle: bool) -> R:
        """The return value a stored result stands for (a task that pickles
        its values may unpickle its own result on any queue)."""
        if self.defaults.serializer == "pickle":
            allow_pickle = True
        value: R = self.binder.result(decode(raw, allow_pickle=allow_pickle))
        return value

    def __repr__(self) -> str:
        return f"<task {self.name} queue={self.defaults.queue!r}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # Plain functions only: methods would need their instance serialised.
        return self


class TaskCall(Generic[P, R]):
    """A task with per-call overrides, ready to :meth:`send`."""

    def __init__(self, fn: TaskFunction[P, R], overrides: SendOptions) -> None:
        self.fn = fn
        self.overrides = overrides

    def send(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueues the call with these overrides, into the queue the task is
        bound to, else the default queue."""
        conn = self.fn.bound_queue or _default.get_default()
        return self.send_to(conn, *args, **kwargs)

    def send_to(self, conn: Connection, /, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueues the call with these overrides into ``conn``; returns its
        handle once the task is durable."""
        fn, o = self.fn, self.overrides
        d = fn.defaults
        store = conn._store
        payload = encode([args, kwargs], d.serializer)
        if o is NO_OVERRIDES and d.expires is None:
            # The everyday send: only the task's own defaults, computed once.
            task_id, _ = store.enqueue(d.queue, fn.name, payload, **fn.enqueue_defaults())
            if conn.eager or _connection.eager_everywhere:
                return conn.run_eager(TaskHandle(conn, task_id, fn), None)
            return TaskHandle(conn, task_id, fn)
        # The store's time, not ours: a store on a manual clock schedules by it.
        now = store.now_ms() / 1000
        run_at: Optional[int] = None
        if o.run_at is not None:
            run_at = int(o.run_at.timestamp() * 1000)
        elif o.delay is not None:
            run_at = int((now + seconds(o.delay, "delay")) * 1000)
        expires = o.expires if o.expires is not None else d.expires
        if expires is not None:
            expires = seconds(expires, "expires")
        retries = check_retries(o.retries if o.retries is not None else d.retries)
        metadata = None
        if o.metadata is not None:
            try:
                metadata = json.dumps(o.metadata, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"metadata must be JSON-serialisable: {e}") from e
        queue_name = o.queue or d.queue
        kwargs_: dict[str, Any] = dict(
            priority=o.priority if o.priority is not None else d.priority,
            run_at=run_at,
            max_attempts=retries + 1,
            key=o.key,
            batch=o.batch,
            expires_at=int((now + expires) * 1000) if expires is not None else None,
            metadata=metadata,
            backoff=d.backoff.encode() if d.backoff is not None else None,
            result_ttl_ms=int(d.result_ttl * 1000) if d.result_ttl is not None else None,
            requires=None
            if d.requires is None
            else json.dumps(stored_requirements(d.requires)),
        )
        wait = None if o.wait is None else seconds(o.wait, "wait", inf_ok=True)
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                task_id, _inserted = store.enqueue(queue_name, fn.name, payload, **kwargs_)
                break
            except QueueFullError:
                left = None if deadline is None else deadline - time.monotonic()
                if left is None or left <= 0:
                    raise
                # A task finishing somewhere commits, which moves the token;
                # the short slice covers a finish between the two calls.
                store.wait_for_change(store.change_token(), min(left, 0.05))
        handle: TaskHandle[R] = TaskHandle(conn, task_id, fn)
        if conn.eager or _connection.eager_everywhere:
            return conn.run_eager(handle, o.callback)
        if o.callback is not None:
            conn._receive_loop().watch(handle, o.callback)
        return handle

    def options(self, **changes: Any) -> TaskCall[P, R]:
        """Further overrides on top of these."""
        return TaskCall(self.fn, replace(self.overrides, **changes))
