"""Flows: tasks that wait for other tasks, stored as task dependencies.

``fn.s(...)`` makes a :class:`Signature` (a call not sent yet);
:func:`chain` runs steps one after the other, each step's result passed to
the next as its first positional argument; :func:`group` runs members side
by side and gives back one list of results; :func:`chord` is a group whose
callback receives that list. A flow is sent whole, in one store call
(nothing stored half-way), and lives in the store as tasks in the
``waiting`` status with their parents: a worker crash between steps loses
nothing, and no worker holds a flow in memory.

How results travel: a step that takes its parents' results carries
:data:`FLOW_KEY` in its metadata (``"one"``: the single parent's result;
``"all"``: the list of every parent's result, in member order). A worker
reads the parents (:func:`parent_results`) only for tasks so marked, so
the path of every other task is unchanged.

This module sits below :mod:`ferroq.task_function`: it sees calls through
the :class:`FlowCall` protocol that ``TaskCall`` implements."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from . import _connection, _default
from ._errors import (
    FerroqError,
    InvalidArgumentError,
    TaskCancelledError,
    TaskTimeoutError,
)
from .handle import TaskHandle, failure, outcome

if TYPE_CHECKING:
    from . import _core
    from ._connection import Connection
    from ._types import SentTask

__all__ = [
    "FLOW_KEY",
    "Chain",
    "Chord",
    "FlowCall",
    "FlowHandle",
    "Group",
    "GroupFailedError",
    "GroupHandle",
    "Signature",
    "chain",
    "chord",
    "group",
    "parent_results",
]

#: The metadata key that marks a step taking its parents' results:
#: ``"one"`` (the result of its single parent) or ``"all"`` (the list of
#: its parents' results, in the order the flow gave them).
FLOW_KEY = "__ferroq_flow__"

# One step as the store's enqueue_flow takes it.
_Step = tuple[str, str, bytes, int, int, Optional[str], Optional[str], Optional[str], list[int]]

# The error a dependent is cancelled with when a parent ended otherwise than done.
_DEPENDENCY = re.compile(r"^dependency (\d+) ended (\w+)")


class FlowCall(Protocol):
    """What a flow needs of a call (``TaskCall`` implements it)."""

    @property
    def fn(self) -> SentTask[Any]:
        """The task function the call sends."""

    def bound_connection(self) -> Optional[Connection]:
        """The queue the call's task is bound to (None: the default one)."""

    def flow_step(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], marker: Optional[str]
    ) -> _Step:
        """The call as one step of ``enqueue_flow`` with no parents yet
        (``marker``: the :data:`FLOW_KEY` value to store, if any);
        :class:`InvalidArgumentError` for options a flow step cannot hold."""


class Signature:
    """A task call with its arguments, not sent yet: ``fn.s(1, 2)``.

    Inside a :func:`chain` or :func:`chord` the result of the step before
    is passed as the first positional argument, before ``args``; an
    immutable signature (``fn.si(...)``) does not receive it and only waits
    for the step before to finish."""

    def __init__(
        self,
        call: FlowCall,
        args: tuple[Any, ...] = (),
        kwargs: Optional[dict[str, Any]] = None,
        *,
        immutable: bool = False,
    ) -> None:
        self.call = call
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        #: True for ``fn.si(...)``: the parent's result is not passed.
        self.immutable = immutable

    def send(
        self, queue: Optional[Connection] = None, *, after: Sequence[Any] = ()
    ) -> FlowHandle:
        """Sends this call alone (after the tasks in ``after``, if any)."""
        handle = _send(self, queue, after)
        assert isinstance(handle, FlowHandle)
        return handle

    def __repr__(self) -> str:
        kind = "si" if self.immutable else "s"
        return f"<Signature {self.call.fn.name}.{kind}{self.args!r}>"


class Chain:
    """Steps run one after another (see :func:`chain`)."""

    def __init__(self, steps: Sequence[Flow]) -> None:
        self.steps = list(steps)

    def send(self, queue: Optional[Connection] = None, *, after: Sequence[Any] = ()) -> Any:
        """Sends every step in one store call; returns the handle of the
        last step (a :class:`FlowHandle`, or a :class:`GroupHandle` when
        the chain ends with a group)."""
        return _send(self, queue, after)


class Group:
    """Members run side by side (see :func:`group`)."""

    def __init__(self, members: Sequence[Flow]) -> None:
        self.members = list(members)

    def send(
        self, queue: Optional[Connection] = None, *, after: Sequence[Any] = ()
    ) -> GroupHandle:
        """Sends every member in one store call; returns a :class:`GroupHandle`."""
        handle = _send(self, queue, after)
        assert isinstance(handle, GroupHandle)
        return handle


class Chord:
    """A group and a callback that receives its results (see :func:`chord`)."""

    def __init__(self, header: Group, callback: Signature) -> None:
        self.header = header
        self.callback = callback

    def send(
        self, queue: Optional[Connection] = None, *, after: Sequence[Any] = ()
    ) -> FlowHandle:
        """Sends the members and the callback in one store call; returns the
        callback's :class:`FlowHandle`."""
        handle = _send(self, queue, after)
        assert isinstance(handle, FlowHandle)
        return handle


Flow = Union[Signature, Chain, Group, Chord]


def chain(*steps: Flow) -> Chain:
    """``chain(a.s(1), b.s(), c.s())``: ``a(1)``, then ``b(<a's result>)``,
    then ``c(<b's result>)``. A step may be a group (each member receives
    the result before it; the step after receives the list of the
    members' results), a chord or another chain. A step that fails (after
    its retries) stops the chain: the steps after it end ``cancelled``,
    and the chain's handle raises the failed step's own error."""
    if len(steps) == 1 and isinstance(steps[0], (list, tuple)):
        steps = tuple(steps[0])
    if not steps:
        raise InvalidArgumentError("a chain needs at least one step")
    for s in steps:
        _check_flow(s, "a chain step")
    return Chain(steps)


def group(members: Iterable[Union[Signature, Chain]]) -> Group:
    """``group([a.s(1), a.s(2)])``: members run side by side; the handle's
    :meth:`GroupHandle.results` returns their results in order. A member
    may be a chain (its last step's result counts)."""
    if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
        raise InvalidArgumentError(
            f"a group takes a list of signatures (fn.s(...)) or chains, got {members!r}"
        )
    out = list(members)
    if not out:
        raise InvalidArgumentError("a group needs at least one member")
    for m in out:
        if not isinstance(m, (Signature, Chain)):
            raise InvalidArgumentError(
                f"a group member must be a signature (fn.s(...)) or a chain, got {m!r}"
            )
        if isinstance(m, Chain) and not isinstance(m.steps[-1], (Signature, Chord)):
            raise InvalidArgumentError("a chain inside a group must end with one task")
        _check_flow(m, "a group member")
    return Group(out)


def chord(header: Union[Group, Iterable[Union[Signature, Chain]]], callback: Signature) -> Chord:
    """``chord(group([...]), total.s())``: the callback runs once every
    member is done, with the list of their results (in member order) as
    its first argument. A member that fails cancels the callback; the
    chord's handle raises that member's error."""
    g = header if isinstance(header, Group) else group(header)
    if not isinstance(callback, Signature):
        raise InvalidArgumentError(f"a chord's callback must be a signature, got {callback!r}")
    return Chord(g, callback)


def _check_flow(item: object, what: str) -> None:
    if not isinstance(item, (Signature, Chain, Group, Chord)):
        raise InvalidArgumentError(
            f"{what} must be a signature (fn.s(...)), chain, group or chord, got {item!r}"
        )


class _Builder:
    """Lays a flow out as the store's steps, parents by index."""

    def __init__(self) -> None:
        self.steps: list[_Step] = []
        self.calls: list[FlowCall] = []

    def add(self, sig: Signature, parents: list[int], mode: Optional[str]) -> int:
        marker = None if sig.immutable or not parents else mode
        step = sig.call.flow_step(sig.args, sig.kwargs, marker)
        # Parents here are indexes of this flow's steps (>= 0) or, below
        # zero, -(id + 1) of tasks stored before; the store takes the
        # reverse: ids as they are, and -(i + 1) for step i of this call.
        after = [-(p + 1) for p in parents]
        q, name, payload, priority, attempts, key, backoff, meta, _ = step
        self.steps.append((q, name, payload, priority, attempts, key, backoff, meta, after))
        self.calls.append(sig.call)
        return len(self.steps) - 1

    def lay(
        self, item: Flow, parents: list[int], mode: Optional[str]
    ) -> tuple[list[int], Optional[str]]:
        """Adds ``item`` after ``parents``; returns its exit steps and how
        a step after it takes their results (``one`` or ``all``)."""
        if isinstance(item, Signature):
            return [self.add(item, parents, mode)], "one"
        if isinstance(item, Chain):
            exits, how = parents, mode
            for s in item.steps:
                exits, how = self.lay(s, exits, how)
            return exits, how
        if isinstance(item, Group):
            out: list[int] = []
            for m in item.members:
                out += self.lay(m, parents, mode)[0]
            return out, "all"
        exits, _ = self.lay(item.header, parents, mode)
        return [self.add(item.callback, exits, "all")], "one"


def _send(item: Flow, queue: Optional[Connection], after: Sequence[Any]) -> Any:
    """Sends a flow in one ``enqueue_flow`` call; returns its handle."""
    _check_flow(item, "a flow")
    if queue is not None and not isinstance(queue, _connection.Connection):
        raise InvalidArgumentError(f"send() takes a Queue to send to, got {queue!r}")
    conn = queue if queue is not None else _connection_of(list(_calls(item)))
    parents = [-(pid + 1) for pid in _parent_ids(after, conn)]
    b = _Builder()
    # The first steps only wait for ``after``: no result is passed to them.
    exits, how = b.lay(item, parents, None)
    if conn.eager or _connection.eager_everywhere:
        raise InvalidArgumentError(
            "flows do not run in eager mode: send them to a queue a scheduler serves"
        )
    ids, _inserted = conn._store.enqueue_flow(b.steps)
    handles = [TaskHandle(conn, i, c.fn) for i, c in zip(ids, b.calls)]
    if isinstance(item, Group) or (isinstance(item, Chain) and how == "all"):
        members = [_member_handle(handles, e) for e in exits]
        return GroupHandle(conn, members, handles)
    return FlowHandle(conn, handles[exits[0]].id, handles[exits[0]]._fn, handles)


def _calls(item: Flow) -> Iterator[FlowCall]:
    """The calls of a flow's steps."""
    if isinstance(item, Signature):
        yield item.call
    elif isinstance(item, Chain):
        for s in item.steps:
            yield from _calls(s)
    elif isinstance(item, Group):
        for m in item.members:
            yield from _calls(m)
    else:
        yield from _calls(item.header)
        yield item.callback.call


def _member_handle(handles: list[TaskHandle[Any]], index: int) -> FlowHandle:
    h = handles[index]
    return FlowHandle(h.queue, h.id, h._fn, handles)


def _connection_of(calls: list[FlowCall]) -> Connection:
    bound = {id(c): c for c in (call.bound_connection() for call in calls) if c is not None}
    if len(bound) > 1:
        raise InvalidArgumentError(
            "the tasks of one flow are bound to different queues; pass the queue to send()"
        )
    if bound:
        return next(iter(bound.values()))
    return _default.get_default()


def _same_store(a: Connection, b: Connection) -> bool:
    """True when ``a`` and ``b`` reach one store (each memory:// queue is a
    store of its own; any other URL names its store)."""
    if a is b or a._store is b._store:
        return True
    return a.url == b.url and not a.url.startswith("memory:")


def _parent_ids(after: Sequence[Any], conn: Connection) -> list[int]:
    """Task ids from handles (or ids) given as ``after``; a handle of a
    store other than ``conn``'s is refused (its id means another task there)."""
    if isinstance(after, (str, bytes)) or not isinstance(after, Iterable):
        raise InvalidArgumentError(f"after must be a list of task handles, got {after!r}")
    out: list[int] = []
    for h in after:
        if isinstance(h, (GroupHandle, TaskHandle)) and not _same_store(h.queue, conn):
            raise InvalidArgumentError(
                f"after names {h!r}, a task of another store ({h.queue!r}), not of {conn!r}"
            )
        if isinstance(h, GroupHandle):
            out += [m.id for m in h.members]
        elif isinstance(h, TaskHandle):
            out.append(h.id)
        elif isinstance(h, int) and not isinstance(h, bool) and h > 0:
            out.append(h)
        else:
            raise InvalidArgumentError(
                f"after takes task handles (or task ids), got {h!r}"
            )
    return out


class FlowHandle(TaskHandle[Any]):
    """The handle of a flow's last step (a chain's last task, a chord's
    callback), knowing every step of the flow it was sent with.

    :meth:`result` returns that step's result; when an earlier step failed,
    the steps after it end ``cancelled`` by the store and :meth:`result`
    raises the failed step's own error (as its handle would), not a bare
    cancellation. :meth:`cancel` cancels every step not finished yet."""

    __slots__ = ("steps",)

    def __init__(
        self,
        queue: Connection,
        id: int,
        fn: Optional[SentTask[Any]],
        steps: Sequence[TaskHandle[Any]],
    ) -> None:
        super().__init__(queue, id, fn)
        #: A handle per step of the flow, in the order they were laid out.
        self.steps: list[TaskHandle[Any]] = list(steps)

    def result(self, timeout: Optional[float] = None) -> Any:
        """Waits for this step and returns its result; raises the error of
        the step that stopped the flow (see the class docs), or
        :class:`~ferroq.TaskTimeoutError` when ``timeout`` passes first."""
        try:
            return super().result(timeout)
        except TaskCancelledError:
            t = self.queue._store.get(self.id)
            if t is None:
                raise
            cause = root_cause(self.queue, t)
            if cause is None:
                raise
            raise cause from None

    def cancel(self) -> str:
        """Cancels every step of the flow that has not finished (waiting
        ones at once, running ones are asked to stop); returns this step's
        status afterwards."""
        cancel_all(self.queue, [s.id for s in self.steps])
        return self.status()


def cancel_all(conn: Connection, ids: list[int]) -> None:
    """Cancels the tasks among ``ids`` that have not finished."""
    store = conn._store
    for t in store.get_many(ids):
        if t is not None and t.status in ("waiting", "queued", "running"):
            try:
                store.cancel(t.id)
            except FerroqError:
                continue  # finished in between: nothing to cancel


def root_cause(conn: Connection, t: _core.Task) -> Optional[BaseException]:
    """The error of the step that stopped a flow, for a task the store
    cancelled because a dependency ended otherwise than done (None when
    ``t`` was cancelled for another reason)."""
    store = conn._store
    seen = set()
    while t.status == "cancelled" and t.error and t.id not in seen:
        seen.add(t.id)
        m = _DEPENDENCY.match(t.error)
        if m is None:
            return None
        parent = store.get(int(m.group(1)))
        if parent is None:
            return None
        if parent.status == "failed":
            return failure(parent)
        if parent.status != "cancelled":
            try:
                outcome(parent, None, allow_pickle=False)
            except Exception as e:
                return e
            return None
        t = parent
    if t.status == "cancelled" and seen:
        return TaskCancelledError(f"task {t.id} ({t.name}) was cancelled, which stopped the flow")
    return None


class GroupFailedError(FerroqError):
    """Raised by :meth:`GroupHandle.results` when some members did not end
    ``done``: :attr:`results` has every member's result (None for those
    that failed), :attr:`errors` maps each failed member's index to its
    exception, :attr:`failed` lists those indexes in order."""

    def __init__(self, results: list[Any], errors: dict[int, BaseException]) -> None:
        self.results = results
        self.errors = errors
        self.failed = sorted(errors)
        first = errors[self.failed[0]]
        super().__init__(
            f"{len(errors)} of {len(results)} group members did not succeed "
            f"(first, member {self.failed[0]}: {first})"
        )


class GroupHandle:
    """The handle of a sent group: one handle per member, in order."""

    def __init__(
        self, queue: Connection, members: list[FlowHandle], steps: list[TaskHandle[Any]]
    ) -> None:
        self.queue = queue
        #: The members' handles, in the order they were given.
        self.members = members
        #: Every step of the flow the group was sent with.
        self.steps = steps

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Any:
        return iter(self.members)

    def results(
        self, timeout: Optional[float] = None, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Waits for every member; returns their results in member order.

        When a member did not end ``done``, raises :class:`GroupFailedError`
        (carrying the other results and each failure), or with
        ``return_exceptions=True`` puts the exception in that member's
        place. :class:`~ferroq.TaskTimeoutError` when ``timeout`` seconds
        pass before every member finished."""
        self.wait(timeout)
        out: list[Any] = []
        errors: dict[int, BaseException] = {}
        for i, m in enumerate(self.members):
            try:
                out.append(m.result(0))
            except TaskTimeoutError:
                raise
            except Exception as e:
                errors[i] = e
                out.append(e if return_exceptions else None)
        if errors and not return_exceptions:
            raise GroupFailedError(out, errors)
        return out

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits until every member has finished (one read of all the
        pending members per wake-up, not one wait per member)."""
        store = self.queue._store
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = [m.id for m in self.members]
        while pending:
            found = store.get_many(pending)
            pending = [
                i for i, t in zip(pending, found)
                if t is not None and t.status in ("waiting", "queued", "running")
            ]
            if not pending:
                return
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TaskTimeoutError(
                    f"{len(pending)} of {len(self.members)} group members still unfinished"
                )
            store.wait_finished(pending[0], left)

    def statuses(self) -> list[str]:
        """Each member's status, in order (one store read)."""
        return [
            "missing" if t is None else t.status
            for t in self.queue._store.get_many([m.id for m in self.members])
        ]

    def cancel(self) -> None:
        """Cancels every step of the flow that has not finished."""
        cancel_all(self.queue, [s.id for s in self.steps])

    def __repr__(self) -> str:
        return f"<GroupHandle of {len(self.members)}>"


def parent_results(
    store: _core.Store, task: Any, result_of: Callable[[_core.Task], Any]
) -> Optional[list[Any]]:
    """The arguments a flow step takes from its parents, to put before its
    own: ``[result]`` for a step marked ``one``, ``[[results...]]`` for
    ``all``; None for a task that is not so marked (the common case costs
    a substring test, no store call). ``result_of`` decodes one parent's
    stored result."""
    meta = getattr(task, "metadata", None)
    if not meta or FLOW_KEY not in meta:
        return None
    try:
        mode = json.loads(meta).get(FLOW_KEY)
    except (ValueError, AttributeError):
        return None
    if mode not in ("one", "all"):
        return None
    parents = store.dependencies([task.id])[0]
    found = store.get_many(parents)
    values = []
    for pid, p in zip(parents, found):
        if p is None or p.status != "done":
            raise FerroqError(f"parent {pid} of flow step {task.id} has no result to pass")
        values.append(result_of(p))
    if mode == "one":
        return [values[0]] if values else []
    return [values]
