"""The event feed: every status change of every task, from every process,
in order, kept in the store for a while (``events_retention_s``, one day by
default). Read pages with :meth:`Queue.events`, or follow it with an
:class:`EventFollower`, which remembers its place in the store under a
consumer name so that a restarted follower carries on where it stopped and
sees every event exactly once."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Optional

from ._errors import InvalidArgumentError

if TYPE_CHECKING:
    from . import _core

__all__ = ["Event", "EventFollower", "read_events"]

log = logging.getLogger("ferroq.events")

# The longest a follower waits for a change before it looks again.
_WAIT_S = 0.5


@dataclass(frozen=True)
class Event:
    """One status change of a task."""

    #: The feed position just after this event (opaque; pass it as ``after``).
    cursor: str
    #: When it happened, ms since the epoch (the store's clock).
    at_ms: int
    #: The task.
    task_id: int
    queue: str
    name: str
    #: What happened: sent, claimed, completed, failed, retrying, released,
    #: recovered, cancelled, cancel_requested, expired, requeued, purged,
    #: delivered (a callback ran).
    kind: str
    #: The status before (None for a send) and after (None for a purge).
    old: Optional[str]
    new: Optional[str]
    #: The worker that acted, where one did.
    worker: Optional[str]
    #: For failures, the exception type (e.g. ``builtins.ValueError``).
    error_type: Optional[str]

    @property
    def at(self) -> datetime:
        """When it happened, as an aware UTC datetime."""
        return datetime.fromtimestamp(self.at_ms / 1000, tz=timezone.utc)


def read_events(
    store: _core.Store, after: Optional[str], limit: int, queue: Optional[str]
) -> tuple[list[Event], str]:
    """One page of the feed after ``after`` and the cursor after it."""
    rows, cursor = store.events(after, limit, queue)
    return [Event(*row) for row in rows], cursor


class EventFollower:
    """Follows the feed on a thread of its own, calling ``handler(event)``
    for each event in order. Its place is saved in the store under
    ``consumer`` after each page, so a follower restarted under the same
    name (in any process) resumes after the last event it handled (with
    ``consumer=None`` the place is kept in memory only).
    ``start_at="now"`` makes a new consumer skip the events kept so far
    (the default, ``"oldest"``, starts from the oldest kept). A handler that
    raises is logged; the event counts as handled."""

    def __init__(
        self,
        store: _core.Store,
        consumer: Optional[str],
        handler: Callable[[Event], None],
        *,
        queue: Optional[str] = None,
        start_at: str = "oldest",
        batch: int = 500,
    ) -> None:
        if consumer is not None and not consumer:
            raise InvalidArgumentError("a consumer name must not be empty (None: not saved)")
        if start_at not in ("oldest", "now"):
            raise InvalidArgumentError(f"start_at must be 'oldest' or 'now', got {start_at!r}")
        self.store = store
        self.consumer = consumer
        self.handler = handler
        self.queue = queue
        self.batch = batch
        saved = None if consumer is None else store.event_cursor_get(consumer)
        if saved is None and start_at == "now":
            saved = store.events_head()
            if consumer is not None:
                store.event_cursor_set(consumer, saved)
        #: The position after the last handled event.
        self.cursor: Optional[str] = saved
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def tick(self) -> int:
        """Handles every event after the cursor (in pages); returns how many."""
        handled = 0
        while True:
            events, cursor = read_events(self.store, self.cursor, self.batch, self.queue)
            for event in events:
                try:
                    self.handler(event)
                except Exception:
                    log.exception("event handler of %s raised on %s", self.consumer, event)
                handled += 1
            if cursor != self.cursor:
                self.cursor = cursor
                if self.consumer is not None:
                    self.store.event_cursor_set(self.consumer, cursor)
            if len(events) < self.batch:
                return handled

    def run(self) -> None:
        """Ticks until stopped, waking when the store changes."""
        while not self._stopped.is_set():
            try:
                token = self.store.change_token()
            except Exception:
                # Closed under us (close() wakes every waiter): the follow ends.
                if self.store.closed:
                    return
                raise
            try:
                self.tick()
            except Exception:
                if self.store.closed:
                    return
                log.exception("event follower %s; retrying", self.consumer)
            if self._stopped.is_set():
                return
            try:
                self.store.wait_for_change(token, _WAIT_S)
            except Exception:
                if self.store.closed:
                    return
                self._stopped.wait(_WAIT_S)

    def start(self) -> EventFollower:
        """Starts following on a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self.run, name=f"ferroq-events-{self.consumer or 'feed'}", daemon=True
        )
        self._thread.start()
        return self

    def signal_stop(self) -> None:
        """Tells the follower to stop at its next look (a wake-up of the
        store's waiters makes that at once)."""
        self._stopped.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops following (after the page in hand)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> EventFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
