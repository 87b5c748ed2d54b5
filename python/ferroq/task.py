"""``@task``: registering functions that can be sent to a queue."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import pkgutil
import threading
from dataclasses import dataclass, field, replace
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
    overload,
)

from typing_extensions import ParamSpec

from ._errors import InvalidArgumentError, UnknownTaskError
from .backoff import Backoff
from .serialization import ArgBinder, serializer_name

if TYPE_CHECKING:
    from .handle import TaskHandle
    from .queue import Queue

__all__ = ["TaskCall", "TaskFunction", "TaskOptions", "discover", "lookup", "registered", "task"]

P = ParamSpec("P")
R = TypeVar("R")

_registry: dict[str, TaskFunction[Any, Any]] = {}
_registry_lock = threading.Lock()


@dataclass(frozen=True)
class TaskOptions:
    """A task's defaults, set by ``@task(...)`` and overridable per send."""

    queue: str = "default"
    priority: int = 0
    retries: int = 0
    backoff: Optional[Backoff] = None
    timeout: Optional[float] = None
    result_ttl: Optional[float] = None
    expires: Optional[float] = None
    serializer: str = "json"
    concurrency: Optional[int] = None
    rate_limit: Optional[float] = None
    requires: Optional[dict[str, float]] = None


def parse_rate(rate: Union[str, float, None]) -> Optional[float]:
    """Parses a rate limit: ``"100/s"``, ``"30/m"``, ``"500/h"`` or a number
    per second."""
    if rate is None:
        return None
    if isinstance(rate, (int, float)):
        per_s = float(rate)
    else:
        count, _, unit = str(rate).partition("/")
        seconds = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
        try:
            per_s = float(count) / seconds[unit.strip() or "s"]
        except (KeyError, ValueError):
            raise InvalidArgumentError(
                f"rate_limit {rate!r} is not like '100/s', '30/m' or '500/h'"
            ) from None
    if not per_s > 0:
        raise InvalidArgumentError(f"rate_limit must be > 0, got {rate!r}")
    return per_s


@dataclass(frozen=True)
class SendOptions:
    """Per-call overrides (see :meth:`TaskFunction.options`)."""

    queue: Optional[str] = None
    priority: Optional[int] = None
    delay: Optional[float] = None
    run_at: Optional[datetime] = None
    key: Optional[str] = None
    batch: Optional[str] = None
    retries: Optional[int] = None
    expires: Optional[float] = None
    metadata: Optional[dict[str, Any]] = None
    wait: Optional[float] = None
    callback: Optional[Callable[[Any], None]] = field(default=None, compare=False)


class TaskFunction(Generic[P, R]):
    """A function registered as a task. Calling it runs it here and now;
    :meth:`send` enqueues it and returns a :class:`TaskHandle`."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        options: TaskOptions,
        queue: Optional[Queue] = None,
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
        """Runs the function directly, in this process."""
        return self.fn(*args, **kwargs)

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
                opts["requires"] = json.dumps(d.requires)
            self._enqueue_defaults = opts
        return self._enqueue_defaults

    def __repr__(self) -> str:
        return f"<task {self.name} queue={self.defaults.queue!r}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # Plain functions only: methods would need their instance serialised.
        return self


NO_OVERRIDES = SendOptions()


class TaskCall(Generic[P, R]):
    """A task with per-call overrides, ready to :meth:`send`."""

    def __init__(self, fn: TaskFunction[P, R], overrides: SendOptions) -> None:
        self.fn = fn
        self.overrides = overrides

    def send(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueues the call with these overrides."""
        from .queue import default_queue

        queue = self.fn.bound_queue or default_queue()
        return queue._send(self.fn, args, kwargs, self.overrides)

    def options(self, **changes: Any) -> TaskCall[P, R]:
        """Further overrides on top of these."""
        return TaskCall(self.fn, replace(self.overrides, **changes))


def _check_options(options: TaskOptions) -> TaskOptions:
    if not isinstance(options.retries, int) or not 0 <= options.retries <= 999:
        raise InvalidArgumentError(f"retries must be an int within 0..999, got {options.retries!r}")
    if options.timeout is not None and options.timeout <= 0:
        raise InvalidArgumentError(f"timeout must be > 0 seconds, got {options.timeout!r}")
    if options.result_ttl is not None and options.result_ttl < 0:
        raise InvalidArgumentError(f"result_ttl must be >= 0 seconds, got {options.result_ttl!r}")
    if not options.queue:
        raise InvalidArgumentError("queue name must not be empty")
    if options.concurrency is not None and (
        not isinstance(options.concurrency, int) or options.concurrency < 1
    ):
        raise InvalidArgumentError(f"concurrency must be an int >= 1, got {options.concurrency!r}")
    if options.requires is not None:
        for k, v in options.requires.items():
            if not isinstance(v, (int, float)) or v < 0:
                raise InvalidArgumentError(f"requires[{k!r}] must be a number >= 0, got {v!r}")
    serializer_name(options.serializer)
    return options


def register(fn: TaskFunction[Any, Any]) -> None:
    """Adds a task function to the process-wide registry under its name."""
    with _registry_lock:
        _registry[fn.name] = fn


def lookup(name: str) -> TaskFunction[Any, Any]:
    """The task registered under ``name``; :class:`UnknownTaskError` if none."""
    try:
        return _registry[name]
    except KeyError:
        raise UnknownTaskError(
            f"no task named {name!r} is registered in this process "
            "(import its module, or use ferroq.discover(...))"
        ) from None


def registered() -> dict[str, TaskFunction[Any, Any]]:
    """A snapshot of every registered task, by name."""
    with _registry_lock:
        return dict(_registry)


def make_task(
    fn: Callable[P, R], queue: Optional[Queue], name: Optional[str], options: TaskOptions
) -> TaskFunction[P, R]:
    """Builds and registers a :class:`TaskFunction`."""
    if not callable(fn):
        raise InvalidArgumentError(f"@task needs a function, got {fn!r}")
    if isinstance(fn, TaskFunction):
        fn = fn.fn
    task_name = name or f"{fn.__module__}:{fn.__qualname__}"
    if "<locals>" in task_name and name is None:
        # Still usable in-process; a worker in another process could not import it.
        pass
    tf = TaskFunction(fn, task_name, _check_options(options), queue)
    register(tf)
    return tf


@overload
def task(fn: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(
    *,
    name: Optional[str] = None,
    queue: str = "default",
    priority: int = 0,
    retries: int = 0,
    backoff: Optional[Backoff] = None,
    timeout: Optional[float] = None,
    result_ttl: Optional[float] = None,
    expires: Optional[float] = None,
    serializer: str = "json",
    concurrency: Optional[int] = None,
    rate_limit: Union[str, float, None] = None,
    requires: Optional[dict[str, float]] = None,
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(
    fn: Optional[Callable[P, R]] = None,
    /,
    *,
    name: Optional[str] = None,
    queue: str = "default",
    priority: int = 0,
    retries: int = 0,
    backoff: Optional[Backoff] = None,
    timeout: Optional[float] = None,
    result_ttl: Optional[float] = None,
    expires: Optional[float] = None,
    serializer: str = "json",
    concurrency: Optional[int] = None,
    rate_limit: Union[str, float, None] = None,
    requires: Optional[dict[str, float]] = None,
) -> Union[TaskFunction[P, R], Callable[[Callable[P, R]], TaskFunction[P, R]]]:
    """Registers a function as a task, bare (``@task``) or with options.

    The task is registered as ``module:qualname`` unless ``name`` is given.
    ``fn.send(...)`` from a module-level task goes to the process's default
    queue (:func:`ferroq.set_default_queue`, or the ``FERROQ_URL``
    environment variable); ``@queue.task`` binds it to that queue instead.

    Options: ``queue`` (queue name inside the store), ``priority`` (higher
    first), ``retries`` (extra attempts after the first), ``backoff`` (a
    :class:`Backoff`; exponential from 1 s by default), ``timeout``
    (seconds per attempt), ``result_ttl`` (seconds a finished task is
    kept), ``expires`` (seconds after sending by which it must start),
    ``serializer`` (``"json"`` or ``"pickle"``), ``concurrency`` (at most
    this many running at once across every worker of the store),
    ``rate_limit`` (``"100/s"``, ``"30/m"``: claims per time across every
    worker), ``requires`` (what a worker must offer, e.g.
    ``{"gpu_memory_gb": 8}``; see ``QueueScheduler(resources=...)``).
    """
    options = TaskOptions(
        queue=queue,
        priority=priority,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        result_ttl=result_ttl,
        expires=expires,
        serializer=serializer,
        concurrency=concurrency,
        rate_limit=parse_rate(rate_limit),
        requires=requires,
    )
    if fn is not None:
        return make_task(fn, None, name, options)

    def decorate(f: Callable[P, R]) -> TaskFunction[P, R]:
        return make_task(f, None, name, options)

    return decorate


def discover(package: str) -> list[TaskFunction[Any, Any]]:
    """Imports a module or package (every submodule, recursively) and
    returns the tasks registered from it."""
    module = importlib.import_module(package)
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            importlib.import_module(info.name)
    prefix = package + "."
    return [
        t
        for t in registered().values()
        if t.__module__ == package or t.__module__.startswith(prefix)
    ]


def run_function(fn: TaskFunction[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Runs a task function to completion in this thread (``async def``
    functions on a private event loop)."""
    if fn.is_async:
        return asyncio.run(fn.fn(*args, **kwargs))
    return fn.fn(*args, **kwargs)
