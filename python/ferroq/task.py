"""``@task``: registering functions that can be sent to a queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, TypeVar, Union, overload

from typing_extensions import ParamSpec

from ._errors import InvalidArgumentError
from .backoff import Backoff
from .options import TaskOptions, check_options, parse_rate
from .registry import discover, lookup, register, registered
from .task_function import TaskCall, TaskFunction

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["TaskCall", "TaskFunction", "TaskOptions", "discover", "lookup", "registered", "task"]

P = ParamSpec("P")
R = TypeVar("R")


def make_task(
    fn: Callable[P, R], queue: Optional[Connection], name: Optional[str], options: TaskOptions
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
    tf = TaskFunction(fn, task_name, check_options(options), queue)
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
