"""The process-wide default connection: where module-level ``@task``
functions send. :mod:`ferroq.queue` sets the class opened from
``$FERROQ_URL`` to :class:`~ferroq.Queue` when it is imported (as
``logging.setLoggerClass`` does), so the tasks layer never imports the
queue."""

from __future__ import annotations

import os
import threading
from typing import Optional

from ._connection import Connection
from ._errors import FerroqError

__all__ = ["forget", "get_default", "peek", "set_class", "set_default"]

_default: Optional[Connection] = None
_lock = threading.Lock()
_class: type[Connection] = Connection


def set_class(cls: type[Connection]) -> None:
    """Sets the class :func:`get_default` opens from ``$FERROQ_URL``."""
    global _class
    _class = cls


def set_default(conn: Optional[Connection]) -> None:
    """Sets (None: clears) the default connection."""
    global _default
    with _lock:
        _default = conn


def peek() -> Optional[Connection]:
    """The default connection if one is set (never opens one)."""
    return _default


def forget(conn: Connection) -> None:
    """Clears the default if it is ``conn`` (which is closing)."""
    global _default
    with _lock:
        if _default is conn:
            _default = None


def get_default() -> Connection:
    """The default connection: the one given to :func:`set_default`, else one opened
    from ``$FERROQ_URL``."""
    global _default
    with _lock:
        if _default is None or _default.closed:
            url = os.environ.get("FERROQ_URL")
            if not url:
                raise FerroqError(
                    "no default queue: call ferroq.set_default_queue(Queue(url)), set "
                    "FERROQ_URL, or bind the task with @queue.task"
                )
            _default = _class(url)
        return _default
