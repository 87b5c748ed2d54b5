"""Waiting for many sent tasks at once: :func:`wait` and :func:`as_completed`.

Each reads the store in batches (``get_many``, one call per
:data:`READ_CHUNK` ids still pending) and sleeps on the store's change
notification between reads, so waiting for 20,000 handles costs a few
store calls per commit, not one poll per handle."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Literal, Optional, TypeVar

from ._checks import seconds
from ._errors import InvalidArgumentError, TaskTimeoutError
from ._watch import READ_CHUNK, SLICE_S, finished_record
from .handle import TaskHandle

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "WaitResult",
    "as_completed",
    "wait",
]

R = TypeVar("R")

ALL_COMPLETED: Literal["ALL_COMPLETED"] = "ALL_COMPLETED"
"""``return_when`` for :func:`wait`: return once every task has finished."""
FIRST_COMPLETED: Literal["FIRST_COMPLETED"] = "FIRST_COMPLETED"
"""``return_when`` for :func:`wait`: return once any task has finished."""
FIRST_EXCEPTION: Literal["FIRST_EXCEPTION"] = "FIRST_EXCEPTION"
"""``return_when`` for :func:`wait`: return once any task has finished
other than ``done`` (failed, cancelled, expired), or once all have."""
ReturnWhen = Literal["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"]
_RETURN_WHEN = (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION)
# How many pending tasks a wait for all of them reads after each change.
_WINDOW = 1_000
# A read of the pending tasks is not repeated sooner than this many times
# its own duration (at most about a fifth of the waiting thread's time).
_READ_SHARE = 4.0
# ...and never held back longer than this (a read slowed by a busy process
# must not delay the answer by seconds).
_MAX_PAUSE_S = 0.05



class WaitResult(Generic[R]):
    """What :func:`wait` returns: ``done`` and ``pending``, the handles
    finished and those not, each a list in the order given. Unpacks like
    the pair it is: ``done, pending = ferroq.wait(handles)``."""

    __slots__ = ("done", "pending")

    def __init__(self, done: list[TaskHandle[R]], pending: list[TaskHandle[R]]) -> None:
        self.done = done
        self.pending = pending

    def __iter__(self) -> Iterator[list[TaskHandle[R]]]:
        return iter((self.done, self.pending))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (WaitResult, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((tuple(self.done), tuple(self.pending)))

    def __repr__(self) -> str:
        return f"WaitResult(done={len(self.done)}, pending={len(self.pending)})"


def _deadline(timeout: Optional[float]) -> float:
    if timeout is None:
        return math.inf
    return time.monotonic() + seconds(timeout, "timeout", inf_ok=True)


def _checked(handles: Iterable[TaskHandle[R]]) -> list[TaskHandle[R]]:
    if isinstance(handles, TaskHandle):
        raise InvalidArgumentError("give a list of handles, not one handle (use .result())")
    if isinstance(handles, (str, bytes)) or not isinstance(handles, Iterable):
        raise InvalidArgumentError(f"give a list of handles, got {handles!r}")
    out = list(handles)
    for h in out:
        if not isinstance(h, TaskHandle):
            raise InvalidArgumentError(f"expected TaskHandle objects, got {h!r}")
    return out


def _read(pending: list[TaskHandle[R]]) -> tuple[list[TaskHandle[R]], list[TaskHandle[R]]]:
    """One batched read of ``pending``: (finished, still pending)."""
    finished: list[TaskHandle[R]] = []
    left: list[TaskHandle[R]] = []
    by_store: dict[int, list[TaskHandle[R]]] = {}
    for h in pending:
        by_store.setdefault(id(h.queue._store), []).append(h)
    for group in by_store.values():
        store = group[0].queue._store
        for start in range(0, len(group), READ_CHUNK):
            part = group[start : start + READ_CHUNK]
            for h, t in zip(part, store.get_many([h.id for h in part])):
                if finished_record(t):
                    if t is not None and t.status == "done":
                        h._remember(t)
                    finished.append(h)
                else:
                    left.append(h)
    return finished, left


def _sleep(
    pending: list[TaskHandle[Any]], tokens: dict[int, int], deadline: float, read_s: float
) -> None:
    """Sleeps until the store of the first pending handle changes after
    ``tokens`` were taken (or a slice passes, or the deadline). A read that
    took ``read_s`` is not repeated sooner than a few times that: under a
    fast drain every commit signals a change, and re-reading thousands of
    pending tasks after each one would cost more than the drain."""
    store = pending[0].queue._store
    slice_s = SLICE_S if len(tokens) == 1 else 0.05  # several stores: look round often
    pause = min(deadline - time.monotonic(), _READ_SHARE * read_s, _MAX_PAUSE_S)
    if pause > 0.001:
        time.sleep(pause)
    left = min(deadline - time.monotonic(), slice_s)
    if left > 0:
        store.wait_for_change(tokens[id(store)], left)


def _tokens(handles: list[TaskHandle[Any]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in handles:
        store = h.queue._store
        if id(store) not in out:
            out[id(store)] = store.change_token()
    return out


def wait(
    handles: Iterable[TaskHandle[R]],
    timeout: Optional[float] = None,
    return_when: ReturnWhen = ALL_COMPLETED,
) -> WaitResult[R]:
    """Waits for sent tasks to finish, like :func:`concurrent.futures.wait`.

    Returns ``(done, pending)`` (a :class:`WaitResult`), each a list in
    the order given, once ``return_when`` holds — :data:`ALL_COMPLETED`
    (the default), :data:`FIRST_COMPLETED` or :data:`FIRST_EXCEPTION` —
    or when ``timeout`` seconds have passed (``None``: no limit; ``0``:
    look once). Finished means done, failed, cancelled or expired; a task
    deleted meanwhile counts as finished. Nothing is raised for failed
    tasks: ``handle.result()`` on a done handle returns its value (read
    in the same batch, no further store call) or raises its error.
    """
    if return_when not in _RETURN_WHEN:
        raise InvalidArgumentError(
            f"return_when must be one of {_RETURN_WHEN}, got {return_when!r}"
        )
    given = _checked(handles)
    deadline = _deadline(timeout)
    pending = given
    finished: set[int] = set()
    # Waiting for all, only a window of the pending tasks is read after each
    # change: while one of them is unfinished the rest need not be looked at.
    window = _WINDOW if return_when == ALL_COMPLETED else len(given)
    while True:
        tokens = _tokens(pending)
        t0 = time.monotonic()
        newly, left = _read(pending[:window])
        read_s = time.monotonic() - t0
        pending = left + pending[window:]
        finished.update(id(h) for h in newly)
        if (
            not pending
            or (return_when == FIRST_COMPLETED and finished)
            or (
                return_when == FIRST_EXCEPTION
                and any(h._final is None for h in newly)  # not done: failed, cancelled...
            )
        ):
            break
        if time.monotonic() >= deadline:
            if len(pending) > len(left):  # the rest of the window's tail, read once
                newly, _ = _read(pending[len(left) :])
                finished.update(id(h) for h in newly)
            break
        if left:
            _sleep(pending, tokens, deadline, read_s)
    done = [h for h in given if id(h) in finished]
    left = [h for h in given if id(h) not in finished]
    return WaitResult(done, left)


def as_completed(
    handles: Iterable[TaskHandle[R]], timeout: Optional[float] = None
) -> Iterator[TaskHandle[R]]:
    """Yields the handles as their tasks finish (those finished in the same
    read in the order given), like :func:`concurrent.futures.as_completed`.
    Raises :class:`~ferroq.TaskTimeoutError` (a ``TimeoutError``) when
    ``timeout`` seconds pass, counted from this call, with tasks still
    unfinished. Failed tasks are yielded too: their ``result()`` raises."""
    pending = _checked(handles)
    deadline = _deadline(timeout)
    return _completed(pending, deadline)


def _completed(pending: list[TaskHandle[R]], deadline: float) -> Iterator[TaskHandle[R]]:
    while pending:
        tokens = _tokens(pending)
        t0 = time.monotonic()
        newly, pending = _read(pending)
        read_s = time.monotonic() - t0
        yield from newly
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TaskTimeoutError(f"{len(pending)} task(s) still unfinished after the timeout")
        _sleep(pending, tokens, deadline, read_s)
