"""Testing code that uses ferroq: eager mode, a manual clock, and helpers
that run a queue in the test's own thread. The pytest plugin
(:mod:`ferroq.testing.plugin`, loaded automatically once ferroq is
installed) turns them into fixtures: ``ferroq_queue``, ``ferroq_eager``,
``ferroq_scheduler`` and ``ferroq_clock``.

* :func:`eager` — sends run their task at once, in the sending thread,
  through the steps a worker takes (see :meth:`ferroq.Queue.run_eager`);
  ``Queue(url, eager=True)`` does the same for one queue.
* :class:`ManualClock` — ``Queue(url, clock=clock)`` makes the store read
  its time from it: delays, leases, retries' backoff, deadlines and
  retention move only when the test calls ``clock.advance(seconds)``.
* :func:`run_until_empty` — runs every ready task of a queue in the
  caller's thread until none is left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional

from .. import _connection
from .._core import ManualClock
from .._errors import InvalidArgumentError, TaskTimeoutError
from ..queue import Queue
from ..scheduler import StatusHook

__all__ = ["EagerMode", "ManualClock", "eager", "run_until_empty"]


class EagerMode:
    """An open :func:`eager` block: which queue it covers (None: all) and
    the status hooks called for the moves its eager runs make."""

    def __init__(self, queue: Optional[Queue], hooks: list[StatusHook]) -> None:
        #: The queue it covers, or None for every queue in the process.
        self.queue = queue
        #: ``hook(task_id, old_status, new_status)`` functions, called for
        #: every move an eager run makes (as :meth:`QueueScheduler.on_status_change`).
        self.hooks = hooks

    def on_status_change(self, hook: StatusHook) -> StatusHook:
        """Adds a status hook for this block's eager runs; usable as a decorator."""
        self.hooks.append(hook)
        return hook


@contextmanager
def eager(
    queue: Optional[Queue] = None, *, hooks: Sequence[StatusHook] = ()
) -> Iterator[EagerMode]:
    """Runs every task sent inside the block at once, in the sending thread
    (into ``queue`` only, or into any queue of the process when None),
    exactly as ``Queue(url, eager=True)`` does: stored, claimed, run with
    :func:`~ferroq.current_task` working, the result or error stored as a
    worker stores it, retries run at once. ``hooks`` (or
    ``mode.on_status_change``) see each move. Blocks nest; leaving one
    restores what was before::

        with ferroq.testing.eager():
            assert add.send(2, 3).result() == 5
    """
    mode = EagerMode(queue, list(hooks))
    if queue is None:
        _connection.eager_everywhere += 1
        _connection.eager_hooks.append(_Hooks(mode))
        try:
            yield mode
        finally:
            _connection.eager_everywhere -= 1
            _connection.eager_hooks[:] = [
                h for h in _connection.eager_hooks if not (isinstance(h, _Hooks) and h.mode is mode)
            ]
        return
    was, hooks_before = queue.eager, list(queue.eager_hooks)
    queue.eager = True
    queue.eager_hooks.append(_Hooks(mode))
    try:
        yield mode
    finally:
        queue.eager = was
        queue.eager_hooks[:] = hooks_before


class _Hooks:
    """One status hook standing for an :class:`EagerMode`'s hooks as they
    are when called (hooks added inside the block count)."""

    def __init__(self, mode: EagerMode) -> None:
        self.mode = mode

    def __call__(self, task_id: int, old: str, new: str) -> None:
        for hook in list(self.mode.hooks):
            hook(task_id, old, new)


def run_until_empty(
    queue: Queue, timeout: float = 10.0, *, queues: Optional[Sequence[str]] = None
) -> int:
    """Runs the ready tasks of ``queue`` in the calling thread, as a worker
    would (what eager mode does for one send), until none is ready; returns
    how many attempts ran. Tasks they send, and retries, run too (retries
    at once, or on a manual clock once their backoff has passed on it);
    tasks scheduled for later stay queued — advance the clock and call
    again. ``queues`` limits it to those queue names (default: every queue
    of the store). Raises :class:`~ferroq.TaskTimeoutError` when tasks are
    still ready after ``timeout`` seconds (a task that keeps sending
    itself)."""
    if timeout <= 0:
        raise InvalidArgumentError(f"timeout must be > 0 seconds, got {timeout}")
    runner = queue.eager_runner()
    deadline = time.monotonic() + timeout
    ran = 0
    while True:
        names = list(queues) if queues is not None else sorted(queue.stats())
        n, empty = runner.run_ready(names, deadline)
        ran += n
        if not empty:
            raise TaskTimeoutError(
                f"queue still had ready tasks after {timeout}s ({ran} attempt(s) ran)"
            )
        if n == 0:
            return ran
        # Tasks that ran may have sent into queues not looked at yet: once more.
