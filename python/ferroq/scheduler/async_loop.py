"""The asyncio task loop: one thread running an event loop with up to
``concurrency`` tasks in flight. ``async def`` tasks run as coroutines
(hundreds at once on one thread); plain functions run on the loop's thread
pool. Timeouts and cancellation really cancel the coroutine.

Also :class:`SharedAsyncRunner`: the one event loop of a thread-mode
scheduler, to which its worker threads hand ``async def`` tasks."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Optional

from .execute import execute_async
from .retrying import LoopRetry
from .task_loop import WAIT_SLICE_S, ClaimingLoop

if TYPE_CHECKING:
    from .. import _core
    from ._state import WorkerState

__all__ = ["AsyncTaskLoop", "SharedAsyncRunner"]

log = logging.getLogger("ferroq.worker")


class AsyncTaskLoop(ClaimingLoop):
    """Runs tasks concurrently on an asyncio event loop in its own thread."""

    _loop: asyncio.AbstractEventLoop | None = None
    _running: set[asyncio.Task[None]]

    def run(self) -> None:
        """The loop's thread: runs the event loop until the scheduler stops."""
        self._running = set()
        asyncio.run(self._main())

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        s = self.state
        retry = LoopRetry(log, "claim failed", {"worker": s.worker_id})
        while not s.stopping.is_set():
            free = s.concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(
                    self._running, timeout=WAIT_SLICE_S, return_when=asyncio.FIRST_COMPLETED
                )
                self.flush()
                continue
            try:
                # The claim releases the GIL and may wait: keep it off the loop.
                tasks = await loop.run_in_executor(
                    None, self.claim, WAIT_SLICE_S if not self._running else 0.02, min(free, 1_000)
                )
            except Exception:
                if s.store.closed:
                    return
                # Waited in short steps: a stop is not held up by the back-off.
                resume_at = loop.time() + retry.failed()
                while not s.stopping.is_set() and loop.time() < resume_at:
                    await asyncio.sleep(min(0.1, resume_at - loop.time()))
                continue
            retry.ok()
            for t in tasks:
                at = loop.create_task(self._run_one(t))
                self._running.add(at)
                at.add_done_callback(self._running.discard)
            if not tasks and self._running:
                await asyncio.wait(
                    self._running, timeout=0.02, return_when=asyncio.FIRST_COMPLETED
                )
            self.flush()
        if self._running:
            await asyncio.wait(self._running)
        self.flush()

    async def _run_one(self, t: _core.Task) -> None:
        begun = self.begin(t)
        if begun is None:
            return
        item, fn = begun
        ctx = self.context(t, item)
        me = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if me is not None:

            def cancel_me() -> None:
                loop.call_soon_threadsafe(me.cancel)

            item.on_cancel = cancel_me
        outcome = await execute_async(fn, t.payload, ctx, fn.defaults.timeout)
        self.observe(time.monotonic() - (item.started or time.monotonic()))
        self.record(t, item, outcome)

    def abort(self) -> None:
        """Cancels every coroutine still running (the grace period ran out)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for at in list(getattr(self, "_running", ())):
            loop.call_soon_threadsafe(at.cancel)


class SharedAsyncRunner(AsyncTaskLoop):
    """The event loop of a thread-mode scheduler: its worker threads claim
    tasks and hand the ``async def`` ones here (:meth:`submit`), where up to
    ``concurrency`` of them run at once on this one thread, with the same
    timeouts (the coroutine cancelled), cancellation, progress, hooks and
    result flushing as in asyncio mode. It claims nothing itself.

    When the scheduler stops it takes no more tasks (a thread's unstarted
    ones go back to the queue) and runs until those it has are finished,
    within the grace period (:meth:`abort` cancels the rest)."""

    def __init__(self, state: WorkerState) -> None:
        super().__init__(state, [])
        self._running = set()
        self._slots = threading.Condition()
        self._in_flight = 0  # accepted by submit(), not finished; under _slots
        self._closed = False
        self._flush_soon = False
        # Made by run() on the runner's thread (a loop made here would be
        # left unclosed by a scheduler that fails to start).
        self._loop = None
        self._ready = threading.Event()

    def submit(self, t: _core.Task) -> bool:
        """Starts a claimed task on the loop once fewer than ``concurrency``
        run there (the calling thread waits for a slot). False, with the
        task not taken, when the scheduler is stopping."""
        s = self.state
        while not self._ready.wait(WAIT_SLICE_S):  # the loop's thread is starting
            if s.stopping.is_set():
                return False
        with self._slots:
            while self._in_flight >= s.concurrency and not self._closed:
                if s.stopping.is_set():
                    return False
                self._slots.wait(WAIT_SLICE_S)
            if self._closed or s.stopping.is_set():
                return False
            self._in_flight += 1
            loop = self._loop
        assert loop is not None
        # Accepted before the close: the loop runs until _in_flight is 0.
        loop.call_soon_threadsafe(self._start, t)
        return True

    def _start(self, t: _core.Task) -> None:
        assert self._loop is not None
        at = self._loop.create_task(self._run_one(t))
        self._running.add(at)
        at.add_done_callback(self._finished)

    def _finished(self, at: asyncio.Task[None]) -> None:
        self._running.discard(at)
        with self._slots:
            self._in_flight -= 1
            self._slots.notify()
        # Results of tasks ending in the same loop pass share one commit,
        # stored before the loop waits again (the 2 ms promise holds).
        if not self._flush_soon and self._loop is not None:
            self._flush_soon = True
            self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_soon = False
        try:
            self.flush()
        except Exception:
            if not self.state.store.closed:
                log.exception("storing results failed", extra={"worker": self.state.worker_id})

    def run(self) -> None:
        """The runner's thread: runs the loop until the scheduler stops and
        the tasks it took have finished."""
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_until_complete(self._serve())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def wait_for_stop() -> None:
            self.state.stopping.wait()
            loop.call_soon_threadsafe(stop.set)

        # Idle costs nothing: a daemon thread blocks on the stop flag (an
        # executor's thread would be joined at interpreter exit, hanging a
        # script that ends with its scheduler running).
        threading.Thread(target=wait_for_stop, name="ferroq-async-stop", daemon=True).start()
        await stop.wait()
        with self._slots:
            self._closed = True
            self._slots.notify_all()
        while True:
            with self._slots:
                left = self._in_flight
            if not left:
                break
            if self._running:
                await asyncio.wait(set(self._running), timeout=WAIT_SLICE_S)
            else:  # accepted, not started yet: its _start is queued on the loop
                await asyncio.sleep(0.001)
        self.flush()

    def abort(self) -> None:
        """Cancels every coroutine still running (the grace period ran out)."""
        loop: Optional[asyncio.AbstractEventLoop] = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._cancel_all)
        except RuntimeError:
            pass  # the loop closed meanwhile: nothing runs there any more

    def _cancel_all(self) -> None:
        for at in list(self._running):
            at.cancel()
