"""``@listener``: functions run by schedulers when listen data changes.

A listener for every queue is kept here (a function, no queue); one bound
to a queue (``@queue.listener``, or ``listener(key, queue=q)``) is kept by
that queue, so it goes away with it.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["any_listeners", "listener", "listeners_for"]

F = TypeVar("F", bound=Callable[[Any], Any])

# Listeners of every queue: (registration order, key, function).
_listeners: list[tuple[int, str, Callable[[Any], Any]]] = []
_lock = threading.Lock()
# One order across the global list and every queue's own, so a scheduler
# runs a key's listeners in the order they were registered.
_order = itertools.count()


def listener(key: str, *, queue: Optional[Connection] = None) -> Callable[[F], F]:
    """Registers ``fn(value)`` to run in every scheduler (of ``queue``, or
    of any queue) each time ``queue.update_listen_data(key, value)`` is
    called, once per change and in order of change, across processes."""
    if not key:
        raise InvalidArgumentError("listener key must not be empty")

    def register(fn: F) -> F:
        with _lock:
            entry = (next(_order), key, fn)
            (_listeners if queue is None else queue._listeners).append(entry)
        return fn

    return register


def any_listeners(queue: Connection) -> bool:
    """True when some listener would run in a scheduler of ``queue``."""
    with _lock:
        return bool(_listeners or queue._listeners)


def listeners_for(key: str, queue: Connection) -> list[Callable[[Any], Any]]:
    """The listeners a scheduler of ``queue`` runs for ``key``."""
    with _lock:
        found = [e for e in _listeners if e[1] == key]
        found += [e for e in queue._listeners if e[1] == key]
    return [fn for _, _, fn in sorted(found, key=lambda e: e[0])]
