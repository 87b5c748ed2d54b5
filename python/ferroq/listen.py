"""``@listener``: functions run by schedulers when listen data changes."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["listener", "listeners_for"]

F = TypeVar("F", bound=Callable[[Any], Any])

_listeners: list[tuple[str, Callable[[Any], Any], Optional[Queue]]] = []
_lock = threading.Lock()


def listener(key: str, *, queue: Optional[Queue] = None) -> Callable[[F], F]:
    """Registers ``fn(value)`` to run in every scheduler (of ``queue``, or
    of any queue) each time ``queue.update_listen_data(key, value)`` is
    called, once per change and in order of change, across processes."""
    if not key:
        raise ValueError("listener key must not be empty")

    def register(fn: F) -> F:
        with _lock:
            _listeners.append((key, fn, queue))
        return fn

    return register


def listeners_for(key: str, queue: Queue) -> list[Callable[[Any], Any]]:
    """The listeners a scheduler of ``queue`` runs for ``key``."""
    with _lock:
        return [fn for k, fn, q in _listeners if k == key and (q is None or q is queue)]
