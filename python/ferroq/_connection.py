"""``Connection``: the part of a queue that the layers below
:class:`~ferroq.Queue` need — the URL, the native store, the serializer,
the receive loop that delivers callbacks, and the listeners bound to it.

:class:`~ferroq.Queue` subclasses it and adds the verbs users call. Modules
of this package take a ``Connection`` (a ``Queue`` is one) and use its
private ``_store`` directly; users go through the ``Queue`` verbs.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from typing_extensions import Self

from . import _core
from .receive import ReceiveLoop
from .serialization import decode, encode, serializer_name

__all__ = ["Connection", "redact"]


class Connection:
    """A store opened from a URL, with the serializer values are stored in.

    ``url`` and ``serializer`` are as for :class:`~ferroq.Queue`.
    """

    def __init__(self, url: str = "memory://", *, serializer: str = "json") -> None:
        self.url = url
        self.serializer = serializer_name(serializer)
        self._store = _core.Store(url)
        self._receiver: Optional[ReceiveLoop] = None
        self._receiver_lock = threading.Lock()
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

    def _receive_loop(self) -> ReceiveLoop:
        """The loop that calls send-time callbacks, started on first use."""
        with self._receiver_lock:
            if self._receiver is None:
                self._receiver = ReceiveLoop(self._store)
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
