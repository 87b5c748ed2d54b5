"""Names every layer of the package shares: the task statuses, and the
protocols that let a lower module take an object defined above it (a
:class:`~ferroq.task.TaskFunction`, a :class:`~ferroq.handle.TaskHandle`)
without importing it."""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = ["FINISHED", "STATUSES", "HasId", "SentTask"]

R_co = TypeVar("R_co", covariant=True)

#: Every task status, in the order a task moves through them (``waiting``:
#: a flow step whose parents have not all finished).
STATUSES = ("waiting", "queued", "running", "done", "failed", "cancelled", "expired")
#: The final statuses: a task in one of them never moves again by itself.
FINISHED = ("done", "failed", "cancelled", "expired")


class HasId(Protocol):
    """Anything that names one task by its id (a handle, a record)."""

    @property
    def id(self) -> int:
        """The task id."""
        ...


class SentTask(Protocol[R_co]):
    """What a handle needs of the task function it was sent as: its name,
    and how it turns a stored result back into its return type."""

    @property
    def name(self) -> str:
        """The name the task is registered and stored under."""
        ...

    def result_from(self, raw: bytes, *, allow_pickle: bool) -> R_co:
        """The return value a stored result stands for."""
        ...
