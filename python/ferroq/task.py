"""``@task``: registering functions that can be sent to a queue."""

from __future__ import annotations

import inspect
import os
import sys
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, TypeVar, Union, overload

from typing_extensions import ParamSpec

from ._errors import InvalidArgumentError, UnknownTaskError
from .backoff import Backoff
from .handle import TaskHandle
from .options import (
    NO_OVERRIDES,
    SendOptions,
    TaskOptions,
    check_options,
    check_send_options,
    parse_rate,
)
from .periodic import CatchUp, add_schedule, make_schedule
from .registry import discover, lookup, register, registered
from .resources import Requirement
from .task_function import SEND_OPTIONS, TaskCall, TaskFunction, remote_task

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
    "periodic",
    "registered",
    "resolve",
    "send_call",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")


def make_task(
    fn: Callable[P, R],
    queue: Optional[Connection],
    name: Optional[str],
    options: TaskOptions,
    meta: Optional[dict[str, Any]] = None,
) -> TaskFunction[P, R]:
    """Builds and registers a :class:`TaskFunction`."""
    if not callable(fn):
        raise InvalidArgumentError(f"@task needs a function, got {fn!r}")
    if isinstance(fn, TaskFunction):
        fn = fn.fn
    task_name = name or default_name(fn, bound=queue is not None)
    tf = TaskFunction(fn, task_name, check_options(options), queue, meta=meta)
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
    requires: Optional[Mapping[str, Requirement]] = None,
    meta: Optional[dict[str, Any]] = None,
    schedule: Union[str, timedelta, None] = None,
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
    requires: Optional[Mapping[str, Requirement]] = None,
    meta: Optional[dict[str, Any]] = None,
    schedule: Union[str, timedelta, None] = None,
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
    ``{"gpu_memory_gb": 8}``; see ``QueueScheduler(resources=...)``),
    ``meta`` (free-form metadata, a dict of JSON values: stored with every
    task sent, readable in its records and, while it runs, as
    ``current_task().metadata``), ``schedule`` (a cron expression such as
    ``"*/5 * * * *"``, in UTC, or a timedelta: the task is also sent on that
    schedule by every scheduler serving its queue, each tick once; see
    :func:`periodic` for time zones and catch-up after downtime).
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
    every_run = None
    if schedule is not None:
        # Checked before anything is registered: a bad schedule leaves no task.
        if isinstance(schedule, timedelta):
            every_run = make_schedule(every=schedule)
        else:
            every_run = make_schedule(cron=schedule)

    def decorate(f: Callable[P, R]) -> TaskFunction[P, R]:
        tf = make_task(f, None, name, options, meta)
        if every_run is not None:
            add_schedule(tf, every_run)
        return tf

    return decorate(fn) if fn is not None else decorate


def periodic(
    *,
    cron: Optional[str] = None,
    every: Union[timedelta, float, None] = None,
    tz: Optional[str] = None,
    catch_up: CatchUp = "once",
    max_catch_up: int = 100,
    grace: Union[timedelta, float, None] = None,
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """``@periodic(...)``: sends a task on a schedule, each tick once however
    many schedulers run (on a plain function it also registers the task,
    as a bare ``@task`` would; above ``@task(...)`` or ``@queue.task(...)``
    it keeps their options).

    ``cron`` (5 fields, or 6 with seconds first; ``@daily`` and the like)
    read in ``tz`` (an IANA name, UTC by default), or ``every`` (a timedelta
    or seconds, whole seconds: ticks at multiples of it since the epoch).
    ``catch_up`` says what a scheduler sends for ticks missed while none
    ran: ``"skip"`` (none: the next tick runs), ``"once"`` (one run for all
    of them) or ``"all"`` (one run per missed tick, the latest
    ``max_catch_up``). A tick seen within ``grace`` (default: a minute, or
    half the gap to the next tick if shorter) is on time, not missed. A bad
    expression, time zone, interval or policy raises
    :class:`InvalidArgumentError` here. See docs/periodic.md.
    """
    schedule = make_schedule(
        cron=cron,
        every=every,
        tz=tz,
        catch_up=catch_up,
        max_catch_up=max_catch_up,
        grace=grace,
    )

    def decorate(fn: Callable[P, R]) -> TaskFunction[P, R]:
        tf = fn if isinstance(fn, TaskFunction) else make_task(fn, None, None, TaskOptions())
        add_schedule(tf, schedule)
        return tf

    return decorate


def resolve(
    task: Union[TaskFunction[Any, Any], str], *, remote_ok: bool, serializer: str
) -> TaskFunction[Any, Any]:
    """The task function a send names.

    A :class:`TaskFunction` is itself. A name is looked up among the tasks
    this process registered: first exactly (``module:qualname``, or the
    ``name=`` a task was given), then as a short name — the part after
    the colon — when exactly one registered task has it (two or more:
    :class:`InvalidArgumentError` naming them). A name registered nowhere
    here is, with ``remote_ok``, sent as it is for a worker that has it
    (:func:`~ferroq.task_function.remote_task`); without,
    :class:`UnknownTaskError`.
    """
    if isinstance(task, TaskFunction):
        return task
    if not isinstance(task, str):
        raise InvalidArgumentError(f"send() needs a @task function or its name, got {task!r}")
    try:
        return lookup(task)
    except UnknownTaskError:
        if ":" not in task:
            found = [fn for n, fn in registered().items() if n.partition(":")[2] == task]
            if len(found) == 1:
                return found[0]
            if found:
                names = ", ".join(sorted(fn.name for fn in found))
                raise InvalidArgumentError(
                    f"the short name {task!r} fits several registered tasks ({names}): "
                    "send by the full name"
                ) from None
        if not remote_ok:
            raise UnknownTaskError(
                f"no task named {task!r} is registered in this process (import its module, "
                "or use ferroq.discover(...)); to send it for a worker that has it, give "
                "its arguments as queue.send(name, args=[...], kwargs={...})"
            ) from None
    return remote_task(task, serializer)


def send_call(
    conn: Connection,
    task: Union[TaskFunction[Any, Any], TaskCall[Any, Any], str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> TaskHandle[Any]:
    """What :meth:`Queue.send` does (see there for the two forms)."""
    if "args" in kwargs or "kwargs" in kwargs:
        # The explicit form: arguments and send options kept apart.
        if args:
            raise InvalidArgumentError(
                "give the task's arguments either positionally or as args=/kwargs=, not both"
            )
        call_args = kwargs.pop("args", None)
        call_kwargs = kwargs.pop("kwargs", None)
        if call_args is None:
            call_args = ()
        if call_kwargs is None:
            call_kwargs = {}
        if isinstance(call_args, (str, bytes)) or not isinstance(call_args, (list, tuple)):
            raise InvalidArgumentError(f"args must be a list or tuple, got {call_args!r}")
        if not isinstance(call_kwargs, dict) or not all(isinstance(k, str) for k in call_kwargs):
            raise InvalidArgumentError(f"kwargs must be a dict with str keys, got {call_kwargs!r}")
        unknown = sorted(set(kwargs) - SEND_OPTIONS)
        if unknown:
            raise InvalidArgumentError(
                f"unknown send option(s) {', '.join(map(repr, unknown))} (options: "
                f"{', '.join(sorted(SEND_OPTIONS))}); the task's own keyword arguments go in "
                "kwargs={...}"
            )
        options = kwargs
        remote_ok = True
    else:
        # The short form: everything is the task's, except ``callback``.
        clash = sorted(SEND_OPTIONS.intersection(kwargs) - {"callback"})
        if clash:
            shown = ", ".join(f"{k}=..." for k in clash)
            raise InvalidArgumentError(
                f"ambiguous send: {', '.join(map(repr, clash))} could be a send option or "
                f"the task's own argument. Write queue.send(task, args=[...], kwargs={{...}}, "
                f"{shown}) for send options, with the task's arguments in args/kwargs"
            )
        call_args, call_kwargs = args, kwargs
        options = {"callback": kwargs.pop("callback")} if "callback" in kwargs else {}
        remote_ok = False
    options = _checked_options(options)
    call: TaskCall[Any, Any]
    if isinstance(task, TaskCall):
        call = task.options(**options) if options else task
    else:
        fn = resolve(task, remote_ok=remote_ok, serializer=conn.serializer)
        by_reference = bool(options.pop("by_reference", False))
        after = options.pop("after", None)
        overrides = SendOptions(**options) if options else NO_OVERRIDES
        call = TaskCall(fn, overrides, by_reference=by_reference, after=after)
    return call.send_to(conn, *call_args, **call_kwargs)


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """Send options with timedeltas as seconds and their types checked."""
    return check_send_options(options)
