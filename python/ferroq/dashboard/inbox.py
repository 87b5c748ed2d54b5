"""The human inbox: tasks finished by people, handed out one per person
with the store's claim and lease verbs (never by page state), so that
several people answering at once never get the same task.

Each browser session is a worker of its own (``inbox:<session>``). A
session holds at most one task per queue: it gets one with
:meth:`Queue.claim` (on a serial queue, only when nobody holds one), may
switch to another waiting task (:meth:`Queue.start`, after giving its own
back), give it back (:meth:`Queue.release`), or answer it
(:meth:`Queue.complete` as its holder); an answer from a session whose
hand-out lapsed (its answer deadline passed, and the task went back or to
someone else) is refused with :class:`LeaseLostError`, so no task is ever
answered twice. The answer is stored as the task's result:
``{"choice": <option or None>, "text": <free text or None>, "by": <name>}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .._errors import InvalidArgumentError, InvalidTransitionError, LeaseLostError
from .views import prompt_of

if TYPE_CHECKING:
    from ..queue import Queue
    from ..records import TaskRecord

__all__ = ["MAX_ANSWER", "Hand", "Inbox", "answer_of"]

#: The longest free-text answer accepted, in characters.
MAX_ANSWER = 10_000
# How many running tasks of a queue are looked through for a session's own.
_SCAN = 1000


def answer_of(choice: Optional[str], text: Optional[str], by: str) -> dict[str, Any]:
    """The result stored for an answer (see the module's docstring)."""
    text = (text or "").strip() or None
    choice = (choice or "").strip() or None
    if choice is None and text is None:
        raise InvalidArgumentError("an answer needs an option or some text")
    if text is not None and len(text) > MAX_ANSWER:
        raise InvalidArgumentError(f"an answer is at most {MAX_ANSWER:,} characters")
    return {"choice": choice, "text": text, "by": by}


@dataclass
class Hand:
    """What one session holds in one queue."""

    #: The task it holds, or None.
    task: Optional[TaskRecord]
    #: Seconds left to answer it (None: no deadline).
    remaining: Optional[float]
    #: Why it holds none, when it does not (for the page).
    reason: Optional[str] = None


class Inbox:
    """Hands out the tasks of ``queue`` to people, each under the worker
    name of their session. ``lease`` is the hand-out's length when the
    queue has no answer timeout of its own."""

    def __init__(self, queue: Queue, *, lease: float = 300.0) -> None:
        self.queue = queue
        self.lease = lease

    @staticmethod
    def worker(session: str) -> str:
        """The worker name a session acts under."""
        return f"inbox:{session}"

    def _mine(self, name: str, worker: str, hint: Optional[int]) -> Optional[TaskRecord]:
        """The running task of queue ``name`` held by ``worker``: ``hint``
        (the id the session last held) when it still is, else looked up
        among the queue's running tasks."""
        if hint is not None:
            t = self.queue.get(hint)
            if t is not None and t.queue == name and t.status == "running" and t.worker == worker:
                return t
        for t in self.queue.list(queue=name, status="running", limit=_SCAN):
            if t.worker == worker:
                return t
        return None

    def _remaining(self, t: TaskRecord) -> Optional[float]:
        until = t.raw.lease_until
        if until is None:
            return None
        return max(0.0, (until - self.queue._store.now_ms()) / 1000)

    def _recover_lapsed(self, name: str) -> bool:
        """Puts back tasks of ``name`` whose hand-out lapsed (no scheduler
        may be serving a queue of records to do it); whether any was."""
        now = self.queue._store.now_ms()
        lapsed = [
            t for t in self.queue.list(queue=name, status="running", limit=_SCAN)
            if t.raw.lease_until is not None and t.raw.lease_until <= now
        ]
        if lapsed:
            self.queue._store.recover()
        return bool(lapsed)

    def hand(
        self, name: str, session: str, *, hint: Optional[int] = None, take: bool = True
    ) -> Hand:
        """The task the session holds in queue ``name``; when it holds
        none and ``take``, the next one is handed to it (if any is free)."""
        worker = self.worker(session)
        mine = self._mine(name, worker, hint)
        if mine is not None:
            return Hand(mine, self._remaining(mine))
        if not take:
            return Hand(None, None, "You hold no task of this queue.")
        got = self.queue.claim(name, worker=worker, lease=self.lease)
        if got is None and self._recover_lapsed(name):
            got = self.queue.claim(name, worker=worker, lease=self.lease)
        if got is None:
            serial = self.queue.queue_options(name).serial
            busy = serial and bool(self.queue.list(queue=name, status="running", limit=1))
            reason = (
                "Someone else is answering this queue's task (it hands out one at a time)."
                if busy
                else "Nothing is waiting for an answer."
            )
            return Hand(None, None, reason)
        record = self.queue.get(got.id)
        if record is None:  # purged at once: nothing to show
            return Hand(None, None, "Nothing is waiting for an answer.")
        return Hand(record, self._remaining(record))

    def answer(
        self, task_id: int, session: str, *, choice: Optional[str], text: Optional[str], by: str
    ) -> None:
        """Finishes the session's task ``task_id`` with its answer; raises
        :class:`LeaseLostError` when the session no longer holds it."""
        record = self.queue.get(task_id)
        if choice and record is not None:
            options = prompt_of(record).options
            if options and choice not in options:
                raise InvalidArgumentError(f"{choice!r} is not one of this prompt's options")
        self.queue.complete(task_id, answer_of(choice, text, by), worker=self.worker(session))

    def give_back(self, task_id: int, session: str) -> None:
        """Gives the session's task back to its queue (its attempt not
        counted); raises :class:`LeaseLostError` when it is not held."""
        self.queue.release(task_id, worker=self.worker(session))

    def switch(self, name: str, task_id: int, session: str) -> TaskRecord:
        """Gives back what the session holds in ``name`` and takes the
        waiting task ``task_id`` instead. A task someone else holds cannot
        be taken (:class:`InvalidTransitionError`); on a serial queue
        neither can another task while someone else holds the queue's."""
        worker = self.worker(session)
        target = self.queue.get(task_id)
        if target is None or target.queue != name:
            raise InvalidTransitionError(f"task {task_id} is not in queue {name!r}")
        if target.status != "queued":
            raise InvalidTransitionError(f"task {task_id} is {target.status}, not waiting")
        if self.queue.queue_options(name).serial:
            held = self.queue.list(queue=name, status="running", limit=1)
            if held and held[0].worker != worker:
                raise InvalidTransitionError(
                    "someone else is answering this queue's task (it hands out one at a time)"
                )
        mine = self._mine(name, worker, None)
        if mine is not None and mine.id != task_id:
            try:
                self.queue.release(mine.id, worker=worker)
            except LeaseLostError:
                pass  # it lapsed meanwhile: nothing to give back
        self.queue.start(task_id, worker=worker, lease=self.lease)
        record = self.queue.get(task_id)
        assert record is not None
        return record
