"""The shared watch behind ``await handle``: one thread per store resolves
the futures of every coroutine awaiting a task of it, reading the awaited
ids in batches after each change of the store (``get_many`` and
``wait_for_change``), so no event loop blocks and no handle is polled on
its own."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, NamedTuple, Optional

if TYPE_CHECKING:
    from . import _core

__all__ = ["READ_CHUNK", "SLICE_S", "AsyncWatch", "finished_record"]

#: Most ids read in one ``get_many`` call.
READ_CHUNK = 10_000
#: Longest sleep on the change notification before reading again: a change
#: the store cannot signal is still seen within it.
SLICE_S = 0.5
# Statuses a task leaves on its own; anything else is finished (a task no
# longer found, deleted or purged, counts as finished too).
_UNFINISHED = frozenset({"waiting", "queued", "running"})


def finished_record(t: Optional[_core.Task]) -> bool:
    """True when a record read back means its task is finished (or gone)."""
    return t is None or t.status not in _UNFINISHED


class _Waiter(NamedTuple):
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Optional[_core.Task]]


class AsyncWatch:
    """One thread per store that resolves the futures of every ``await
    handle`` in this process: one batched read per change of the store,
    whatever the number of waiting coroutines, and no event loop blocked."""

    _lock = threading.Lock()
    _by_store: dict[int, AsyncWatch] = {}

    def __init__(self, store: _core.Store) -> None:
        self.store = store
        self.waiters: dict[int, list[_Waiter]] = {}
        self.thread: Optional[threading.Thread] = None
        self.sleeping = False  # in wait_for_change, not woken yet; under _lock

    @classmethod
    def add(cls, store: _core.Store, task_id: int) -> asyncio.Future[Optional[_core.Task]]:
        """A future of the running loop, set to the task's record once it
        has finished (None: no longer in the store, or the store closed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Optional[_core.Task]] = loop.create_future()
        with cls._lock:
            watch = cls._by_store.get(id(store))
            if watch is None or watch.store is not store:
                watch = cls._by_store[id(store)] = AsyncWatch(store)
            watch.waiters.setdefault(task_id, []).append(_Waiter(loop, future))
            if watch.thread is None:
                watch.thread = threading.Thread(
                    target=watch.run, name="ferroq-await", daemon=True
                )
                watch.thread.start()
            # A watch asleep on a change must read the new id now: one wake
            # per sleep (a wake stirs every waiter of the store here).
            wake = watch.sleeping
            watch.sleeping = False
        if wake:
            store.wake()
        return future

    def run(self) -> None:
        """Reads the awaited tasks after every change until none is awaited."""
        store = self.store
        while True:
            with self._lock:
                for task_id in [i for i, ws in self.waiters.items() if all(
                    w.future.done() for w in ws  # cancelled by their awaiters
                )]:
                    del self.waiters[task_id]
                ids = list(self.waiters)
                if not ids or store.closed:
                    self.thread = None
                    if self._by_store.get(id(store)) is self:
                        del self._by_store[id(store)]  # keeps no closed store alive
                    for ws in self.waiters.values():
                        for w in ws:
                            _settle(w, None)
                    self.waiters.clear()
                    return
            try:
                token = store.change_token()
                records: list[Optional[_core.Task]] = []
                for start in range(0, len(ids), READ_CHUNK):
                    records += store.get_many(ids[start : start + READ_CHUNK])
            except Exception:
                if store.closed:
                    continue  # settled above on the next pass
                time.sleep(0.05)
                continue
            with self._lock:
                for task_id, t in zip(ids, records):
                    if finished_record(t):
                        for w in self.waiters.pop(task_id, []):
                            _settle(w, t)
                self.sleeping = bool(self.waiters)
            if self.sleeping:
                try:
                    store.wait_for_change(token, SLICE_S)
                except Exception:
                    time.sleep(0.05)
                with self._lock:
                    self.sleeping = False


def _settle(w: _Waiter, t: Optional[_core.Task]) -> None:
    def put() -> None:
        if not w.future.done():
            w.future.set_result(t)

    try:
        w.loop.call_soon_threadsafe(put)
    except RuntimeError:
        pass  # that event loop is closed: nobody awaits any more
