"""The asyncio task loop: one thread running an event loop with up to
``concurrency`` tasks in flight. ``async def`` tasks run as coroutines
(hundreds at once on one thread); plain functions run on the loop's thread
pool. Timeouts and cancellation really cancel the coroutine."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .execute import execute_async
from .task_loop import WAIT_SLICE_S, ClaimingLoop

if TYPE_CHECKING:
    from .. import _core

__all__ = ["AsyncTaskLoop"]

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
                log.exception("claim failed; retrying")
                await asyncio.sleep(0.5)
                continue
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
