"""``Queue``: a store opened from a URL, and the verbs users call on it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    TypeVar,
    Union,
    cast,
    overload,
)

from typing_extensions import ParamSpec

from . import _core, _default, steer
from ._checks import seconds, seconds_to_ms
from ._connection import Connection, redact
from ._errors import InvalidArgumentError, InvalidTransitionError, TaskNotFoundError
from ._types import STATUSES, HasId
from .backoff import Backoff
from .events import Event, EventFollower, read_events
from .handle import TaskHandle
from .listen import listener
from .options import NO_OVERRIDES, TaskOptions, parse_rate
from .periodic import ScheduleRecord, add_schedule, make_schedule, schedules
from .receive import deliver
from .records import TaskRecord
from .resources import Requirement
from .scheduler.eager import EagerRunner
from .steer import ExternalTask, QueueOptions
from .task import make_task, resolve, send_call
from .task_function import CallArgs, TaskCall, TaskFunction

if TYPE_CHECKING:
    import polars as pl

    from .frames import FrameSummary

__all__ = [
    "STATUSES",
    "ExternalTask",
    "Queue",
    "QueueOptions",
    "ShardCheck",
    "WorkerRecord",
    "default_queue",
    "redact",
    "set_default_queue",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[[Any], Any])
H = TypeVar("H", bound=HasId)

# Dead letters requeued per store call by retry_failed.
_RETRY_CHUNK = 1000


def _count(value: object, what: str) -> int:
    """A count the caller gave (a limit): a whole number >= 0, else
    :class:`InvalidArgumentError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def _timestamp(value: Optional[datetime], what: str) -> Optional[float]:
    """A datetime filter as seconds since the epoch (None stays None);
    anything else, or a date the platform cannot place, is
    :class:`InvalidArgumentError`."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidArgumentError(f"{what} must be a datetime, got {value!r}")
    try:
        return value.timestamp()
    except (ValueError, OverflowError, OSError) as e:
        raise InvalidArgumentError(f"{what} {value!r} is out of range: {e}") from None


class Queue(Connection):
    """A ferroq store: where tasks are sent, and what schedulers serve.

    ``url`` is a directory path (``"tasks.db"``), ``sqlite:///path?shards=4``
    (options: ``shards``, ``synchronous=normal|full``, ``max_payload``,
    ``retention_s``), or ``memory://`` for tests. ``serializer`` is the
    default for tasks that do not choose one (``"json"``; ``"pickle"`` to
    opt in everywhere).

    For tests: ``eager=True`` runs every task sent here at once, in the
    sending thread, as a worker would (see :meth:`run_eager`); ``clock``
    (a :class:`ferroq.testing.ManualClock`) makes the store read its time
    from that clock, so delays, leases, retries and deadlines move only
    when the test advances it. ``callback_threads`` is how many send-time
    callbacks run at once (1: one at a time, in the order tasks finish).
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        serializer: str = "json",
        eager: bool = False,
        clock: Optional[_core.ManualClock] = None,
        callback_threads: int = 1,
    ) -> None:
        super().__init__(url, serializer=serializer, clock=clock, eager=eager)
        self.callback_threads = callback_threads
        #: The worker name :meth:`claim` uses when none is given.
        self.external_worker = f"external:{socket.gethostname()}:{os.getpid()}"
        self._eager_runner: Optional[EagerRunner] = None

    # -- tasks ---------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def task(
        self,
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
        serializer: Optional[str] = None,
        concurrency: Optional[int] = None,
        rate_limit: Union[str, float, None] = None,
        requires: Optional[Mapping[str, Requirement]] = None,
        meta: Optional[dict[str, Any]] = None,
        schedule: Union[str, timedelta, None] = None,
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def task(
        self,
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
        serializer: Optional[str] = None,
        concurrency: Optional[int] = None,
        rate_limit: Union[str, float, None] = None,
        requires: Optional[Mapping[str, Requirement]] = None,
        meta: Optional[dict[str, Any]] = None,
        schedule: Union[str, timedelta, None] = None,
    ) -> Union[TaskFunction[P, R], Callable[[Callable[P, R]], TaskFunction[P, R]]]:
        """``@queue.task``: like :func:`ferroq.task`, bound to this queue, so
        ``fn.send(...)`` always enqueues here."""
        options = TaskOptions(
            queue=queue,
            priority=priority,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            result_ttl=result_ttl,
            expires=expires,
            serializer=serializer or self.serializer,
            concurrency=concurrency,
            rate_limit=parse_rate(rate_limit),
            requires=requires,
        )
        every_run = None
        if schedule is not None:
            # Checked before anything is registered: a bad schedule leaves no task.
            every_run = make_schedule(
                every=schedule if isinstance(schedule, timedelta) else None,
                cron=None if isinstance(schedule, timedelta) else schedule,
            )

        def decorate(f: Callable[P, R]) -> TaskFunction[P, R]:
            tf = make_task(f, self, name, options, meta)
            if every_run is not None:
                add_schedule(tf, every_run)
            return tf

        return decorate(fn) if fn is not None else decorate

    def send(
        self,
        task: Union[TaskFunction[P, R], TaskCall[P, R], str],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """Enqueues ``task`` — a task function, ``fn.options(...)``, or a
        task's name — in this queue; returns its handle once it is durable.

        Two forms. Short: ``queue.send(task, *args, **kwargs)`` passes every
        argument to the task (``callback=`` aside); a keyword named like a
        send option (``priority=``, ``key=``, ``queue=``...) is refused with
        :class:`InvalidArgumentError` as ambiguous, and a name no task of
        this process is registered under raises :class:`UnknownTaskError`
        (a typo is caught here, not by a worker). Explicit:
        ``queue.send(task, args=[...], kwargs={...}, priority=5, ...)``
        keeps the task's arguments apart from the send options (those of
        :meth:`TaskFunction.options`, including ``callback`` and
        ``by_reference``), and also sends a name this process has not
        registered, as it is, for a worker that has it (like Celery's
        ``send_task``). A name is a task's registered name
        (``module:qualname``, or its ``name=``), or the part after the
        colon when exactly one registered task has it."""
        return send_call(self, task, args, kwargs)

    @overload
    def send_many(
        self,
        task: Union[
            TaskFunction[P, Coroutine[Any, Any, T]], TaskCall[P, Coroutine[Any, Any, T]]
        ],
        items: Iterable[CallArgs],
        /,
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[T]]: ...

    @overload
    def send_many(
        self,
        task: Union[TaskFunction[P, R], TaskCall[P, R]],
        items: Iterable[CallArgs],
        /,
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[R]]: ...

    @overload
    def send_many(
        self,
        task: str,
        items: Iterable[CallArgs],
        /,
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[Any]]: ...

    def send_many(
        self,
        task: Union[TaskFunction[Any, Any], TaskCall[Any, Any], str],
        items: Iterable[CallArgs],
        /,
        *,
        key: Optional[Callable[[Any], Optional[str]]] = None,
        keys: Optional[Sequence[Optional[str]]] = None,
    ) -> list[TaskHandle[Any]]:
        """Sends one task per item into this queue and returns their handles,
        in order, one store call per chunk: :meth:`TaskFunction.map` with
        the queue given (``task``: a task function, ``fn.options(...)``, or
        the name of a task registered here). Each item is a tuple of
        positional arguments or a dict of keyword arguments; ``key`` (a
        function of the item) or ``keys`` (one per item) make the sends
        idempotent."""
        if isinstance(task, TaskCall):
            call: TaskCall[Any, Any] = task
        else:
            fn = resolve(task, remote_ok=False, serializer=self.serializer)
            call = TaskCall(fn, NO_OVERRIDES)
        return call.map_to(self, items, key=key, keys=keys)

    def run_eager(
        self, handle: H, callback: Optional[Callable[[Any], None]]
    ) -> H:
        """What a send does in eager mode (``Queue(eager=True)`` or
        ``ferroq.testing.eager()``): the task is stored as usual, then run
        here, in the sending thread, through the steps a worker takes —
        claimed, run with :func:`~ferroq.current_task` set, its result or
        error stored as a worker stores it, status hooks called — so
        ``handle.result()``, ``handle.status()`` and :meth:`get` read what
        they would after a real worker. Retries run at once (on a store
        with a manual clock they wait for their backoff on that clock).
        A task scheduled for later stays queued (run it with
        ``ferroq.testing.run_until_empty`` once due). ``callback`` is
        called before the send returns when the task has finished.
        Returns ``handle``."""
        record = self._store.get(handle.id)
        if record is not None:
            self.eager_runner().run_task(handle.id, record.queue)
        if callback is not None:
            done = self._store.get(handle.id)
            if done is not None and done.status not in ("queued", "running"):
                deliver(handle, callback)
            else:
                self._receive_loop().watch(handle, callback)
        return handle

    def eager_runner(self) -> EagerRunner:
        """The runner eager sends and ``ferroq.testing.run_until_empty`` use
        on this queue (created on first use)."""
        if self._eager_runner is None:
            self._eager_runner = EagerRunner(self)
        return self._eager_runner

    def handle(self, id: int, task: Optional[TaskFunction[Any, R]] = None) -> TaskHandle[R]:
        """A handle for an existing task id (typed by ``task`` when given)."""
        return TaskHandle(self, id, task)

    def get(self, id: int) -> Optional[TaskRecord]:
        """The stored record of a task, decoded (:class:`TaskRecord`), or None."""
        t = self._store.get(id)
        return None if t is None else TaskRecord(self, t)

    def get_by_key(self, key: str, queue: str = "default") -> Optional[TaskRecord]:
        """The stored record of the task with this key in ``queue``, or None."""
        t = self._store.get_by_key(queue, key)
        return None if t is None else TaskRecord(self, t)

    def cancel(self, id: int, *, force: bool = False) -> str:
        """Cancels a task: a queued one at once. A running one is asked to
        stop (its worker ends it ``cancelled`` at its next check, and no
        later outcome can revive it); with ``force`` it ends ``cancelled``
        now, whoever holds it (an operator's override; a worker still
        running it loses its lease). Returns the status it has then."""
        if not force:
            return self._store.cancel(id)
        return steer.cancel_now(self, id)

    def retry(self, id: int) -> None:
        """Requeues a failed, cancelled or expired task with fresh attempts."""
        self._store.retry(id)

    def delete(self, id: int) -> None:
        """Deletes a finished task now, whatever its retention (its key is
        free again). An unfinished task raises
        :class:`InvalidTransitionError`: cancel it first."""
        self._store.delete(id)

    def failed(
        self,
        *,
        queue: Optional[str] = None,
        name: Optional[str] = None,
        error_type: Optional[str] = None,
        finished_after: Optional[datetime] = None,
        finished_before: Optional[datetime] = None,
        limit: Optional[int] = None,
    ) -> Iterator[TaskRecord]:
        """The dead letters: tasks that ended ``failed`` (attempts
        exhausted, or failed for good), oldest id first, filtered by queue,
        task name, error type (``module.Name`` as in
        :attr:`TaskRecord.error_type`, or the bare class name) and finish
        time (``finished_after <= finished_at < finished_before``; naive
        datetimes are local time). Reads the store a page at a time."""
        if limit is not None:
            _count(limit, "limit")
        lo = _timestamp(finished_after, "finished_after")
        hi = _timestamp(finished_before, "finished_before")
        # Checked here, at the call; the pages are read as they are consumed.
        return self._dead_letters(queue, name, error_type, lo, hi, limit)

    def _dead_letters(
        self,
        queue: Optional[str],
        name: Optional[str],
        error_type: Optional[str],
        lo: Optional[float],
        hi: Optional[float],
        limit: Optional[int],
    ) -> Iterator[TaskRecord]:
        after: Optional[int] = None
        given = 0
        while limit is None or given < limit:
            page = self._store.list_tasks(
                queue=queue, status="failed", name=name, after_id=after, limit=1000
            )
            if not page:
                return
            after = page[-1].id
            for t in page:
                record = TaskRecord(self, t)
                at = None if t.finished_at is None else t.finished_at / 1000
                if lo is not None and (at is None or at < lo):
                    continue
                if hi is not None and (at is None or at >= hi):
                    continue
                if error_type is not None and error_type not in (
                    record.error_type,
                    (record.error_type or "").rsplit(".", 1)[-1],
                ):
                    continue
                yield record
                given += 1
                if limit is not None and given >= limit:
                    return

    def retry_failed(
        self,
        *,
        queue: Optional[str] = None,
        name: Optional[str] = None,
        error_type: Optional[str] = None,
        finished_after: Optional[datetime] = None,
        finished_before: Optional[datetime] = None,
    ) -> int:
        """Requeues every dead letter matching the filters of
        :meth:`failed` with fresh attempts; returns how many went back.
        Each move is guarded: a task retried or deleted meanwhile by
        someone else is skipped, not an error."""
        ids = [
            r.id
            for r in self.failed(
                queue=queue,
                name=name,
                error_type=error_type,
                finished_after=finished_after,
                finished_before=finished_before,
            )
        ]
        moved = 0
        for start in range(0, len(ids), _RETRY_CHUNK):
            for err in self._store.retry_many(ids[start : start + _RETRY_CHUNK]):
                if err is None:
                    moved += 1
                elif not isinstance(err, (InvalidTransitionError, TaskNotFoundError)):
                    raise err
        return moved

    def list(
        self,
        *,
        queue: Optional[str] = None,
        status: Optional[str] = None,
        batch: Optional[str] = None,
        name: Optional[str] = None,
        key: Optional[str] = None,
        after_id: Optional[int] = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        """A page of task records (:class:`TaskRecord`) in id order,
        filtered by queue, status, batch, task name and key; pass the last
        id as ``after_id`` for the next page."""
        return [
            TaskRecord(self, t)
            for t in self._store.list_tasks(
                queue=queue,
                status=status,
                batch=batch,
                name=name,
                key=key,
                after_id=after_id,
                limit=limit,
            )
        ]

    def members(
        self, queue: Optional[str] = None, *, limit: int = 100_000
    ) -> dict[str, dict[str, List[int]]]:
        """Task ids per queue and status, ``{queue: {status: [ids]}}`` (every
        status present), at most ``limit`` ids in all: the member lists
        beside :meth:`stats`' totals, read a page at a time."""
        _count(limit, "limit")
        out: dict[str, dict[str, List[int]]] = {}
        after: Optional[int] = None
        seen = 0
        while seen < limit:
            page = self._store.list_tasks(
                queue=queue, after_id=after, limit=min(10_000, limit - seen)
            )
            if not page:
                break
            after = page[-1].id
            seen += len(page)
            for t in page:
                out.setdefault(t.queue, {s: [] for s in STATUSES})[t.status].append(t.id)
        return out

    def stats(self) -> dict[str, dict[str, int]]:
        """Task counts per queue and status, every status present:
        ``{"default": {"queued": 3, "running": 1, "done": 10, ...}}``."""
        out: dict[str, dict[str, int]] = {}
        for queue, status, count in self._store.counts():
            out.setdefault(queue, dict.fromkeys(STATUSES, 0))[status] = count
        return out

    def workers(self) -> List[WorkerRecord]:
        """The schedulers registered in this store (``ferroq worker`` and
        every :class:`~ferroq.QueueScheduler`), with the queues they serve."""
        return [
            WorkerRecord(wid, host, pid, started, beat, list(queues))
            for wid, host, pid, started, beat, queues in self._store.workers()
        ]

    def unserved(self) -> dict[str, int]:
        """Queues with tasks waiting that no registered worker serves:
        ``{queue: queued tasks}``. ``ferroq stats`` prints them. (A worker
        started without a queue list takes on a queue once it sees a task
        there it can run, within ``CleanupIntervals.queues`` seconds.)"""
        served = {q for w in self.workers() for q in w.queues}
        return {
            queue: counts["queued"]
            for queue, counts in sorted(self.stats().items())
            if counts["queued"] and queue not in served
        }

    def check(self) -> List[ShardCheck]:
        """Checks the store, shard by shard: the database's own integrity
        check, that each file belongs to this store at its place, every
        stored payload and result against its checksum, and whether a
        worker met damage in it. ``ferroq check`` prints the same."""
        return [ShardCheck(path, ok, msgs) for path, ok, msgs in self._store.check()]

    def backup(self, path: Union[str, os.PathLike[str]]) -> None:
        """Copies this store, consistently, into the new directory ``path``
        while it stays in use (SQLite's online backup, shard by shard);
        ``Queue(path)`` opens the copy. Every task acknowledged before the
        call is in it. A PostgreSQL store is backed up with ``pg_dump``
        instead (:class:`InvalidArgumentError` here)."""
        self._store.backup(os.fspath(path))

    def purge(self, older_than: Optional[float] = None) -> int:
        """Deletes finished tasks past their retention, and (when
        ``older_than`` seconds is given) every task that finished longer ago
        than that; returns how many."""
        before = None
        if older_than is not None:
            # Store time (a manual clock's, if any); +1 ms: the store purges
            # strictly before, and a task finished this very millisecond
            # finished no later than "now".
            age_ms = int(seconds(older_than, "older_than") * 1000)
            before = self._store.now_ms() - age_ms + 1
        return self._store.purge(before)

    # -- frames ----------------------------------------------------------------

    def enqueue_frame(
        self,
        df: Any,
        *,
        task: Union[Callable[..., Any], str, None] = None,
        key: Union[str, Sequence[str], None] = None,
        batch: Optional[str] = None,
        priority: Optional[int] = None,
        queue: Optional[str] = None,
        retries: Optional[int] = None,
        backoff: Optional[Backoff] = None,
    ) -> FrameSummary:
        """Sends each row of a Polars DataFrame as one task whose keyword
        arguments are the row's columns, in one call into the store per
        100,000 rows (no Python loop over rows). ``task`` is a task function,
        a plain function (registered as a task) or a registered name; a
        function of one parameter gets the one argument column positionally,
        whatever it is called. Without ``task`` the rows are stored alone
        (``batch`` is then required), to be run by ``process(fn,
        batch=...)``. With ``key`` (one column or several, of any common
        type) a row whose key is already in the queue is skipped, so sending
        the same frame again stores nothing new; key columns the function
        does not take are not passed to it. ``batch`` labels the rows
        (default: the task's name, or the store's batch of the same function
        imported under another module path); they
        go to the queue ``batch:<batch>`` unless ``queue`` names another.
        A batch holds one function's rows: another function is refused
        (:class:`InvalidArgumentError`). Returns a
        :class:`~ferroq.frames.FrameSummary` (inserted, skipped). Needs
        ``pip install 'ferroq[frames]'``."""
        from .frames import enqueue_frame

        return enqueue_frame(
            self, df, task=task, key=key, batch=batch, priority=priority,
            queue_name=queue, retries=retries, backoff=backoff,
        )

    def results_frame(
        self,
        batch: Optional[str] = None,
        *,
        queue: Optional[str] = None,
        model: Optional[type[Any]] = None,
        include: Union[str, Sequence[str], None] = ("done", "failed", "cancelled", "expired"),
        order: Literal["id", "finished"] = "id",
    ) -> pl.DataFrame:
        """A batch's tasks as a Polars DataFrame, in id order: ``task_id``, the
        key columns (with their types), ``status``, ``attempts``, ``error``
        (``Type: message``) and ``result`` decoded from JSON by Polars.
        ``model`` (a Pydantic model) validates the results in one batch
        into one typed column per field instead of ``result``; rows that
        fail are kept, with the reason in ``validation_error``. ``include``
        lists the statuses to return (None: all). ``order="finished"``
        adds ``finished_at`` (UTC) and sorts by it: completion order."""
        from .frames import results_frame

        return results_frame(
            self, batch, queue_name=queue, model=model, include=include, order=order
        )

    def process(
        self,
        fn: Union[Callable[..., Any], str],
        frame: Any = None,
        *,
        batch: Optional[str] = None,
        key: Union[str, Sequence[str], None] = None,
        queue: Optional[str] = None,
        concurrency: int = 10,
        qps: Optional[float] = None,
        retries: int = 3,
        backoff: Optional[Backoff] = None,
        progress: Union[bool, Literal["auto", "rich", "plain"]] = True,
        model: Optional[type[Any]] = None,
        include: Union[str, Sequence[str], None] = ("done", "failed", "cancelled", "expired"),
        lease: float = 30.0,
        grace: float = 10.0,
        retry_failed: bool = False,
        rebind: bool = False,
        on_interrupt: Literal["raise", "return"] = "raise",
        order: Literal["id", "finished"] = "id",
    ) -> pl.DataFrame:
        """Runs ``fn`` over every row of ``frame`` (keyword arguments from
        the columns; a function of one parameter gets the one argument
        column positionally) and returns :meth:`results_frame`, blocking
        until every row is done or has failed ``retries + 1`` times.

        Plain functions run on ``concurrency`` threads, ``async def`` ones
        as up to ``concurrency`` coroutines on one event loop. ``qps``
        limits calls per second across all of them, retries made in place by
        :func:`with_resilience` included. A progress display (done, failed,
        waiting to retry, rate, ETA) is drawn on stderr: with rich when
        installed (``progress="rich"``/``"plain"`` to choose), none with
        ``progress=False``.

        ``fn`` is what runs, on every row of the batch: rows enqueued alone
        are fitted to it; rows enqueued for another function are refused
        (:class:`InvalidArgumentError`) unless ``rebind=True``.

        Resumable: rows are keyed by ``key`` columns, or by their position
        when ``key`` is None, so running the same call again skips rows
        already finished; ``retry_failed=True`` also runs the failed ones
        again (fresh attempts). Ctrl+C lets running rows finish (``grace``
        seconds), puts claimed ones back, then raises ``KeyboardInterrupt``
        (``on_interrupt="raise"``) or returns the rows finished so far
        (``"return"``); after a crash or SIGKILL the next run takes over the
        dead run's rows at once. ``batch`` defaults to the function's task
        name, or to the store's batch of the same function under another
        module path (``job:fn`` run as ``python job.py``, ``app.job:fn``
        imported): one batch however the job is started; with
        ``frame=None`` the rows already enqueued in
        the batch are run. ``model`` (default: the function's return
        annotation when it is a Pydantic model) and ``order`` are passed to
        :meth:`results_frame`."""
        from .process import process

        return process(
            self, fn, frame, batch=batch, key=key, queue_name=queue,
            concurrency=concurrency, qps=qps, retries=retries, backoff=backoff,
            progress=progress, model=model, include=include, lease=lease, grace=grace,
            retry_failed=retry_failed, rebind=rebind, on_interrupt=on_interrupt, order=order,
        )

    # -- listen data ---------------------------------------------------------

    def update_listen_data(self, key: str, value: Any) -> int:
        """Sets the listen data under ``key``: every scheduler with a
        ``@listener(key)`` runs it once with ``value``. Returns the change's
        version."""
        return self._store.listen_set(key, self.encode(value))

    def listen_data(self, key: str, default: Any = None) -> Any:
        """The latest value set under ``key`` (``default`` when none)."""
        found = self._store.listen_get(key)
        if found is None:
            return default
        return self.decode(found[1])

    def listener(self, key: str) -> Callable[[F], F]:
        """``@queue.listener("key")``: a listener run only by this queue's schedulers."""
        return listener(key, queue=self)

    # -- capacity ------------------------------------------------------------

    def set_capacity(self, queue: str, capacity: Optional[int]) -> None:
        """Caps the unfinished tasks of ``queue`` (None removes the cap).
        Sends beyond it raise :class:`QueueFullError`, or wait with
        ``fn.options(wait=seconds)``."""
        if capacity is not None and capacity < 0:
            raise InvalidArgumentError(f"capacity must be >= 0, got {capacity}")
        self._store.set_capacity(queue, capacity)

    def capacity(self, queue: str) -> Optional[int]:
        """The cap on unfinished tasks of ``queue``, if any."""
        return self._store.capacity(queue)

    # -- tasks steered from outside -----------------------------------------

    def put(
        self,
        queue: str,
        payload: Any = None,
        *,
        key: Optional[str] = None,
        priority: int = 0,
        delay: Optional[float] = None,
        run_at: Optional[datetime] = None,
        metadata: Optional[Any] = None,
        on_duplicate: Literal["existing", "error"] = "existing",
    ) -> TaskHandle[Any]:
        """Puts a record into ``queue``: a task with a payload and no
        function, for a person or another service to finish (hand it out
        with :meth:`claim`, :meth:`active` or :meth:`start`). A ``key`` is
        unique in the queue: a second put returns the existing task, or
        raises :class:`DuplicateKeyError` with ``on_duplicate="error"``.
        Priorities are any 64-bit integer (higher first; then earlier
        ``run_at``; then lower id), so timestamps work."""
        return steer.put(
            self, queue, payload, key=key, priority=priority, delay=delay, run_at=run_at,
            metadata=metadata, on_duplicate=on_duplicate,
        )

    def claim(
        self, queue: str = "default", *, worker: Optional[str] = None, lease: float = 300.0
    ) -> Optional[ExternalTask]:
        """Hands out the next ready task of ``queue`` to be finished by
        something other than a worker function (a person, another service),
        with a lease of ``lease`` seconds. Finish it with :meth:`complete` or
        :meth:`fail` under the same ``worker`` name (default: this process's)."""
        who = worker or self.external_worker
        got = self._store.claim(queue, who, 1, steer.lease_ms(lease))
        return ExternalTask(self, got[0], who) if got else None

    def active(
        self, queue: str = "default", *, worker: Optional[str] = None, lease: float = 300.0
    ) -> Optional[ExternalTask]:
        """The task handed out in ``queue`` now; when none is, the next one
        is handed out to ``worker`` (None if the queue is empty). Atomic
        store-wide: callers in any thread or process never see two."""
        who = worker or self.external_worker
        t = self._store.active(queue, who, lease_ms=steer.lease_ms(lease))
        return None if t is None else ExternalTask(self, t, t.worker or who)

    def start(
        self, id: int, *, worker: Optional[str] = None, lease: float = 300.0
    ) -> ExternalTask:
        """Hands out the chosen queued task ``id`` (out of turn). On a
        serial queue the task handed out until now goes back to the queue
        (its attempt not counted): a switch to another prompt."""
        who = worker or self.external_worker
        t = self._store.start(id, who, lease_ms=steer.lease_ms(lease))
        return ExternalTask(self, t, who)

    def complete(
        self, id: int, result: Any = None, *, worker: Optional[str] = None, force: bool = False
    ) -> None:
        """Finishes a handed-out task with ``result``. Only the holder of its
        lease (``worker``) may, unless ``force`` (an operator's override)."""
        self._store.complete(id, worker or self.external_worker, self.encode(result), force=force)

    def fail(
        self,
        id: int,
        error: str,
        *,
        worker: Optional[str] = None,
        retry: bool = False,
        force: bool = False,
    ) -> str:
        """Fails a handed-out task; with ``retry`` it goes back to the queue
        while attempts remain. Returns its new status."""
        return steer.fail(self, id, worker or self.external_worker, error, retry=retry, force=force)

    def progress(
        self, id: int, fraction: float, *, worker: Optional[str] = None, force: bool = False
    ) -> None:
        """Records progress (0..1) of a running task from outside it."""
        self._store.progress(id, worker or self.external_worker, float(fraction), force=force)

    def heartbeat(
        self, id: int, *, lease: float = 300.0, worker: Optional[str] = None, force: bool = False
    ) -> bool:
        """Extends a handed-out task's lease (and answer deadline) to
        ``lease`` seconds from now; returns whether it was held."""
        return steer.heartbeat(self, id, worker or self.external_worker, lease, force)

    def release(self, id: int, *, worker: Optional[str] = None, force: bool = False) -> None:
        """Gives a handed-out task back to its queue (attempt not counted)."""
        steer.release(self, id, worker or self.external_worker, force)

    def requeue(self, id: int) -> None:
        """Puts a finished task (done, failed, cancelled or expired) back in
        its queue with fresh attempts."""
        self._store.requeue(id)

    def set_priority(self, id: int, priority: int) -> None:
        """Changes the priority of a queued task."""
        self._store.set_priority(id, priority)

    def set_run_at(self, id: int, when: Union[datetime, float]) -> None:
        """Moves a queued task to run at ``when`` (a datetime, or seconds
        from now)."""
        if isinstance(when, datetime):
            at = steer.when_ms(self, None, when)
        else:
            at = steer.when_ms(self, when, None)
        assert at is not None
        self._store.set_run_at(id, at)

    def set_metadata(self, id: int, metadata: Any) -> None:
        """Attaches (or replaces; None removes) user metadata, any JSON value."""
        self._store.set_metadata(id, steer.metadata_json(metadata))

    def set_queue_options(
        self,
        queue: str,
        *,
        serial: bool = False,
        answer_timeout: Optional[float] = None,
        on_timeout: Literal["requeue", "expire"] = "requeue",
        retention: Optional[float] = None,
        aging: Optional[float] = None,
        dead_letter: Optional[str] = None,
        dead_retention: Optional[float] = None,
    ) -> None:
        """Sets ``queue``'s store-wide options (replacing the ones set
        before; its capacity and whether it is paused are kept): ``serial``
        hands out at most one task at a time (the next when it finishes or
        is cancelled); ``answer_timeout`` gives each handed-out task that
        many seconds to be answered, after which it goes back to the queue
        or ends ``expired`` (``on_timeout``); ``retention`` keeps finished
        tasks of the queue that many seconds (instead of the store's
        default); ``aging`` makes a waiting task gain one priority level
        every that many seconds, so newer work of higher priority cannot
        hold it back forever; ``dead_letter`` files the queue's failed
        tasks (attempts exhausted) in that queue, still ``failed``, and a
        retry sends them home; ``dead_retention`` keeps the queue's failed
        tasks that many seconds (instead of ``retention``). See
        docs/operations.md."""
        self._store.set_queue_options(
            queue,
            serial=serial,
            answer_timeout_ms=None if answer_timeout is None
            else seconds_to_ms(answer_timeout, "answer_timeout", minimum=0.001),
            on_timeout=on_timeout,
            retention_ms=None if retention is None else seconds_to_ms(retention, "retention"),
            aging_ms=None if aging is None else seconds_to_ms(aging, "aging", minimum=0.001),
            dead_letter=dead_letter,
            dead_retention_ms=None if dead_retention is None
            else seconds_to_ms(dead_retention, "dead_retention"),
        )

    def pause(self, queue: str) -> None:
        """Pauses ``queue`` store-wide, for every process and until
        :meth:`resume` (it survives restarts): it still takes sends, but no
        worker claims from it and :meth:`start` raises
        :class:`QueuePausedError`; tasks already running finish."""
        self._store.set_paused(queue, True)

    def resume(self, queue: str) -> None:
        """Resumes a paused ``queue``: its waiting tasks are handed out
        again, in their usual order (waiting workers wake at once)."""
        self._store.set_paused(queue, False)

    def paused_queues(self) -> List[str]:
        """The names of the paused queues (``ferroq stats`` lists them)."""
        return [o.queue for o in self.all_queue_options() if o.paused]

    def queue_options(self, queue: str) -> QueueOptions:
        """``queue``'s options (defaults when none were set)."""
        return QueueOptions._from_row(self._store.queue_options(queue))

    def all_queue_options(self) -> List[QueueOptions]:
        """The options of every queue that has some."""
        return [QueueOptions._from_row(r) for r in self._store.all_queue_options()]

    # -- the event feed ------------------------------------------------------

    def events(
        self, after: Optional[str] = None, *, limit: int = 1000, queue: Optional[str] = None
    ) -> tuple[List[Event], str]:
        """One page of the event feed (every status change, from every
        process, in order) after the cursor ``after`` (None: the oldest
        kept), and the cursor to pass next. ``queue`` keeps that queue's."""
        return read_events(self._store, after, limit, queue)

    def follow(
        self,
        consumer: str,
        handler: Callable[[Event], None],
        *,
        queue: Optional[str] = None,
        start_at: Literal["oldest", "now"] = "oldest",
    ) -> EventFollower:
        """An :class:`EventFollower` calling ``handler(event)`` for every
        event, its place saved in the store under ``consumer`` (call
        ``start()`` or use it as a context manager)."""
        return EventFollower(self._store, consumer, handler, queue=queue, start_at=start_at)

    def schedules(self) -> List[ScheduleRecord]:
        """The periodic tasks this queue's schedulers send (``@task(schedule=
        ...)``, ``@periodic``, registered in this process), each with its
        next run and, read from the store, its last."""
        return schedules(self)

    def listen_data_all(self) -> dict[str, Any]:
        """Every listen key with its latest value."""
        return {key: self.decode(value) for _v, key, value, _at in self._store.listen_keys()}

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Stops this queue's callback thread and closes the store."""
        super().close()
        _default.forget(self)


@dataclass(frozen=True)
class WorkerRecord:
    """One scheduler registered in a store (:meth:`Queue.workers`)."""

    #: Its name (``host:pid:random``).
    id: str
    #: The host it runs on (with boot and PID namespace where known).
    host: str
    #: Its process id on that host.
    pid: int
    #: When it started (ms since the epoch, store time).
    started_ms: int
    #: Its last heartbeat (ms since the epoch, store time).
    heartbeat_ms: int
    #: The queues it serves.
    queues: list[str]


@dataclass(frozen=True)
class ShardCheck:
    """One shard's part of :meth:`Queue.check`."""

    #: The shard's file (or, on PostgreSQL, the schema).
    path: str
    #: True when nothing is wrong.
    ok: bool
    #: What is wrong, and how to recover.
    messages: list[str]


# Module-level tasks open a Queue, not a bare Connection, from $FERROQ_URL.
_default.set_class(Queue)


def set_default_queue(queue: Optional[Queue]) -> None:
    """Sets the queue that module-level ``@task`` functions send into."""
    _default.set_default(queue)


def default_queue() -> Queue:
    """The queue module-level ``@task`` functions send into: the one given to
    :func:`set_default_queue`, else one opened from ``$FERROQ_URL``."""
    # Only Queues are ever set, and Queue is the class opened from the URL.
    return cast(Queue, _default.get_default())
