"""The run loop shared by loops that react to store changes (receive,
listen): tick, then sleep until any process commits, until stopped; and
:func:`wake_waiters`, which ends such sleeps at once when a loop stops."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from . import _core

__all__ = ["run_on_changes", "wake_waiters"]

# Longest wait between ticks when nothing signals a change.
IDLE_WAIT_S = 0.5


def wake_waiters(store: _core.Store) -> None:
    """Wakes every thread of this process waiting for a change of ``store``
    (in ``wait_for_change``), so a loop told to stop sees it now instead of
    at the end of its wait slice. Stopping an idle scheduler is then
    immediate, with no shorter (busier) idle waits."""
    try:
        store.wake()
    except Exception:
        pass  # a closed or unreachable store: the waits end on their own


def run_on_changes(
    store: _core.Store,
    stopped: threading.Event,
    tick: Callable[[], object],
    log: logging.Logger,
    what: str,
) -> None:
    """Calls ``tick()`` after every change to the store (and at least every
    half second) until ``stopped`` is set or the store closes; an error is
    logged and the loop goes on. Whoever sets ``stopped`` calls
    :func:`wake_waiters` so the loop ends at once."""
    while not stopped.is_set():
        try:
            token = store.change_token()
            tick()
            if stopped.is_set():
                return
            store.wait_for_change(token, IDLE_WAIT_S)
        except Exception:
            if stopped.is_set() or store.closed:
                return
            log.exception("%s error; retrying", what)
            stopped.wait(IDLE_WAIT_S)
