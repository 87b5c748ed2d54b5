"""``TaskFunction``: a function that can be sent to a queue, and
:class:`TaskCall`, the send path every ``send`` goes through
(:meth:`TaskCall.send_to`). ``@task`` builds them (:mod:`ferroq.task`).

Also here: tasks sent by a name this process has not registered
(:func:`remote_task`), and arguments passed by reference to a worker in
this process (``options(by_reference=True)``, :class:`LocalArgBinder`)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Coroutine,
    Generic,
    Optional,
    TypeVar,
    Union,
    cast,
    overload,
)

import pydantic_core
from typing_extensions import ParamSpec

from . import _connection, _default, tracing
from ._checks import seconds
from ._errors import InvalidArgumentError, QueueFullError, SerializationError, UnknownTaskError
from .context import TaskContext, _current
from .flow import FLOW_KEY, Signature
from .handle import TaskHandle
from .options import NO_OVERRIDES, SendOptions, TaskOptions, check_retries, check_send_options
from .resources import stored_requirements
from .serialization import JSON, ArgBinder, decode, encode

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "LOCAL_REF_KEY",
    "MAP_CHUNK",
    "CallArgs",
    "SEND_OPTIONS",
    "LocalArgBinder",
    "TaskCall",
    "TaskFunction",
    "check_meta",
    "encode_calls",
    "remote_task",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: One call of a bulk send (:meth:`TaskFunction.map`): a tuple of positional
#: arguments, or a dict of keyword arguments.
CallArgs = Union[tuple[Any, ...], Mapping[str, Any]]
#: Most tasks stored by one store call of a bulk send.
MAP_CHUNK = 10_000

#: The keywords that are options of one send (:meth:`TaskFunction.options`),
#: never a task's own arguments in ``Queue.send``'s short form.
SEND_OPTIONS = frozenset(
    {
        "queue",
        "priority",
        "delay",
        "run_at",
        "key",
        "batch",
        "retries",
        "expires",
        "metadata",
        "wait",
        "callback",
        "by_reference",
        "after",
    }
)

#: The one keyword of a payload that stands for arguments passed by
#: reference: its value is the token they are kept under in this process.
LOCAL_REF_KEY = "__ferroq_local_ref__"
# Arguments passed by reference, by token, until their task finishes.
_local_args: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
_local_lock = threading.Lock()
# Tokens start with this process's identity, so a worker elsewhere can say
# whose memory the arguments were in.
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


class LocalArgBinder(ArgBinder):
    """An :class:`ArgBinder` that first swaps a by-reference payload for the
    very objects the sender passed (kept in this process's memory). When
    they are not here — a worker in another process, a process mode child,
    or this process restarted since the send — it raises
    :class:`SerializationError` saying so: the task fails at once, without
    retries, and never runs with other arguments."""

    def args(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Validates decoded arguments (or resolves references to them)."""
        if kwargs and LOCAL_REF_KEY in kwargs and len(kwargs) == 1 and not args:
            token = str(kwargs[LOCAL_REF_KEY])
            with _local_lock:
                found = _local_args.get(token)
            if found is None:
                sender = token.rpartition(":")[0]
                here = f"{socket.gethostname()}:{os.getpid()}"
                raise SerializationError(
                    f"this task's arguments were passed by reference (by_reference=True) and "
                    f"lived only in the memory of process {sender}; they are not in this "
                    f"process ({here}): a worker in another process, or a restart since the "
                    "send. Arguments by reference are not durable; send values that can be "
                    "serialised to run the task anywhere"
                )
            return list(found[0]), dict(found[1])
        return super().args(args, kwargs)


def _keep_local(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    token = f"{_PROCESS}:{uuid.uuid4().hex}"
    with _local_lock:
        _local_args[token] = (args, dict(kwargs))
    return token


def _free_local(token: str) -> None:
    with _local_lock:
        _local_args.pop(token, None)


def check_meta(meta: object) -> Optional[str]:
    """``@task(meta=...)`` as stored JSON: a dict that JSON can hold, else
    :class:`InvalidArgumentError`; None for None."""
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise InvalidArgumentError(f"meta must be a dict with str keys, got {meta!r}")
    try:
        return json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"meta must be JSON-serialisable: {e}") from e


class TaskFunction(Generic[P, R]):
    """A function registered as a task. Calling it runs it here and now;
    :meth:`send` enqueues it and returns a :class:`TaskHandle`."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        options: TaskOptions,
        queue: Optional[Connection] = None,
        meta: Optional[dict[str, Any]] = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.defaults = options
        self.bound_queue = queue
        self._meta_json = check_meta(meta)
        #: Free-form metadata given with ``@task(meta=...)`` (None when none):
        #: stored in each task's metadata (a send's own ``metadata`` keys
        #: win), readable from the running task as ``current_task().metadata``.
        self.meta: Optional[dict[str, Any]] = None if meta is None else dict(meta)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.binder: ArgBinder = LocalArgBinder(fn)
        self._keywords = _keywords(fn)
        self._enqueue_defaults: Optional[dict[str, Any]] = None
        #: Called in the worker with (exception, task context) when an
        #: attempt raises: set with :meth:`on_failure`.
        self.failure_handler: Optional[Callable[[BaseException, TaskContext], None]] = None
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

    def on_failure(
        self, handler: Callable[[BaseException, TaskContext], None]
    ) -> Callable[[BaseException, TaskContext], None]:
        """Registers ``handler(exc, task)``, called by the worker when an
        attempt of this task raises, with the exception itself and the
        running task's context (``task.attempt`` equals
        ``task.max_attempts`` on the last one), before the failure is
        stored. It runs where the attempt ran (a child process in process
        mode), also for attempts that will be retried, and not for a
        cancelled or timed-out attempt or a returned :class:`~ferroq.Fail`.
        Its own exceptions are logged and change nothing. Usable as a
        decorator; returns ``handler``."""
        if not callable(handler):
            raise InvalidArgumentError(f"on_failure needs a callable, got {handler!r}")
        self.failure_handler = handler
        return handler

    def _detached_context(self) -> TaskContext:
        d = self.defaults
        return TaskContext.detached(self.name, d.queue, d.retries + 1, metadata=self._meta_json)

    async def _call_async(self, args: Any, kwargs: Any) -> Any:
        _current.set(self._detached_context())  # this coroutine's own context
        return await cast(Any, self.fn)(*args, **kwargs)

    @overload
    def send(
        self: TaskFunction[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...

    @overload
    def send(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]: ...

    def send(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Enqueues a call; returns its handle once the task is durable (for
        an ``async def`` task, a handle of the value it returns when awaited).

        A ``callback=`` keyword is also accepted here (it is not passed to
        the function); :meth:`options` is the typed way to give one. Any
        other send option (``priority=``, ``key=``...) goes through
        :meth:`options`: given here to a function that has no parameter of
        that name, it raises :class:`InvalidArgumentError` rather than
        reach the function as an argument.
        """
        callback = cast(Optional[Callable[[Any], None]], kwargs.pop("callback", None))
        if kwargs and not SEND_OPTIONS.isdisjoint(kwargs):
            self._refuse_options(kwargs)
        opts = SendOptions(callback=callback) if callback is not None else NO_OVERRIDES
        handle: TaskHandle[Any] = TaskCall(self, opts).send(*args, **kwargs)
        return handle

    @overload
    async def asend(
        self: TaskFunction[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...

    @overload
    async def asend(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]: ...

    async def asend(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """:meth:`send` for asyncio code: the store's commit runs on a
        thread, so the event loop goes on meanwhile. ``await fn.asend(x)``
        returns the handle once the task is durable; ``await`` that handle
        for the result."""
        handle: TaskHandle[Any] = await asyncio.to_thread(self.send, *args, **kwargs)
        return handle

    @overload
    def map(
        self: TaskFunction[P, Coroutine[Any, Any, T]],
        items: Iterable[CallArgs],
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[T]]: ...

    @overload
    def map(
        self,
        items: Iterable[CallArgs],
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[R]]: ...

    def map(
        self,
        items: Iterable[CallArgs],
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[Any]]:
        """Sends one task per item and returns their handles, in order: the
        bulk form of :meth:`send`, one store call per :data:`MAP_CHUNK`
        tasks. Each item is a tuple of positional arguments or a dict of
        keyword arguments: ``add.map([(1, 2), (3, 4)])``,
        ``add.map({"a": i, "b": 1} for i in range(10))``.

        ``key`` (a function of the item, giving its idempotency key or None)
        or ``keys`` (one key or None per item) make each send idempotent: an
        item whose key is already stored in the queue gets the handle of
        the task stored before. Options apply to every task through
        :meth:`options`: ``fn.options(priority=5, batch="b").map(items)``.
        Every item is checked and serialised before anything is stored; a
        bad one raises :class:`InvalidArgumentError` or
        :class:`SerializationError` and stores none.
        """
        handles: list[TaskHandle[Any]] = TaskCall(self, NO_OVERRIDES).map(
            items, key=key, keys=keys
        )
        return handles

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A call not sent yet, for :func:`~ferroq.chain`, :func:`~ferroq.group`
        and :func:`~ferroq.chord`: in a chain it receives the result of the
        step before as its first positional argument."""
        return TaskCall(self, NO_OVERRIDES).s(*args, **kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """Like :meth:`s`, but immutable: it only waits for the step before,
        without receiving its result."""
        return TaskCall(self, NO_OVERRIDES).si(*args, **kwargs)

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
        by_reference: bool = False,
        after: Optional[Sequence[Any]] = None,
    ) -> TaskCall[P, R]:
        """Overrides for one send: ``fn.options(priority=5, key="a").send(x)``.

        ``delay`` (seconds or timedelta) or ``run_at`` schedule the task;
        ``key`` makes the send idempotent within the queue; ``expires``
        (seconds from now) is a deadline to start by; ``metadata`` (a dict
        of JSON values) is stored with the task, over the task's
        ``@task(meta=...)``; ``wait`` (seconds) waits for room when the
        queue is at capacity instead of raising :class:`QueueFullError`;
        ``callback`` is called with the handle in this process once the
        task has finished.

        ``by_reference=True`` passes the arguments as they are, never
        serialised (open sockets, locks, models in memory), to a worker
        of this same process (a :class:`~ferroq.QueueScheduler` in thread
        or asyncio mode, or an eager run). Not durable: the store keeps
        only a reference, and the objects live in this process's memory
        until the task finishes. A worker anywhere else, or this process
        after a restart, fails the task at once with
        :class:`SerializationError` instead of running it.

        ``after`` (task handles) makes the task wait, in the ``waiting``
        status, until those tasks are done; it is cancelled when one of them
        fails, is cancelled or expires (see :doc:`flows`). Their results
        are not passed to it (a :func:`~ferroq.chain` does that).
        """
        given = check_send_options(
            dict(
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
                after=after,
            )
        )
        after = given.pop("after")
        return TaskCall(
            self, SendOptions(**given), by_reference=bool(by_reference), after=after
        )

    def _refuse_options(self, kwargs: dict[str, Any]) -> None:
        """Raises for keywords named like send options that the function
        cannot take as arguments (they were meant as options)."""
        taken = self._keywords
        if taken is None:  # **kwargs takes any name: the function's own argument
            return
        wrong = sorted(k for k in SEND_OPTIONS.intersection(kwargs) if k not in taken)
        if wrong:
            shown = ", ".join(f"{k}=..." for k in wrong)
            raise InvalidArgumentError(
                f"{self.name} takes no argument {', '.join(map(repr, wrong))}: send options go "
                f"through options(), as in {self.__name__}.options({shown}).send(...)"
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
            if self._meta_json is not None:
                opts["metadata"] = self._meta_json
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

    def __init__(
        self,
        fn: TaskFunction[P, R],
        overrides: SendOptions,
        *,
        by_reference: bool = False,
        after: Optional[Sequence[Any]] = None,
    ) -> None:
        self.fn = fn
        self.overrides = overrides
        #: True when the arguments are passed by reference (see
        #: :meth:`TaskFunction.options`).
        self.by_reference = by_reference
        #: The handles this call waits for (``options(after=...)``), or None.
        self.after = None if after is None else list(after)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """This call with its arguments, not sent yet (see :meth:`TaskFunction.s`)."""
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable :meth:`s`: it does not receive the step before's result."""
        return Signature(self, args, kwargs, immutable=True)

    def bound_connection(self) -> Optional[Connection]:
        """The queue this call's task is bound to (None: the default one)."""
        return self.fn.bound_queue

    def flow_step(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], marker: Optional[str]
    ) -> tuple[str, str, bytes, int, int, Optional[str], Optional[str], Optional[str], list[int]]:
        """This call as one step of the store's ``enqueue_flow`` (no
        parents yet); ``marker`` is stored under :data:`~ferroq.flow.FLOW_KEY`
        in its metadata. Options a flow step cannot hold raise
        :class:`InvalidArgumentError` before anything is stored."""
        fn, o = self.fn, self.overrides
        d = fn.defaults
        unsupported = [
            name
            for name, given in (
                ("by_reference", self.by_reference),
                ("delay/run_at", o.delay is not None or o.run_at is not None),
                ("batch", o.batch is not None),
                ("expires", o.expires is not None or d.expires is not None),
                ("wait", o.wait is not None),
                ("callback", o.callback is not None),
                ("result_ttl", d.result_ttl is not None),
                ("requires", d.requires is not None),
            )
            if given
        ]
        if unsupported:
            raise InvalidArgumentError(
                f"{fn.name}: a flow step (a chain, group or chord step, or a send with "
                f"after=) cannot have {', '.join(unsupported)}"
            )
        meta: Optional[dict[str, Any]] = fn.meta
        if o.metadata is not None:
            meta = o.metadata if meta is None else {**meta, **o.metadata}
        if marker is not None:
            meta = {**(meta or {}), FLOW_KEY: marker}
        try:
            meta_json = None if meta is None else json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"metadata must be JSON-serialisable: {e}") from e
        retries = check_retries(o.retries if o.retries is not None else d.retries)
        return (
            o.queue or d.queue,
            fn.name,
            tracing.carry(encode([args, kwargs], d.serializer)),
            o.priority if o.priority is not None else d.priority,
            retries + 1,
            o.key,
            d.backoff.encode() if d.backoff is not None else None,
            meta_json,
            [],
        )

    @overload
    def send(
        self: TaskCall[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...

    @overload
    def send(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]: ...

    def send(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Enqueues the call with these overrides, into the queue the task is
        bound to, else the default queue."""
        conn = self.fn.bound_queue or _default.get_default()
        return self.send_to(conn, *args, **kwargs)

    @overload
    async def asend(
        self: TaskCall[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...

    @overload
    async def asend(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]: ...

    async def asend(self, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """:meth:`send` with the commit on a thread (see :meth:`TaskFunction.asend`)."""
        handle: TaskHandle[Any] = await asyncio.to_thread(self.send, *args, **kwargs)
        return handle

    @overload
    def map(
        self: TaskCall[P, Coroutine[Any, Any, T]],
        items: Iterable[CallArgs],
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[T]]: ...

    @overload
    def map(
        self,
        items: Iterable[CallArgs],
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[R]]: ...

    def map(
        self,
        items: Iterable[CallArgs],
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[Any]]:
        """Sends one task per item with these overrides (see
        :meth:`TaskFunction.map`), into the queue the task is bound to, else
        the default queue."""
        conn = self.fn.bound_queue or _default.get_default()
        return self.map_to(conn, items, key=key, keys=keys)

    def map_to(
        self,
        conn: Connection,
        items: Iterable[CallArgs],
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[Any]]:
        """:meth:`map` into ``conn``: every item checked and serialised first,
        then stored one chunk per store call."""
        fn, o = self.fn, self.overrides
        refused = [
            name
            for name, given in (
                ("key (give key= or keys= to map)", o.key is not None),
                ("wait", o.wait is not None),
                ("by_reference", self.by_reference),
                ("after", self.after is not None),
            )
            if given
        ]
        if refused:
            raise InvalidArgumentError(
                f"{fn.name}: a bulk send (map, send_many) cannot have {', '.join(refused)}"
            )
        if key is not None and keys is not None:
            raise InvalidArgumentError("give key= (a function of the item) or keys=, not both")
        if key is not None and not callable(key):
            raise InvalidArgumentError(f"key must be a function of the item, got {key!r}")
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
            raise InvalidArgumentError(
                f"map() takes an iterable of calls (tuples or dicts), got {type(items).__name__}"
            )
        calls = list(items)
        # Hundreds of thousands of payloads and handles are made here: the
        # cyclic collector would walk them all again and again meanwhile.
        paused = len(calls) > MAP_CHUNK and gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._map_calls(conn, calls, key, keys)
        finally:
            if paused:
                gc.enable()

    def _map_calls(
        self,
        conn: Connection,
        calls: list[Any],
        key: Optional[Callable[[Any], Optional[str]]],
        keys: Optional[Sequence[Optional[str]]],
    ) -> list[TaskHandle[Any]]:
        fn, o = self.fn, self.overrides
        d = fn.defaults
        payloads = encode_calls(calls, d.serializer)
        if tracing.active():
            payloads = [tracing.carry(p) for p in payloads]
        stored_keys: Optional[list[Optional[str]]] = None
        if keys is not None:
            if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
                raise InvalidArgumentError("keys must be a list of keys, one per item")
            stored_keys = list(keys)
            if len(stored_keys) != len(calls):
                raise InvalidArgumentError(
                    f"keys has {len(stored_keys)} values for {len(calls)} items"
                )
        elif key is not None:
            stored_keys = [key(item) for item in calls]
        if stored_keys is not None:
            for k in stored_keys:
                if k is not None and (not isinstance(k, str) or not k):
                    raise InvalidArgumentError(f"a key must be a non-empty str or None, got {k!r}")
        store = conn._store
        now = store.now_ms() / 1000
        run_at: Optional[int] = None
        if o.run_at is not None:
            run_at = int(o.run_at.timestamp() * 1000)
        elif o.delay is not None:
            run_at = int((now + seconds(o.delay, "delay")) * 1000)
        expires = o.expires if o.expires is not None else d.expires
        expires_at = (
            None if expires is None else int((now + seconds(expires, "expires")) * 1000)
        )
        retries = check_retries(o.retries if o.retries is not None else d.retries)
        metadata = fn._meta_json
        if o.metadata is not None:
            merged = o.metadata if fn.meta is None else {**fn.meta, **o.metadata}
            try:
                metadata = json.dumps(merged, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"metadata must be JSON-serialisable: {e}") from e
        queue_name = o.queue or d.queue
        common: dict[str, Any] = dict(
            priority=o.priority if o.priority is not None else d.priority,
            run_at=run_at,
            max_attempts=retries + 1,
            batch=o.batch,
            expires_at=expires_at,
            backoff=d.backoff.encode() if d.backoff is not None else None,
            result_ttl_ms=int(d.result_ttl * 1000) if d.result_ttl is not None else None,
            requires=None
            if d.requires is None
            else json.dumps(stored_requirements(d.requires)),
        )
        ids: list[int] = []
        for start in range(0, len(payloads), MAP_CHUNK):
            part = payloads[start : start + MAP_CHUNK]
            chunk_keys = None if stored_keys is None else stored_keys[start : start + MAP_CHUNK]
            got, _ = store.enqueue_many(
                queue_name, fn.name, part, keys=chunk_keys, metadata=metadata, **common
            )
            ids += got
        handles: list[TaskHandle[Any]] = [TaskHandle(conn, i, fn) for i in ids]
        if conn.eager or _connection.eager_everywhere:
            return [conn.run_eager(h, o.callback) for h in handles]
        if o.callback is not None:
            watcher = conn._receive_loop()
            for h in handles:
                watcher.watch(h, o.callback)
        return handles

    def send_to(self, conn: Connection, /, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueues the call with these overrides into ``conn``; returns its
        handle once the task is durable. With tracing on, inside a ``send``
        span whose context the task carries (:mod:`ferroq.tracing`)."""
        if not tracing.active():
            return self._send_to(conn, *args, **kwargs)
        with tracing.send_span(self.fn.name, self.overrides.queue or self.fn.defaults.queue) as sp:
            handle = self._send_to(conn, *args, **kwargs)
            sp.set_attribute("messaging.message.id", str(handle.id))
            return handle

    def _send_to(self, conn: Connection, /, *args: Any, **kwargs: Any) -> TaskHandle[R]:
        fn, o = self.fn, self.overrides
        d = fn.defaults
        if self.after is not None:
            handle: TaskHandle[R] = self.si(*args, **kwargs).send(conn, after=self.after)
            return handle
        if o is NO_OVERRIDES and d.expires is None and not self.by_reference:
            # The everyday send: only the task's own defaults, computed once.
            payload = tracing.carry(encode([args, kwargs], d.serializer))
            task_id, _ = conn._store.enqueue(d.queue, fn.name, payload, **fn.enqueue_defaults())
            if conn.eager or _connection.eager_everywhere:
                return conn.run_eager(TaskHandle(conn, task_id, fn), None)
            return TaskHandle(conn, task_id, fn)
        if not self.by_reference:
            return self._enqueue(conn, encode([args, kwargs], d.serializer), None)
        token = _keep_local(args, kwargs)
        try:
            return self._enqueue(conn, encode([[], {LOCAL_REF_KEY: token}]), token)
        except BaseException:
            _free_local(token)
            raise

    def _enqueue(self, conn: Connection, payload: bytes, token: Optional[str]) -> TaskHandle[R]:
        """Stores the call with these overrides (``token``: the key its
        arguments are kept under when passed by reference)."""
        fn, o = self.fn, self.overrides
        d = fn.defaults
        store = conn._store
        payload = tracing.carry(payload)
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
        metadata = fn._meta_json
        if o.metadata is not None:
            merged = o.metadata if fn.meta is None else {**fn.meta, **o.metadata}
            try:
                metadata = json.dumps(merged, allow_nan=False)
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
                task_id, inserted = store.enqueue(queue_name, fn.name, payload, **kwargs_)
                break
            except QueueFullError:
                left = None if deadline is None else deadline - time.monotonic()
                if left is None or left <= 0:
                    raise
                # A task finishing somewhere commits, which moves the token;
                # the short slice covers a finish between the two calls.
                store.wait_for_change(store.change_token(), min(left, 0.05))
        handle: TaskHandle[R] = TaskHandle(conn, task_id, fn)
        if token is not None:
            if not inserted:  # a duplicate key: the task already stored runs, not these
                _free_local(token)
            else:
                conn._receive_loop().watch(handle, lambda _h: _free_local(token), counts=False)
        if conn.eager or _connection.eager_everywhere:
            return conn.run_eager(handle, o.callback)
        if o.callback is not None:
            conn._receive_loop().watch(handle, o.callback)
        return handle

    def options(self, **changes: Any) -> TaskCall[P, R]:
        """Further overrides on top of these."""
        unknown = sorted(set(changes) - SEND_OPTIONS)
        if unknown:
            raise InvalidArgumentError(
                f"unknown send option(s) {', '.join(map(repr, unknown))} "
                f"(options: {', '.join(sorted(SEND_OPTIONS))})"
            )
        changes = check_send_options(changes)
        by_reference = bool(changes.pop("by_reference", self.by_reference))
        after = changes.pop("after", self.after)
        return TaskCall(
            self.fn, replace(self.overrides, **changes), by_reference=by_reference, after=after
        )


def encode_calls(calls: list[Any], serializer: str) -> list[bytes]:
    """The payloads of a bulk send, one per item (a tuple of positional
    arguments or a dict of keyword arguments), in one pass; a bad item
    raises before any payload is returned."""
    no_kwargs: dict[str, Any] = {}
    bodies: list[tuple[Any, Any]] = []
    for i, item in enumerate(calls):
        if isinstance(item, tuple):
            bodies.append((item, no_kwargs))
        elif isinstance(item, Mapping) and all(isinstance(k, str) for k in item):
            bodies.append(((), item))
        else:
            raise InvalidArgumentError(
                f"item {i} of map(): each item is a tuple of positional arguments or a "
                f"dict of keyword arguments, got {item!r} (for one argument: (x,))"
            )
    if serializer == JSON:
        try:
            to_json = pydantic_core.to_json
            return [b"J" + to_json(body) for body in bodies]
        except Exception:
            pass  # encode() below finds the bad item and says why
    return [encode(body, serializer) for body in bodies]


def _keywords(fn: Callable[..., Any]) -> Optional[frozenset[str]]:
    """The names ``fn`` takes as keyword arguments (None: any, ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _not_here(*args: Any, **kwargs: Any) -> Any:
    """Stands for a task known only to workers elsewhere."""
    raise UnknownTaskError(
        "this task is not registered in this process: it was sent by name for a "
        "worker that knows it"
    )


_remote_lock = threading.Lock()
_remote: dict[tuple[str, str], TaskFunction[..., Any]] = {}


def remote_task(name: str, serializer: str) -> TaskFunction[..., Any]:
    """A stand-in for a task this process has not registered, so that it
    can be sent by name (its arguments serialised with ``serializer``)
    for a worker that has it. Default options: queue ``default``,
    priority 0, no retries (a send's options override them). It is not
    registered: a worker here never runs it; called directly it raises
    :class:`UnknownTaskError`. Its result comes back as plain decoded
    JSON."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"a task name must be a non-empty str, got {name!r}")
    with _remote_lock:
        fn = _remote.get((name, serializer))
        if fn is None:
            if len(_remote) >= 1024:
                _remote.clear()
            fn = TaskFunction(_not_here, name, TaskOptions(serializer=serializer))
            _remote[(name, serializer)] = fn
        return fn
