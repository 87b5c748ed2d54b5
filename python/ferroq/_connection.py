"""``Connection``: the part of a queue that the layers below
:class:`~ferroq.Queue` need — the URL, the native store, the serializer,
the receive loop that delivers callbacks, and the listeners bound to it.

:class:`~ferroq.Queue` subclasses it and adds the verbs users call. Modules
of this package take a ``Connection`` (a ``Queue`` is one) and use its
private ``_store`` directly; users go through the ``Queue`` verbs.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from typing_extensions import Self

from . import _core
from ._errors import FerroqError
from .receive import ReceiveLoop, check_threads
from .serialization import decode, encode, serializer_name

if TYPE_CHECKING:
    from ._types import HasId

__all__ = ["Connection", "StatusHook", "eager_everywhere", "redact"]

H = TypeVar("H", bound="HasId")

#: ``hook(task_id, old_status, new_status)``.
StatusHook = Callable[[int, str, str], None]

#: How many ``ferroq.testing.eager()`` blocks without a queue are open: while
#: any is, every send in the process runs at once (see :meth:`Connection.run_eager`).
eager_everywhere = 0
#: The status hooks of those blocks.
eager_hooks: list[StatusHook] = []


class Connection:
    """A store opened from a URL, with the serializer values are stored in.

    ``url``, ``serializer``, ``clock`` and ``eager`` are as for
    :class:`~ferroq.Queue`.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        serializer: str = "json",
        clock: Optional[_core.ManualClock] = None,
        eager: bool = False,
    ) -> None:
        self.url = url
        self.serializer = serializer_name(serializer)
        #: The manual clock the store reads its time from, if any.
        self.clock = clock
        #: True when sends run at once in the sender (see :meth:`run_eager`).
        self.eager = bool(eager)
        #: Status hooks called for the moves eager runs make.
        self.eager_hooks: list[StatusHook] = []
        # The binding takes a clock only when one is given.
        self._store = _core.Store(url) if clock is None else _core.Store(url, clock=clock)
        _open.add(self)
        self._receiver: Optional[ReceiveLoop] = None
        self._receiver_lock = threading.Lock()
        self._callback_threads = 1
        # ``@queue.listener`` functions: (registration order, key, function).
        # Kept here, not in a global list, so they go away with the queue.
        self._listeners: list[tuple[int, str, Callable[[Any], Any]]] = []

    @property
    def allow_pickle(self) -> bool:
        """True when this queue's serializer is pickle, so values it did not
        write itself may still be unpickled."""
        return self.serializer == "pickle"

    def encode(self, value: Any) -> bytes:
        """``value`` as this queue stores it (its serializer)."""
        return encode(value, self.serializer)

    def decode(self, data: bytes) -> Any:
        """A value this queue stored (pickle only when its serializer is pickle)."""
        return decode(data, allow_pickle=self.allow_pickle)

    def run_eager(
        self, handle: H, callback: Optional[Callable[[Any], None]]
    ) -> H:
        """Runs a task just sent, here and now, as a worker would; returns
        ``handle``. :class:`~ferroq.Queue` implements it."""
        raise FerroqError(f"eager mode needs a ferroq.Queue, not {type(self).__name__}")

    @property
    def callback_threads(self) -> int:
        """How many send-time callbacks may run at once (1 by default: one
        after another, on one thread, in the order their tasks finish).
        Set it higher (``queue.callback_threads = 4``) so that slow
        callbacks overlap; it may be changed at any time, and applies to
        callbacks of tasks that finish from then on. Raises
        :class:`InvalidArgumentError` for anything but an int >= 1."""
        return self._callback_threads

    @callback_threads.setter
    def callback_threads(self, n: int) -> None:
        n = check_threads(n)
        with self._receiver_lock:
            self._callback_threads = n
            if self._receiver is not None:
                self._receiver.threads = n

    def _receive_loop(self) -> ReceiveLoop:
        """The loop that calls send-time callbacks, started on first use."""
        with self._receiver_lock:
            if self._receiver is None:
                self._receiver = ReceiveLoop(self._store, threads=self._callback_threads)
                self._receiver.start()
            return self._receiver

    def close(self) -> None:
        """Stops this queue's callback thread and closes the store."""
        if self._receiver is not None:
            self._receiver.stop()
        self._store.close()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._store.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.url)!r}>"


# Connections not yet closed, closed at interpreter exit (see _close_all).
_open: weakref.WeakSet[Connection] = weakref.WeakSet()
# How long exit waits for threads still inside a native wait to leave it.
_EXIT_WAIT_S = 1.0


@atexit.register
def _close_all() -> None:
    """At interpreter exit, closes every open store: the write-ahead log is
    checkpointed into the store files, and threads still waiting in the
    native core (a daemon thread in ``handle.result()``, say) are ended
    with ``StoreUnavailableError`` and given a moment to leave it. A thread
    that came back from native code only after the interpreter began to
    shut down would abort the process."""
    stores = []
    for conn in list(_open):
        try:
            conn.close()
        except Exception:  # exit goes on whatever one store says
            continue
        stores.append(conn._store)
    deadline = time.monotonic() + _EXIT_WAIT_S
    while any(s.waiting for s in stores) and time.monotonic() < deadline:
        time.sleep(0.01)


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and reprs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds.split("/")[0]:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
