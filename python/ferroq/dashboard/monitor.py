"""What the dashboard knows between requests: the store's counts, workers
and queue options, read by a background thread (never on a page request),
and what the event feed says — throughput and run time per second, the
latest events, each recent task's history — read by an
:class:`~ferroq.EventFollower` of its own.

Counting a store's tasks reads every row (about 0.8 s for 1,000,000
finished tasks on one SQLite shard), so the counts are a snapshot taken
in the background when the store changes, at most once per few times what
the last count took; pages and the SSE stream show that snapshot and its
age. Charts come from the feed, so a store opened with ``?events=off``
shows counts but no throughput.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from ..events import Event, EventFollower

if TYPE_CHECKING:
    from ..queue import Queue, QueueOptions, WorkerRecord

__all__ = ["SERIES_SECONDS", "Monitor", "Second", "Snapshot"]

log = logging.getLogger("ferroq.dashboard")

#: How many seconds of throughput and run time the charts keep.
SERIES_SECONDS = 300
# The shortest pause between two counts, and how many times the last
# count's duration the next one waits at least (so a slow count on a huge
# store never takes more than a fifth of a core).
_MIN_REFRESH_S = 0.5
_REFRESH_FACTOR = 4.0
# The longest single wait for a change (then it looks at its flags again).
_IDLE_REFRESH_S = 5.0
# A count this quick is redone on a page request when the store changed.
_INLINE_REFRESH_S = 0.25
# Bounds of what is kept in memory.
_RECENT_EVENTS = 200
_TASK_HISTORIES = 5000
_OPEN_CLAIMS = 100_000


@dataclass
class Second:
    """What the feed said about one second (store time)."""

    #: The second, in s since the epoch.
    at: int
    #: Tasks finished (done) and failed (for good, or to be retried).
    done: int = 0
    failed: int = 0
    #: Run times (claim to finish) of the tasks finished in it, in ms.
    run_ms_sum: float = 0.0
    run_ms_max: float = 0.0
    runs: int = 0

    def as_json(self) -> dict[str, Any]:
        """The second as the page's charts read it."""
        return {
            "t": self.at,
            "done": self.done,
            "failed": self.failed,
            "avg_ms": round(self.run_ms_sum / self.runs, 2) if self.runs else None,
            "max_ms": round(self.run_ms_max, 2) if self.runs else None,
        }


@dataclass
class Snapshot:
    """The counts, workers and options last read, and when."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    workers: list[WorkerRecord] = field(default_factory=list)
    options: dict[str, QueueOptions] = field(default_factory=dict)
    #: When it was read (time.time()), and what reading it took.
    read_at: float = 0.0
    took_s: float = 0.0
    #: The error of the last attempt, if it failed.
    error: Optional[str] = None
    #: The store's change token when it was read.
    token: int = -1


class Monitor:
    """Keeps :class:`Snapshot` and the feed's aggregates fresh on two
    daemon threads, started by :meth:`start` (idempotent) and ended by
    :meth:`stop`."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._have_snapshot = threading.Event()
        self._seconds: deque[Second] = deque(maxlen=SERIES_SECONDS)
        self._recent: deque[Event] = deque(maxlen=_RECENT_EVENTS)
        self._histories: OrderedDict[int, list[Event]] = OrderedDict()
        self._claimed_at: OrderedDict[int, int] = OrderedDict()
        #: Bumped on every change the stream should push.
        self.version = 0
        self._stopped = threading.Event()
        self._poke = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._follower: Optional[EventFollower] = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Monitor:
        """Starts the two threads (once); returns self."""
        with self._start_lock:
            if self._started:
                return self
            self._started = True
            self._follower = EventFollower(
                self.queue._store, None, self._on_event, start_at="now"
            )
            for target, name in ((self._refresh_loop, "counts"), (self._follower.run, "feed")):
                t = threading.Thread(target=target, name=f"ferroq-dashboard-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops both threads."""
        self._stopped.set()
        self._poke.set()
        if self._follower is not None:
            self._follower.signal_stop()
        try:
            self.queue._store.wake()
        except Exception:  # a closed store has nobody to wake
            pass
        for t in self._threads:
            t.join(timeout)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped.is_set()

    # -- the snapshot ------------------------------------------------------------

    def refresh(self) -> Snapshot:
        """Reads counts, workers and options now (the refresher's step)."""
        t0 = time.perf_counter()
        token = self.queue._store.change_token()
        try:
            snap = Snapshot(
                counts=self.queue.stats(),
                workers=self.queue.workers(),
                options={o.queue: o for o in self.queue.all_queue_options()},
                read_at=time.time(),
            )
        except Exception as e:  # a store that went away is shown, not raised
            if self.queue.closed:
                raise
            snap = Snapshot(read_at=time.time(), error=f"{type(e).__name__}: {e}")
            with self._lock:
                snap.counts, snap.workers = self._snapshot.counts, self._snapshot.workers
                snap.options = self._snapshot.options
        snap.took_s = time.perf_counter() - t0
        snap.token = token
        with self._lock:
            self._snapshot = snap
            self.version += 1
        self._have_snapshot.set()
        return snap

    def snapshot(self, wait: float = 30.0) -> Snapshot:
        """The latest snapshot (waiting up to ``wait`` s for the first).
        When counting is cheap (the last count took under
        ``_INLINE_REFRESH_S``) and the store changed since, it is read
        again here, so small stores show what was just done."""
        self.start()
        self._have_snapshot.wait(wait)
        with self._lock:
            snap = self._snapshot
        if snap.took_s < _INLINE_REFRESH_S and snap.error is None:
            try:
                changed = self.queue._store.change_token() != snap.token
            except Exception:  # closed: show what we have
                changed = False
            if changed:
                return self.refresh()
        return snap

    def refresh_soon(self) -> None:
        """Asks the refresher to count again now (after an action)."""
        self._poke.set()
        try:
            self.queue._store.wake()  # ends its wait for a change, if in one
        except Exception:  # a closed store: nothing to count
            pass

    def _refresh_loop(self) -> None:
        store = self.queue._store
        while not self._stopped.is_set():
            try:
                snap = self.refresh()
            except Exception:
                if self.queue.closed or self._stopped.is_set():
                    return
                log.exception("dashboard: reading counts failed; retrying")
                self._stopped.wait(_IDLE_REFRESH_S)
                continue
            pause = max(_MIN_REFRESH_S, _REFRESH_FACTOR * snap.took_s)
            if self._poke.wait(pause):
                self._poke.clear()
                continue
            # Count again only once something was committed since the last count began.
            while not self._stopped.is_set() and not self._poke.is_set():
                try:
                    if store.wait_for_change(snap.token, _IDLE_REFRESH_S):
                        break
                except Exception:
                    if self.queue.closed:
                        return
                    self._stopped.wait(_MIN_REFRESH_S)
                    break
            self._poke.clear()

    # -- the feed ------------------------------------------------------------------

    def _on_event(self, e: Event) -> None:
        with self._lock:
            self._recent.append(e)
            history = self._histories.get(e.task_id)
            if history is None:
                history = self._histories[e.task_id] = []
                if len(self._histories) > _TASK_HISTORIES:
                    self._histories.popitem(last=False)
            history.append(e)
            if e.kind == "claimed":
                self._claimed_at[e.task_id] = e.at_ms
                if len(self._claimed_at) > _OPEN_CLAIMS:
                    self._claimed_at.popitem(last=False)
            elif e.kind in ("completed", "failed", "retrying"):
                sec = self._second(e.at_ms // 1000)
                if e.kind == "completed":
                    sec.done += 1
                else:
                    sec.failed += 1
                started = self._claimed_at.pop(e.task_id, None)
                if started is not None:
                    run_ms = float(max(0, e.at_ms - started))
                    sec.run_ms_sum += run_ms
                    sec.runs += 1
                    sec.run_ms_max = max(sec.run_ms_max, run_ms)
            self.version += 1

    def _second(self, at: int) -> Second:
        """The bucket of second ``at`` (made, with any gap filled, if new)."""
        if self._seconds and self._seconds[-1].at >= at:
            for sec in reversed(self._seconds):
                if sec.at == at:
                    return sec
                if sec.at < at:
                    break
            return self._seconds[-1]  # older than kept: counted in the latest
        last = self._seconds[-1].at if self._seconds else at - 1
        for missing in range(max(last + 1, at - SERIES_SECONDS + 1), at):
            self._seconds.append(Second(missing))
        sec = Second(at)
        self._seconds.append(sec)
        return sec

    def series(self, seconds: int = 120) -> list[dict[str, Any]]:
        """The last ``seconds`` seconds of throughput and run time, up to
        now (seconds with nothing in them included)."""
        now = int(self.queue._store.now_ms() // 1000)
        with self._lock:
            kept = {s.at: s for s in self._seconds}
        return [kept.get(t, Second(t)).as_json() for t in range(now - seconds + 1, now + 1)]

    def recent(self, limit: int = 50) -> list[Event]:
        """The latest events, newest first."""
        with self._lock:
            return list(reversed(self._recent))[:limit]

    def history(self, task_id: int) -> list[Event]:
        """The events of ``task_id`` seen since the dashboard started."""
        with self._lock:
            return list(self._histories.get(task_id, ()))
