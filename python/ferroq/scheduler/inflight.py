"""What the scheduler knows about each task it has claimed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from .. import _core
    from ..context import TaskContext

__all__ = ["InFlight"]


class InFlight:
    """A claimed task: not started yet, or running in a worker thread."""

    __slots__ = ("abandoned", "cancel_requested", "ctx", "deadline", "on_cancel", "started", "task")

    def __init__(self, task: _core.Task) -> None:
        self.task = task
        self.ctx: Optional[TaskContext] = None
        self.started: Optional[float] = None
        # Monotonic time by which the attempt must finish (soft timeout).
        self.deadline: Optional[float] = None
        self.cancel_requested = False
        # How to stop it at once when it is asked to cancel (process and
        # asyncio modes); thread mode relies on the task checking.
        self.on_cancel: Optional[Callable[[], None]] = None
        # Set when the outcome no longer belongs to this worker (timed out,
        # lease lost, released at stop): the worker must not store it.
        self.abandoned = False
