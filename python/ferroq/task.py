"""``@task``: registering functions that can be sent to a queue."""

from __future__ import annotations

import inspect
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Optional, TypeVar, Union, overload

from typing_extensions import ParamSpec

from ._errors import InvalidArgumentError
from .backoff import Backoff
from .options import TaskOptions, check_options, parse_rate
from .registry import discover, lookup, register, registered
from .task_function import TaskCall, TaskFunction

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "TaskCall",
    "TaskFunction",
    "TaskOptions",
    "default_name",
    "discover",
    "lookup",
    "main_module_name",
    "registered",
    "task",
]

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
    task_name = name or default_name(fn, bound=queue is not None)
    tf = TaskFunction(fn, task_name, check_options(options), queue)
    register(tf)
    return tf


def default_name(fn: Callable[..., object], *, bound: bool) -> str:
    """The name a task is registered and stored under: ``module:qualname``.

    A function of a script run as ``__main__`` is named after the module
    the same file is imported as (:func:`main_module_name`), so a worker
    that imports that module finds it. Refused, with
    :class:`InvalidArgumentError`: bound methods (their instance cannot be
    sent), lambdas (every one is ``<lambda>``; give ``name=``), and nested
    functions (``<locals>``) under the module-level ``@task``, whose sends
    go to a store other processes serve and whose workers could never
    import them. ``@queue.task`` takes nested functions: they run in this
    process's schedulers and eager runs (tests define tasks that way).
    """
    if inspect.ismethod(fn):
        raise InvalidArgumentError(
            f"@task cannot register the bound method {fn.__qualname__!r}: a worker could not "
            "rebuild its instance; register a module-level function (or a staticmethod) instead"
        )
    qualname = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    if not isinstance(qualname, str) or not isinstance(module, str):
        raise InvalidArgumentError(
            f"@task needs a function with a module and a name, got {fn!r} (give name=...)"
        )
    if getattr(fn, "__name__", None) == "<lambda>":
        raise InvalidArgumentError(
            "@task cannot register a lambda: every lambda is named '<lambda>', so a worker "
            "could not tell them apart; use a def, or give the task a name= of its own"
        )
    if "<locals>" in qualname and not bound:
        raise InvalidArgumentError(
            f"@task cannot register {qualname!r}, a function defined inside another: a "
            "worker in another process could never import it. Define it at module level, "
            "or bind it to a queue served in this process with @queue.task"
        )
    if module in ("__main__", "__mp_main__"):
        module = main_module_name(sys.modules.get(module)) or module
    return f"{module}:{qualname}"


def main_module_name(main: Optional[ModuleType]) -> Optional[str]:
    """The name a worker imports the script running as ``__main__`` under:
    its ``-m`` name when run with ``python -m pkg.mod``, else its file's
    path relative to the first ``sys.path`` entry that holds it (the
    script's own directory when run as ``python dir/script.py``), dotted.
    None when there is no file (an interactive session, ``python -c``)."""
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    spec_name = getattr(spec, "name", None)
    if isinstance(spec_name, str) and spec_name not in ("__main__", "__mp_main__"):
        return spec_name
    file = getattr(main, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    path = os.path.realpath(file)
    for entry in sys.path:
        root = os.path.realpath(entry or os.getcwd())
        if os.path.dirname(path) == root or path.startswith(root + os.sep):
            parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            if parts and all(p.isidentifier() for p in parts):
                return ".".join(parts)
    return None


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
