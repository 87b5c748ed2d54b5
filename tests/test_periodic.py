"""Periodic tasks: each tick stored once however many schedulers send it
(threads on one store, processes on one SQLite store or PostgreSQL), the
catch-up policies after downtime, marks that survive restarts and purges,
time zones across daylight-saving changes, and bad schedules refused when
the task is declared.

Most tests drive :class:`PeriodicLoop` ticks on a manual clock (no
sleeping); one runs real schedulers in separate processes on a 1-second
schedule."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import ferroq
from conftest import needs_pg, python_env, store_url, wait_for
from ferroq import InvalidArgumentError, Queue, QueueScheduler, periodic, task
from ferroq._core import ManualClock
from ferroq.periodic import remove_schedule, schedule_of, tick_key
from ferroq.registry import registered
from ferroq.scheduler.periodic_loop import PeriodicLoop

MINUTE_MS = 60_000
# A minute boundary well in the past (2025-01-06T00:00Z), so ticks of
# minute schedules fall on whole steps of the manual clock.
T0 = int(datetime(2025, 1, 6, tzinfo=timezone.utc).timestamp() * 1000)


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def keys(q: Queue, queue: str = "periodic") -> list[str]:
    """The keys of every task in ``queue``, in id order."""
    out: list[str] = []
    after: Optional[int] = None
    while True:
        page = q.list(queue=queue, after_id=after, limit=1000)
        if not page:
            return out
        out += [t.key for t in page if t.key is not None]
        after = page[-1].id


def ticks_sent(q: Queue, name: str, queue: str = "periodic") -> list[int]:
    """The ticks (ms) of the runs of ``name`` stored in ``queue``, sorted;
    a tick stored twice appears twice."""
    prefix = tick_key(name, 0).split("@")[0] + "@"
    found = [k[len(prefix) :] for k in keys(q, queue) if k.startswith(prefix)]
    return sorted(utc_ms(k.rstrip("Z")) for k in found)


def bind(
    q: Queue, *, name: str = "job", queue: str = "periodic", **schedule: Any
) -> ferroq.TaskFunction[[], None]:
    """A periodic task bound to ``q`` (so only schedulers of ``q`` send it),
    sending nothing to other tests' schedulers."""

    def job() -> None:
        return None

    return periodic(**schedule)(q.task(name=name, queue=queue)(job))


def loop_for(q: Queue) -> PeriodicLoop:
    """The periodic loop a scheduler of ``q`` runs (not started: ticks are
    driven by the test)."""
    return PeriodicLoop(QueueScheduler(q, queues=["periodic"]).state)


# -- exactly once, however many schedulers -------------------------------------


@pytest.mark.parametrize(
    ("kind", "schedulers"),
    [("sqlite-1", 2), ("sqlite-4", 2), pytest.param("postgres", 3, marks=needs_pg)],
)
def test_each_tick_is_stored_once_by_concurrent_schedulers(
    kind: str, schedulers: int, tmp_path: Path
) -> None:
    url = store_url(kind, tmp_path)
    clock = ManualClock(T0)
    # One connection per scheduler, as separate processes would have.
    queues = [Queue(url, clock=clock) for _ in range(schedulers)]
    try:
        loops = []
        for q in queues:
            bind(q, every=timedelta(minutes=1), catch_up="all")
            loops.append(loop_for(q))
        steps = 25
        sent = Counter[int]()
        errors: list[BaseException] = []

        def look(loop: PeriodicLoop, i: int, barrier: threading.Barrier) -> None:
            try:
                barrier.wait()
                sent[i] += loop.tick(clock.now_ms)
            except BaseException as e:
                errors.append(e)

        for _ in range(steps):
            # Every scheduler looks at the same instant from its own thread.
            barrier = threading.Barrier(schedulers)
            threads = [
                threading.Thread(target=look, args=(loop, i, barrier))
                for i, loop in enumerate(loops)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert not errors, errors
            clock.advance(60)
        ticks = ticks_sent(queues[0], "job")
        assert ticks == [T0 + i * MINUTE_MS for i in range(steps)]
        # Every scheduler took part (a scheduler that reads the mark after
        # another moved it has nothing left to send for that tick).
        assert all(sent[i] > 0 for i in range(schedulers)), sent
        assert sum(sent.values()) >= steps
        # A scheduler that read a mark before another moved it sends ticks
        # already stored: their keys make those sends no-ops.
        stale = T0 + (steps - 4) * MINUTE_MS
        queues[0]._store.listen_cursor_set("ferroq:periodic:handled:job", stale)
        assert loops[0].tick(clock.now_ms) == 4  # three stored already, one new
        assert ticks_sent(queues[-1], "job") == [T0 + i * MINUTE_MS for i in range(steps + 1)]
    finally:
        for q in queues:
            q.close()


WORKER = textwrap.dedent(
    """
    import logging
    import sys
    from datetime import timedelta

    from ferroq import Queue, QueueScheduler, periodic, task

    @periodic(every=timedelta(seconds=1), catch_up="all")
    @task(name="beats.beat", queue="beats")
    def beat() -> None:
        return None

    logging.basicConfig(stream=sys.stdout, format="%(name)s %(message)s")
    logging.getLogger("ferroq.periodic").setLevel(logging.INFO)
    QueueScheduler(Queue(sys.argv[1]), queues=["beats"], concurrency=1).run_forever()
    """
)


@pytest.mark.parametrize(
    ("kind", "processes"),
    [("sqlite-4", 2), pytest.param("postgres", 3, marks=needs_pg)],
)
def test_schedulers_in_separate_processes_store_each_tick_once(
    kind: str, processes: int, tmp_path: Path
) -> None:
    url = store_url(kind, tmp_path)
    (tmp_path / "beats_worker.py").write_text(WORKER)
    q = Queue(url)  # creates the store before the workers open it
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "beats_worker.py"), url],
            env=python_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(processes)
    ]
    try:
        wanted = 22
        wait_for(
            lambda: len(ticks_sent(q, "beats.beat", "beats")) >= wanted,
            timeout=120,
            what=f"{wanted} ticks stored",
        )
    finally:
        outputs = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            out, _ = p.communicate(timeout=60)
            outputs.append(out.decode())
    ticks = ticks_sent(q, "beats.beat", "beats")
    q.close()
    assert len(ticks) >= wanted
    # One run per tick, and no tick missing between the first and the last.
    assert len(set(ticks)) == len(ticks)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, 1000))
    # Each process sent runs itself (its sends of ticks another process
    # stored first were no-ops of the store).
    for out in outputs:
        assert "periodic task 'beats.beat': sent" in out, out[-2000:]


# -- catch-up after downtime -----------------------------------------------------

BACKENDS_ON_DISK = ["sqlite-1", "sqlite-4", pytest.param("postgres", marks=needs_pg)]


@pytest.fixture(params=BACKENDS_ON_DISK)
def disk_or_pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, tmp_path)


@pytest.mark.parametrize(
    ("policy", "max_catch_up", "late_runs", "on_time_runs"),
    [
        # Back late (past the grace of the last tick missed): what the
        # missed ticks get.
        ("skip", 100, 0, 1),
        ("once", 100, 1, 1),
        ("all", 100, 5, 5),
        ("all", 3, 3, 4),
    ],
)
@pytest.mark.parametrize("back", ["late", "on_time"])
def test_downtime_catch_up_follows_the_policy(
    disk_or_pg_url: str,
    policy: str,
    max_catch_up: int,
    late_runs: int,
    on_time_runs: int,
    back: str,
) -> None:
    clock = ManualClock(T0)
    q = Queue(disk_or_pg_url, clock=clock)
    bind(q, every=timedelta(minutes=1), catch_up=policy, max_catch_up=max_catch_up)
    assert loop_for(q).tick(clock.now_ms) == 1  # T0, on time
    q.close()  # down: no scheduler sees T0+1 .. T0+5
    # Back 40 s after T0+5 (the default grace of a 1-minute schedule is
    # 30 s: late), or 1 s after it (on time: T0+5 is sent as any tick is,
    # T0+1 .. T0+4 are the missed ones).
    clock.advance(5 * 60 + (40 if back == "late" else 1))
    q = Queue(disk_or_pg_url, clock=clock)
    bind(q, every=timedelta(minutes=1), catch_up=policy, max_catch_up=max_catch_up)
    loop = loop_for(q)
    expected = late_runs if back == "late" else on_time_runs
    try:
        assert loop.tick(clock.now_ms) == expected
        ticks = ticks_sent(q, "job")
        assert ticks[0] == T0 and len(ticks) == 1 + expected
        assert all(T0 < t <= T0 + 5 * MINUTE_MS for t in ticks[1:])
        if expected:
            assert ticks[-1] == T0 + 5 * MINUTE_MS  # the latest missed ones first
        # Looking again at once sends nothing more; the next tick sends one.
        assert loop.tick(clock.now_ms) == 0
        clock.advance((T0 + 6 * MINUTE_MS - clock.now_ms) / 1000)
        assert loop.tick(clock.now_ms) == 1
        assert ticks_sent(q, "job")[-1] == T0 + 6 * MINUTE_MS
        assert len(ticks_sent(q, "job")) == 2 + expected
    finally:
        q.close()


def test_a_new_schedule_sends_only_an_on_time_tick(url: str) -> None:
    clock = ManualClock(T0 + 45_000)  # 45 s past a tick: late for it
    q = Queue(url, clock=clock)
    try:
        bind(q, every=timedelta(minutes=1), catch_up="all")
        loop = loop_for(q)
        assert loop.tick(clock.now_ms) == 0  # nothing missed: it never ran here
        clock.advance(15)
        assert loop.tick(clock.now_ms) == 1
        assert ticks_sent(q, "job") == [T0 + MINUTE_MS]
    finally:
        q.close()


def test_the_mark_survives_purge_and_shows_in_schedules(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    url = store_url("sqlite-1", tmp_path)
    q = Queue(url, clock=clock)
    job = bind(q, every=timedelta(minutes=1), catch_up="all")
    loop = loop_for(q)
    for _ in range(3):
        loop.tick(clock.now_ms)
        clock.advance(60)
    # Finish and purge every run: nothing of them is left in the tasks.
    while (t := q.claim("periodic")) is not None:
        t.complete()
    assert q.purge(older_than=0) == 3
    assert keys(q) == []
    (record,) = q.schedules()
    assert record.name == job.name and record.queue == "periodic"
    assert record.every == timedelta(minutes=1) and record.cron is None
    assert record.catch_up == "all"
    assert record.last_run == datetime.fromtimestamp((T0 + 2 * MINUTE_MS) / 1000, timezone.utc)
    assert record.next_run == datetime.fromtimestamp((T0 + 3 * MINUTE_MS) / 1000, timezone.utc)
    q.close()
    # A restarted scheduler resumes from the mark: no run again for the
    # purged ticks, the next one on time.
    q = Queue(url, clock=clock)
    bind(q, every=timedelta(minutes=1), catch_up="all")
    loop = loop_for(q)
    assert loop.tick(clock.now_ms) == 1
    assert ticks_sent(q, "job") == [T0 + 3 * MINUTE_MS]
    # The marks are not listen data.
    assert q.listen_data_all() == {}
    q.close()


def test_a_running_scheduler_sends_ticks_and_runs_them(url: str) -> None:
    clock = ManualClock(T0 + 1)
    q = Queue(url, clock=clock)
    ran: list[int] = []

    @periodic(every=timedelta(minutes=1), catch_up="all")
    @q.task(queue="periodic")
    def beat() -> None:
        ran.append(1)

    try:
        with QueueScheduler(q, queues=["periodic"], concurrency=1):
            # T0, 1 ms ago, is on time: sent at start.
            wait_for(lambda: len(ran) >= 1, 10, "the run of T0")
            for i in range(1, 4):
                clock.advance(60)
                wait_for(lambda n=i: len(ran) >= n + 1, 10, f"run {i}")  # type: ignore[misc]
        assert ticks_sent(q, beat.name) == [T0 + i * MINUTE_MS for i in range(4)]
        assert len(ran) == 4
        (record,) = q.schedules()
        assert record.last_run is not None
    finally:
        q.close()


def test_periodic_false_sends_nothing(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    q = Queue(store_url("sqlite-1", tmp_path), clock=clock)
    bind(q, every=timedelta(minutes=1))
    sched = QueueScheduler(q, queues=["periodic"], periodic=False)
    with sched:
        assert sched.periodic is None
        clock.advance(60)
        time.sleep(0.3)  # what a periodic loop would need to send (none runs)
    assert keys(q) == []
    with QueueScheduler(q, queues=["periodic"]) as on:
        assert on.periodic is not None
        wait_for(lambda: len(keys(q)) == 1, 10, "the tick sent")
    q.close()


# -- time zones ------------------------------------------------------------------


def drive(schedule: dict[str, Any], start: str, end: str, step_min: int = 10) -> list[str]:
    """Runs a periodic loop from ``start`` to ``end`` (UTC) every
    ``step_min`` minutes; returns the ticks sent, ISO UTC."""
    clock = ManualClock(utc_ms(start))
    q = Queue("memory://", clock=clock)
    try:
        bind(q, catch_up="all", **schedule)
        loop = loop_for(q)
        while clock.now_ms <= utc_ms(end):
            loop.tick(clock.now_ms)
            clock.advance(step_min * 60)
        return [
            datetime.fromtimestamp(t / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M")
            for t in ticks_sent(q, "job")
        ]
    finally:
        q.close()


def test_a_fixed_time_in_the_spring_forward_gap_runs_once_when_the_gap_ends() -> None:
    # Paris, 2025-03-30: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    sent = drive(
        {"cron": "30 2 * * *", "tz": "Europe/Paris"}, "2025-03-29T00:00", "2025-04-01T00:00"
    )
    assert sent == [
        "2025-03-29T01:30",  # 02:30 CET
        "2025-03-30T01:00",  # 03:00 CEST: the first minute after the gap
        "2025-03-31T00:30",  # 02:30 CEST
    ]


def test_a_fixed_time_in_the_fall_back_repeat_runs_once_at_its_first_occurrence() -> None:
    # Paris, 2025-10-26: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    sent = drive(
        {"cron": "30 2 * * *", "tz": "Europe/Paris"}, "2025-10-25T00:00", "2025-10-28T00:00"
    )
    assert sent == [
        "2025-10-25T00:30",  # 02:30 CEST
        "2025-10-26T00:30",  # 02:30 CEST, the first of the two; not 02:30 CET
        "2025-10-27T01:30",  # 02:30 CET
    ]


@pytest.mark.parametrize(
    ("start", "end"),
    [("2025-03-29T23:30", "2025-03-30T03:30"), ("2025-10-25T23:30", "2025-10-26T03:30")],
)
def test_an_hourly_schedule_runs_every_real_hour_across_a_change(start: str, end: str) -> None:
    sent = drive({"cron": "0 * * * *", "tz": "Europe/Paris"}, start, end)
    # One run per real hour: none lost in the gap, none doubled in the repeat.
    day = start[:8] + str(int(start[8:10]) + 1)
    assert sent == [f"{day}T0{h}:00" for h in range(4)]


def test_cron_in_utc_by_default_and_seconds_fields() -> None:
    sent = drive({"cron": "0 9 * * *"}, "2025-06-01T00:00", "2025-06-03T00:00", step_min=30)
    assert sent == ["2025-06-01T09:00", "2025-06-02T09:00"]
    six = drive({"cron": "*/20 * * * * *"}, "2025-06-01T00:00", "2025-06-01T00:01", step_min=1)
    # Stepping a minute at a time, "all" catches up the 20-second ticks.
    assert len(six) == 4 and six[-1] == "2025-06-01T00:01"


# -- bad schedules ---------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        {"cron": "61 * * * *"},
        {"cron": "* * *"},
        {"cron": "0 0 31 2 *"},
        {"cron": ""},
        {"cron": "0 9 * * *", "tz": "Mars/Olympus_Mons"},
        {"cron": "0 9 * * *", "tz": ""},
        {"every": timedelta(0)},
        {"every": timedelta(seconds=-5)},
        {"every": 0.5},
        {"every": float("nan")},
        {"every": timedelta(minutes=1), "tz": "Europe/Paris"},
        {"cron": "* * * * *", "every": 60},
        {},
        {"every": 60, "catch_up": "sometimes"},
        {"every": 60, "catch_up": "all", "max_catch_up": 0},
        {"every": 60, "grace": -1},
        # Intervals whose ticks are past any date (year 9999): refused here,
        # not a ValueError later from Queue.schedules() or the CLI.
        {"every": timedelta(days=999_999_999)},
        {"every": 10**12},
        {"every": timedelta(days=36_501)},
    ],
)
def test_bad_schedules_are_refused_when_declared(schedule: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        periodic(**schedule)


def test_the_longest_interval_shows_its_next_run(tmp_path: Path) -> None:
    q = Queue(store_url("sqlite-1", tmp_path), clock=ManualClock(T0))
    try:
        bind(q, every=timedelta(days=36_500))
        (record,) = q.schedules()
        assert record.every == timedelta(days=36_500)
        # The first multiple of the interval since the epoch.
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        assert record.next_run == epoch + timedelta(days=36_500)
    finally:
        q.close()


@pytest.mark.parametrize("bad", ["61 * * * *", "every day", timedelta(seconds=0)])
def test_task_schedule_is_checked_before_the_task_is_registered(bad: Any) -> None:
    before = set(registered())
    with pytest.raises(InvalidArgumentError):

        @task(name="periodic-test.bad", schedule=bad)
        def bad_task() -> None: ...

    assert set(registered()) == before


def test_a_periodic_task_must_take_no_arguments() -> None:
    q = Queue("memory://")
    with pytest.raises(InvalidArgumentError, match="no arguments"):

        @periodic(every=60)
        @q.task
        def needs(x: int) -> None: ...

    q.close()


def test_task_schedule_takes_cron_or_an_interval() -> None:
    made: list[Callable[..., Any]] = []
    try:

        @task(name="periodic-test.cron", schedule="*/5 * * * *")
        def by_cron() -> None: ...

        @task(name="periodic-test.every", schedule=timedelta(hours=1))
        def by_interval() -> None: ...

        made += [by_cron, by_interval]
        cron_schedule = schedule_of(by_cron)
        every_schedule = schedule_of(by_interval)
        assert cron_schedule is not None and cron_schedule.cron == "*/5 * * * *"
        assert every_schedule is not None and every_schedule.every == timedelta(hours=1)
    finally:
        # Module-level periodic tasks are sent by every scheduler in the
        # process: take them away from the other tests' schedulers.
        for fn in made:
            remove_schedule(fn)  # type: ignore[arg-type]


def test_listen_consumer_names_of_the_marks_are_reserved() -> None:
    q = Queue("memory://")
    with pytest.raises(InvalidArgumentError, match="reserved"):
        QueueScheduler(q, listen_consumer="ferroq:periodic:handled:x")
    q.close()


def test_queue_task_takes_a_schedule(tmp_path: Path) -> None:
    with Queue(str(tmp_path / "store")) as q:

        @q.task(name="periodic-test.bound", queue="periodic", schedule=timedelta(minutes=5))
        def bound() -> None: ...

        bound_schedule = schedule_of(bound)
        assert bound_schedule is not None and bound_schedule.every == timedelta(minutes=5)
        assert [s.name for s in q.schedules()] == ["periodic-test.bound"]
        with pytest.raises(ferroq.InvalidArgumentError):
            q.task(name="periodic-test.bad", schedule="not a cron")(bound.fn)
        assert q.list() == []
