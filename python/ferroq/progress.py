"""A one-line progress bar on stderr for :meth:`Queue.process`: done,
failed, rate and time left. Redrawn in place on a terminal; elsewhere (a
log file, CI) a plain line every few seconds."""

from __future__ import annotations

import collections
import sys
import time
from typing import Optional, TextIO

__all__ = ["ProgressBar"]

_WIDTH = 24
# Seconds of history the rate is measured over.
_WINDOW_S = 5.0


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """Shows how far a batch of ``total`` rows is, ``finished`` of them
    already finished when the run started."""

    def __init__(
        self,
        total: int,
        finished: int = 0,
        *,
        label: str = "",
        stream: Optional[TextIO] = None,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.start_finished = finished
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.1 if self.tty else 5.0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._width = 0

    def rate(self, now: float, finished: int) -> float:
        """Rows finished per second over the last few seconds of this run."""
        h = self._history
        h.append((now, finished))
        while len(h) > 2 and now - h[1][0] > _WINDOW_S:
            h.popleft()
        t0, n0 = h[0]
        if now - t0 < 0.2:
            t0, n0 = self.started, self.start_finished
        span = now - t0
        return (finished - n0) / span if span > 0 else 0.0

    def line(self, done: int, failed: int, now: Optional[float] = None) -> str:
        """The text of the bar for these counts."""
        now = time.monotonic() if now is None else now
        finished = done + failed
        frac = min(1.0, finished / self.total) if self.total else 1.0
        fill = int(frac * _WIDTH)
        bar = "█" * fill + "░" * (_WIDTH - fill)
        rate = self.rate(now, finished)
        left = self.total - finished
        eta = _duration(left / rate) if rate > 0 and left > 0 else ("0:00" if left <= 0 else "?")
        label = f"{self.label} " if self.label else ""
        return (
            f"{label}{bar} {frac:4.0%} {finished:,}/{self.total:,} · {done:,} done · "
            f"{failed:,} failed · {rate:,.0f}/s · ETA {eta} · {_duration(now - self.started)}"
        )

    def update(self, done: int, failed: int, *, force: bool = False) -> None:
        """Redraws the bar (at most every 0.1 s on a terminal, 5 s elsewhere)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < self.every:
            return
        self._drawn = now
        text = self.line(done, failed, now)
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, done: int, failed: int, note: str = "") -> None:
        """Draws the final state and ends the line (with ``note`` after it)."""
        if not self.enabled:
            return
        self.update(done, failed, force=True)
        if self.tty:
            self.stream.write("\n")
        if note:
            self.stream.write(note + "\n")
        self.stream.flush()
