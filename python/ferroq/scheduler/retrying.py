"""Backing off and logging for a scheduler loop that retries a step after
an error (a store that is down, a worker whose native module does not
match its Python): each of a scheduler's threads would otherwise log a
traceback twice a second for as long as the fault lasts."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

__all__ = ["LoopRetry"]

# The first wait after a failure, doubled while failures go on, up to the most.
FIRST_WAIT_S = 0.5
MOST_WAIT_S = 5.0
# How often the same failure is logged again while it goes on.
REPEAT_LOG_S = 60.0


class LoopRetry:
    """What a loop does after each failed step: how long to wait before
    the next (0.5 s, doubling to 5 s while the failures go on), and what to
    log. The first failure, and one whose error differs from the last, is
    logged at ERROR with its traceback; the same failure again at most once
    a minute, at WARNING, with how many times in a row it happened. A step
    that works again is logged once (INFO) and starts the waits over."""

    def __init__(
        self, logger: logging.Logger, what: str, extra: Optional[dict[str, Any]] = None
    ) -> None:
        self.log = logger
        self.what = what
        self.extra = extra or {}
        self.failures = 0
        self._last = ""
        self._logged_at = 0.0

    def failed(self) -> float:
        """Called in the ``except`` block of a failed step: logs as above
        and returns the seconds to wait before trying again."""
        exc = sys.exc_info()[1]
        text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        self.failures += 1
        wait: float = min(FIRST_WAIT_S * float(2 ** min(self.failures - 1, 16)), MOST_WAIT_S)
        now = time.monotonic()
        if self.failures == 1 or text != self._last:
            self.log.exception("%s; retrying in %.1f s", self.what, wait, extra=self.extra)
            self._logged_at = now
        elif now - self._logged_at >= REPEAT_LOG_S:
            self.log.warning(
                "%s, %d times in a row: %s; retrying in %.1f s",
                self.what, self.failures, text, wait, extra=self.extra,
            )
            self._logged_at = now
        self._last = text
        return wait

    def ok(self) -> None:
        """Called after a step that worked: the next failure waits 0.5 s."""
        if self.failures:
            self.log.info(
                "%s: working again after %d failure(s)", self.what, self.failures,
                extra=self.extra,
            )
            self.failures = 0
            self._last = ""
