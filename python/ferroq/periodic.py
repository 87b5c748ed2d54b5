"""Periodic tasks: schedules (a cron expression or a fixed interval), the
ticks they fall on, what a scheduler sends after downtime (the catch-up
policy), and the marks the store keeps for each schedule.

Exactly once, however many schedulers run: each tick is sent with the key
:func:`tick_key` (one per schedule and tick), so a second scheduler's send
of the same tick is a no-op of the store (an idempotent enqueue), on every
backend and across hosts.

The marks: per schedule, the last tick handled (sent, or dropped by the
catch-up policy) and the last tick sent. They are kept in the store's
consumer-cursor table, the one :meth:`QueueScheduler` listen consumers save
their place in, under names starting with :data:`MARK_PREFIX` (reserved:
a listen consumer may not be named so). Nothing there is ever purged, so a
schedule resumes from its mark after any downtime and after finished tasks
are purged; users' listen data never shows them.

The ``@task(schedule=...)`` and ``@periodic(...)`` decorators
(:mod:`ferroq.task`) build a :class:`Schedule` with :func:`make_schedule`
and register it here; the scheduler's periodic loop
(:mod:`ferroq.scheduler.periodic_loop`) sends the ticks.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from ._checks import seconds
from ._errors import InvalidArgumentError
from .task_function import TaskFunction

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "CATCH_UP",
    "MARK_PREFIX",
    "CatchUp",
    "Planned",
    "Schedule",
    "ScheduleRecord",
    "add_schedule",
    "make_schedule",
    "plan",
    "read_mark",
    "remove_schedule",
    "schedule_of",
    "scheduled",
    "schedules",
    "tick_iso",
    "tick_key",
    "write_mark",
]

CatchUp = Literal["skip", "once", "all"]
#: The catch-up policies.
CATCH_UP: tuple[CatchUp, ...] = ("skip", "once", "all")
#: Names of the store's consumer cursors that hold schedule marks start so.
MARK_PREFIX = "ferroq:"
# Longest consumer name the store takes (bytes).
_MAX_CONSUMER = 200
# Longest task key the store takes (bytes).
_MAX_KEY = 1000
# The default grace: a minute, or half the gap to the next tick if shorter.
_GRACE_CAP_MS = 60_000
# Most missed runs ``catch_up="all"`` may be allowed to send at once.
_MAX_CATCH_UP_LIMIT = 100_000
# The longest interval: 100 years of days (its ticks stay well within datetime).
_MAX_EVERY_S = 36_500 * 86_400
# The nicknames of common cron expressions.
_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _require_cronsim() -> Any:
    """Imports cronsim (the ``cron`` extra), or says how to install it."""
    try:
        import cronsim
    except ImportError as e:
        raise ImportError(
            "cron schedules need cronsim: pip install 'ferroq[cron]' (every= works without it)"
        ) from e
    return cronsim


def _zone(tz: Optional[str]) -> tzinfo:
    """The time zone named ``tz`` (IANA name; None or "UTC": UTC)."""
    if tz is None or tz == "UTC":
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(tz, str) or not tz:
        raise InvalidArgumentError(f"tz must be an IANA time zone name, got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidArgumentError(
            f"unknown time zone {tz!r} (an IANA name such as 'Europe/Paris'; "
            "'pip install tzdata' where the system has no time zone database)"
        ) from e


@dataclass(frozen=True)
class Schedule:
    """When a periodic task runs: a cron expression in a time zone, or a
    fixed interval; and what happens to ticks missed while no scheduler ran.
    Built by :func:`make_schedule`, which checks every field."""

    #: A cron expression (5 fields, or 6 with seconds first), or None.
    cron: Optional[str] = None
    #: A fixed interval, or None. Ticks fall on whole multiples of it since
    #: the Unix epoch (UTC), so every host computes the same ones.
    every: Optional[timedelta] = None
    #: The IANA time zone the cron expression is read in (None: UTC).
    tz: Optional[str] = None
    #: What a scheduler sends for ticks missed while none ran.
    catch_up: CatchUp = "once"
    #: With ``catch_up="all"``: the most missed runs sent (the latest ones).
    max_catch_up: int = 100
    #: Seconds after a tick within which it still counts as on time (None:
    #: a minute, or half the gap to the next tick when that is shorter).
    grace: Optional[float] = None

    def describe(self) -> str:
        """The schedule in a few words (``cron '0 9 * * *' Europe/Paris``)."""
        if self.cron is not None:
            return f"cron {self.cron!r} {self.tz or 'UTC'}"
        assert self.every is not None
        return f"every {self.every}"

    # -- ticks (store ms since the epoch) -------------------------------------

    def _cron_after(self, after_ms: int, until_ms: int, limit: Optional[int]) -> list[int]:
        """Cron ticks in ``(after_ms, until_ms]``, ascending, at most
        ``limit`` (the first ones)."""
        cronsim = _require_cronsim()
        zone = _zone(self.tz)
        start = datetime.fromtimestamp(after_ms / 1000, zone)
        out: list[int] = []
        try:
            for dt in cronsim.CronSim(self.cron, start):
                ms = round(dt.timestamp() * 1000)
                if ms > until_ms:
                    break
                # A fixed-time tick that the fall-back repeat puts before
                # ``after`` (its first occurrence) is already past.
                if ms > after_ms:
                    out.append(ms)
                    if limit is not None and len(out) >= limit:
                        break
        except StopIteration:  # no tick for 50 years: none
            pass
        return out

    def next_after(self, ms: int) -> Optional[int]:
        """The first tick after ``ms`` (None if the cron expression never
        matches again)."""
        if self.every is not None:
            step = _every_ms(self.every)
            return (ms // step + 1) * step
        # A tick within a year and a day; beyond that (Feb 29 schedules
        # and the like), a longer look.
        for span in (366 * 86_400_000, 50 * 366 * 86_400_000):
            found = self._cron_after(ms, ms + span, 1)
            if found:
                return found[0]
        return None

    def due(self, after_ms: int, until_ms: int, limit: int) -> list[int]:
        """The latest ``limit`` ticks in ``(after_ms, until_ms]``, ascending.

        The cost follows ``limit``, not the length of the span: a cron
        schedule is read forward from a window before ``until_ms`` that
        grows until it holds enough ticks or reaches ``after_ms``."""
        if until_ms <= after_ms or limit <= 0:
            return []
        if self.every is not None:
            step = _every_ms(self.every)
            last = until_ms // step
            first = max(after_ms // step + 1, last - limit + 1)
            return [k * step for k in range(first, last + 1)]
        span = 60_000 * (limit + 1)
        while True:
            start = max(after_ms, until_ms - span)
            found = self._cron_after(start, until_ms, None)
            if len(found) >= limit or start == after_ms:
                return found[-limit:]
            span *= 4

    def grace_ms(self, tick_ms: int) -> int:
        """How long after ``tick_ms`` it still counts as on time (ms)."""
        if self.grace is not None:
            return round(self.grace * 1000)
        nxt = self.next_after(tick_ms)
        gap = _GRACE_CAP_MS * 2 if nxt is None else nxt - tick_ms
        return min(_GRACE_CAP_MS, gap // 2)


def _every_ms(every: timedelta) -> int:
    return round(every.total_seconds() * 1000)


def make_schedule(
    *,
    cron: Optional[str] = None,
    every: Union[timedelta, float, None] = None,
    tz: Optional[str] = None,
    catch_up: str = "once",
    max_catch_up: int = 100,
    grace: Union[timedelta, float, None] = None,
) -> Schedule:
    """A checked :class:`Schedule`; :class:`InvalidArgumentError` for a bad
    cron expression, time zone, interval or policy. ``every`` is a
    timedelta or seconds (whole seconds, at least one); ``tz`` is for cron
    expressions only (an interval counts real time)."""
    if (cron is None) == (every is None):
        raise InvalidArgumentError("give a schedule: cron= or every=, not both")
    if catch_up not in CATCH_UP:
        raise InvalidArgumentError(f"catch_up must be one of {CATCH_UP}, got {catch_up!r}")
    if (
        isinstance(max_catch_up, bool)
        or not isinstance(max_catch_up, int)
        or not 1 <= max_catch_up <= _MAX_CATCH_UP_LIMIT
    ):
        raise InvalidArgumentError(
            f"max_catch_up must be an int within 1..{_MAX_CATCH_UP_LIMIT}, got {max_catch_up!r}"
        )
    grace_s: Optional[float] = None
    if grace is not None:
        if isinstance(grace, timedelta):
            grace = grace.total_seconds()
        grace_s = seconds(grace, "grace")
    policy: CatchUp = "skip" if catch_up == "skip" else "all" if catch_up == "all" else "once"
    if every is not None:
        if tz is not None:
            raise InvalidArgumentError(
                "tz is for cron schedules: every= counts real time (ticks at whole multiples "
                "of the interval since the epoch); use cron= for times of day in a time zone"
            )
        if isinstance(every, timedelta):
            every_s = every.total_seconds()
        else:
            every_s = seconds(every, "every", strict=True)
        if every_s < 1 or every_s != int(every_s):
            raise InvalidArgumentError(
                f"every must be a whole number of seconds, at least 1, got {every!r}"
            )
        if every_s > _MAX_EVERY_S:
            # Ticks further apart would fall past any date a datetime holds.
            raise InvalidArgumentError(
                f"every must be at most {_MAX_EVERY_S} seconds (100 years), got {every!r}"
            )
        return Schedule(
            every=timedelta(seconds=every_s),
            catch_up=policy,
            max_catch_up=max_catch_up,
            grace=grace_s,
        )
    if not isinstance(cron, str) or not cron.strip():
        raise InvalidArgumentError(f"cron must be a cron expression, got {cron!r}")
    cron = _NICKNAMES.get(cron.strip().lower(), cron)
    cronsim = _require_cronsim()
    zone = _zone(tz)
    try:
        cronsim.CronSim(cron, datetime.now(zone))
    except cronsim.CronSimError as e:
        raise InvalidArgumentError(f"bad cron expression {cron!r}: {e}") from None
    schedule = Schedule(
        cron=" ".join(cron.split()),
        tz=None if zone is timezone.utc else tz,
        catch_up=policy,
        max_catch_up=max_catch_up,
        grace=grace_s,
    )
    now_ms = round(datetime.now(timezone.utc).timestamp() * 1000)
    if schedule.next_after(now_ms) is None:
        raise InvalidArgumentError(f"cron expression {cron!r} never matches")
    return schedule


# -- the catch-up policy -------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """What one look at a schedule decided: the ticks to send (``late``:
    sent for ticks missed, not on time) and the new mark."""

    #: (tick ms, late) per run to send, ascending.
    runs: list[tuple[int, bool]]
    #: The last tick handled after these sends (None: nothing to record).
    mark: Optional[int]


def plan(schedule: Schedule, mark: Optional[int], now_ms: int) -> Planned:
    """Decides what to send at ``now_ms`` for a schedule whose last handled
    tick is ``mark`` (None: it never ran in this store).

    The ticks due are those after ``mark`` up to now; the latest of them is
    on time when now is within its grace, and every other due tick was
    missed. An on-time tick is always sent. Missed ticks follow the
    schedule's policy: ``skip`` sends none of them, ``once`` sends one run
    for all of them (keyed by the latest due tick, and none at all when an
    on-time tick is sent, which stands for them), ``all`` sends each one,
    the latest ``max_catch_up`` of them. A schedule new to the store sends
    only an on-time tick: it has missed nothing."""
    if mark is None:
        ticks = schedule.due(0, now_ms, 1)
        if not ticks:
            return Planned([], now_ms)
        last = ticks[-1]
        on_time = now_ms - last <= schedule.grace_ms(last)
        return Planned([(last, False)] if on_time else [], last if on_time else now_ms)
    limit = schedule.max_catch_up + 1 if schedule.catch_up == "all" else 1
    ticks = schedule.due(mark, now_ms, limit)
    if not ticks:
        return Planned([], None)
    last = ticks[-1]
    on_time = now_ms - last <= schedule.grace_ms(last)
    if on_time:
        missed = ticks[:-1]
    else:
        missed = ticks
    runs: list[tuple[int, bool]] = []
    if schedule.catch_up == "all":
        runs = [(t, True) for t in missed[-schedule.max_catch_up :]]
    elif schedule.catch_up == "once" and not on_time:
        runs = [(last, True)]
    if on_time:
        runs.append((last, False))
    return Planned(runs, last)


# -- keys and marks ------------------------------------------------------------


def tick_iso(ms: int) -> str:
    """A tick as ISO 8601 UTC text with milliseconds (``...T09:00:00.000Z``)."""
    return (
        datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    )


def _short(text: str, room: int) -> str:
    """``text``, or a digest of it when it is longer than ``room`` bytes."""
    if len(text.encode()) <= room:
        return text
    return "#" + hashlib.sha256(text.encode()).hexdigest()[:40]


def tick_key(name: str, tick_ms: int) -> str:
    """The key a schedule's run for one tick is sent with:
    ``ferroq:periodic:<task name>@<tick, ISO 8601 UTC>``. One per schedule
    and tick, so a tick sent twice (by two schedulers) is stored once."""
    when = tick_iso(tick_ms)
    return f"ferroq:periodic:{_short(name, _MAX_KEY - 64)}@{when}"


def _consumer(kind: str, name: str) -> str:
    prefix = f"{MARK_PREFIX}periodic:{kind}:"
    return prefix + _short(name, _MAX_CONSUMER - len(prefix))


def read_mark(conn: Connection, name: str, kind: str = "handled") -> Optional[int]:
    """A schedule's mark in the store: the last tick ``"handled"`` (sent or
    dropped by the policy) or the last one ``"sent"``; None if none."""
    return conn._store.listen_cursor_get(_consumer(kind, name))


def write_mark(conn: Connection, name: str, tick_ms: int, kind: str = "handled") -> None:
    """Moves a schedule's mark forward to ``tick_ms`` (never back: two
    schedulers may write it in either order)."""
    consumer = _consumer(kind, name)
    store = conn._store
    current = store.listen_cursor_get(consumer)
    if current is None or current < tick_ms:
        store.listen_cursor_set(consumer, max(0, tick_ms))


# -- the schedules of this process -----------------------------------------------

_lock = threading.Lock()
# (task, schedule) in order of registration; one per task name and bound queue.
_schedules: list[tuple[TaskFunction[Any, Any], Schedule]] = []


def add_schedule(fn: TaskFunction[Any, Any], schedule: Schedule) -> None:
    """Registers ``fn`` to be sent on ``schedule`` by schedulers serving its
    queue, replacing an earlier schedule of a task of the same name bound
    to the same queue (or to none). :class:`InvalidArgumentError` if ``fn``
    needs arguments: a periodic run is sent with none."""
    try:
        inspect.signature(fn.fn).bind()
    except TypeError:
        raise InvalidArgumentError(
            f"periodic task {fn.name!r} must be callable with no arguments: each run is sent "
            "with none (give its parameters defaults)"
        ) from None
    except ValueError:  # no signature to read (a builtin): let it be
        pass
    with _lock:
        _schedules[:] = [
            (f, s)
            for f, s in _schedules
            if not (f.name == fn.name and f.bound_queue is fn.bound_queue)
        ]
        _schedules.append((fn, schedule))


def remove_schedule(fn: TaskFunction[Any, Any]) -> bool:
    """Stops sending ``fn`` on its schedule (in this process; its marks stay
    in the store). Returns whether it had one."""
    with _lock:
        kept = [(f, s) for f, s in _schedules if f is not fn]
        found = len(kept) != len(_schedules)
        _schedules[:] = kept
    return found


def schedule_of(fn: TaskFunction[Any, Any]) -> Optional[Schedule]:
    """The schedule ``fn`` is registered with, or None."""
    with _lock:
        return next((s for f, s in _schedules if f is fn), None)


def scheduled(conn: Optional[Connection] = None) -> list[tuple[TaskFunction[Any, Any], Schedule]]:
    """The periodic tasks of this process: with ``conn``, those a scheduler
    of ``conn`` sends (tasks bound to it, and those bound to no queue)."""
    with _lock:
        found = list(_schedules)
    return [
        (fn, s)
        for fn, s in found
        if conn is None or fn.bound_queue is None or fn.bound_queue is conn
    ]


@dataclass(frozen=True)
class ScheduleRecord:
    """A periodic task as :meth:`Queue.schedules` shows it: its schedule,
    and when it runs next and last ran in that store. Times are
    timezone-aware, in the schedule's time zone (UTC for intervals)."""

    #: The task's name.
    name: str
    #: The queue its runs are sent to.
    queue: str
    #: The cron expression, or None.
    cron: Optional[str]
    #: The interval, or None.
    every: Optional[timedelta]
    #: The cron expression's time zone (None: UTC).
    tz: Optional[str]
    #: The catch-up policy: ``skip``, ``once`` or ``all``.
    catch_up: CatchUp
    #: With ``all``: the most missed runs sent at once.
    max_catch_up: int
    #: The next tick from now on, a tick due this very moment included (None:
    #: the cron expression never matches again).
    next_run: Optional[datetime]
    #: The tick of the last run sent in this store (None: never).
    last_run: Optional[datetime]
    #: The last tick handled: sent, or dropped by the catch-up policy.
    handled_until: Optional[datetime]


def schedules(conn: Connection) -> list[ScheduleRecord]:
    """The periodic tasks a scheduler of ``conn`` sends, with their next and
    last runs read from the store (see :meth:`Queue.schedules`)."""
    now = conn._store.now_ms()
    out = []
    for fn, s in scheduled(conn):
        zone = _zone(s.tz)

        def when(ms: Optional[int], zone: tzinfo = zone) -> Optional[datetime]:
            return None if ms is None else datetime.fromtimestamp(ms / 1000, zone)

        handled = read_mark(conn, fn.name)
        out.append(
            ScheduleRecord(
                name=fn.name,
                queue=fn.defaults.queue,
                cron=s.cron,
                every=s.every,
                tz=s.tz,
                catch_up=s.catch_up,
                max_catch_up=s.max_catch_up,
                next_run=when(s.next_after(max(now - 1, handled or 0))),
                last_run=when(read_mark(conn, fn.name, "sent")),
                handled_until=when(handled),
            )
        )
    return out
