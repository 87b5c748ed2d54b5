"""The progress display of :meth:`Queue.process`: done, failed, waiting to
be retried, rate and time left, for the batch named by its label.

Three ways to draw it, chosen by :func:`open_progress`:

* with `rich <https://rich.readthedocs.io>`_ installed
  (``pip install 'ferroq[progress]'``), on a terminal: a bar rich keeps to
  the terminal's width and redraws in place;
* in Jupyter: one output line updated in place (a display handle), so a
  notebook shows one bar, not a scroll of them;
* otherwise a plain line: redrawn in place on a terminal, cut to fit its
  width; elsewhere (a log file, CI) a plain line every few seconds.

The numbers are the same in each: the percentage is rounded down, so 100%
means every row finished; the rate is measured over the last few seconds
(until a second has passed it is the ``qps`` asked, if any, else unknown,
so the first line never shows a wild guess); rows waiting before a retry
(requeued by a failed attempt, or sleeping in :func:`with_resilience`) are
shown as ``waiting``.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time
from typing import Any, Literal, Optional, Protocol, TextIO, Union

__all__ = ["Progress", "ProgressBar", "ProgressStyle", "open_progress"]

#: ``True``/``"auto"`` (rich on a terminal when installed, else plain),
#: ``"rich"``, ``"plain"``, or ``False`` (nothing).
ProgressStyle = Union[bool, Literal["auto", "rich", "plain"]]

# Seconds of history the rate is measured over.
_WINDOW_S = 5.0
# Before this much of the run has passed, a measured rate is noise.
_SETTLE_S = 1.0


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress(Protocol):
    """What :meth:`Queue.process` draws progress on."""

    def update(self, done: int, failed: int, waiting: int = 0) -> None:
        """Shows these counts (throttled: not every call redraws)."""

    def close(self, done: int, failed: int, waiting: int = 0, note: str = "") -> None:
        """Shows the final counts, then ``note`` on a line of its own."""


class _Meter:
    """The numbers every display shows, from the counts it is given."""

    def __init__(self, total: int, finished: int, qps: Optional[float]) -> None:
        self.total = total
        self.start_finished = finished
        self.qps = qps
        self.started = time.monotonic()
        self._history: collections.deque[tuple[float, int]] = collections.deque()

    def rate(self, now: float, finished: int) -> Optional[float]:
        """Rows finished per second over the last few seconds of this run;
        None while unknown."""
        h = self._history
        h.append((now, finished))
        while len(h) > 2 and now - h[1][0] > _WINDOW_S:
            h.popleft()
        if now - self.started < _SETTLE_S or finished == self.start_finished:
            return self.qps
        t0, n0 = h[0]
        if now - t0 < _SETTLE_S:
            t0, n0 = self.started, self.start_finished
        measured = (finished - n0) / (now - t0)
        return min(measured, self.qps) if self.qps else measured

    def percent(self, finished: int) -> int:
        """Rounded down: 100 only when every row has finished."""
        if self.total <= 0:
            return 100
        return min(100, math.floor(finished * 100 / self.total))

    def eta(self, rate: Optional[float], finished: int) -> str:
        """The time left, ``?`` while unknown."""
        left = self.total - finished
        if left <= 0:
            return "0:00"
        if not rate:
            return "?"
        return _duration(left / rate)

    def parts(self, done: int, failed: int, waiting: int, now: float) -> list[str]:
        """The fields after the bar, most important first."""
        finished = done + failed
        rate = self.rate(now, finished)
        out = [
            f"{self.percent(finished)}%",
            f"{finished:,}/{self.total:,}",
            f"{failed:,} failed",
            f"{waiting:,} waiting" if waiting else "",
            f"ETA {self.eta(rate, finished)}",
            f"{rate:,.0f}/s" if rate else "",
            f"{done:,} done",
            _duration(now - self.started),
        ]
        return out


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return type(ip).__name__ == "ZMQInteractiveShell"


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    try:
        return max(20, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 100


def fit_line(label: str, parts: list[str], frac: float, width: int) -> str:
    """One line of at most ``width`` characters: the label (shortened if
    need be), a bar of 10 to 24 cells, and as many of ``parts`` (most
    important first) as fit, dropped from the end."""
    parts = [p for p in parts if p]
    keep = list(range(len(parts)))

    def render(bar_cells: int, kept: list[int], name: str) -> str:
        fill = int(frac * bar_cells)
        bar = "█" * fill + "░" * (bar_cells - fill) if bar_cells else ""
        fields = " · ".join(parts[i] for i in kept)
        return " ".join(x for x in (name, bar, fields) if x)

    name = label
    for cells in (24, 16, 10):
        text = render(cells, keep, name)
        if len(text) <= width:
            return text
    while len(keep) > 2 and len(render(10, keep, name)) > width:
        keep.pop()
    text = render(10, keep, name)
    if len(text) > width and name:
        room = max(0, len(name) - (len(text) - width))
        name = (name[: room - 1] + "…") if room > 1 else ""
        text = render(10, keep, name)
    if len(text) > width:
        text = render(0, keep, name)
    return text[:width]


class ProgressBar:
    """The plain display: one line, redrawn in place on a terminal (cut to
    its width) or in a Jupyter output, else written out every few seconds.
    ``total`` rows, ``finished`` of them finished before the run started;
    ``qps`` (the rate asked, if any) stands in for the rate until it can be
    measured."""

    def __init__(
        self,
        total: int,
        finished: int = 0,
        *,
        label: str = "",
        stream: Optional[TextIO] = None,
        enabled: bool = True,
        qps: Optional[float] = None,
    ) -> None:
        self.meter = _Meter(total, finished, qps)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._handle: Any = None
        if enabled and stream is None and _in_jupyter():
            from IPython import display as ipd

            show: Any = ipd.display
            self._handle = show("", display_id=True)
        live = self.tty or self._handle is not None
        self.every = 0.1 if live else 5.0
        self._drawn = -math.inf
        self._width = 0

    @property
    def total(self) -> int:
        """Rows in the batch."""
        return self.meter.total

    def line(self, done: int, failed: int, waiting: int = 0, now: Optional[float] = None) -> str:
        """The text of the bar for these counts, fitted to the terminal."""
        now = time.monotonic() if now is None else now
        finished = done + failed
        frac = min(1.0, finished / self.total) if self.total else 1.0
        parts = self.meter.parts(done, failed, waiting, now)
        # The last column of a terminal wraps the cursor on some; keep off it.
        width = _columns(self.stream) - 1 if self.tty else 10_000
        return fit_line(self.label, parts, frac, width)

    def update(self, done: int, failed: int, waiting: int = 0, *, force: bool = False) -> None:
        """Redraws the bar (at most every 0.1 s live, 5 s elsewhere)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < self.every:
            return
        self._drawn = now
        text = self.line(done, failed, waiting, now)
        if self._handle is not None:
            self._handle.update(text)
            return
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, done: int, failed: int, waiting: int = 0, note: str = "") -> None:
        """Draws the final state and ends the line (with ``note`` after it)."""
        if not self.enabled:
            return
        self.update(done, failed, waiting, force=True)
        if self._handle is None:
            if self.tty:
                self.stream.write("\n")
            if note:
                self.stream.write(note + "\n")
            self.stream.flush()
        elif note:
            print(note, file=sys.stderr)


class _RichBar:
    """The rich display: rich keeps the bar to the terminal's width."""

    def __init__(self, total: int, finished: int, label: str, qps: Optional[float]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        self.meter = _Meter(total, finished, qps)
        self.console = Console(stderr=True)
        self.progress = RichProgress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            auto_refresh=False,
            expand=True,
        )
        self.task = self.progress.add_task(label, total=max(total, 1), completed=finished,
                                           stats="")
        self.progress.start()
        self._drawn = -math.inf

    def _stats(self, done: int, failed: int, waiting: int, now: float) -> str:
        parts = [p for p in self.meter.parts(done, failed, waiting, now) if p]
        width = self.console.width
        # Leave the bar at least 10 cells beside the label and the fields.
        room = max(20, width - len(str(self.progress.tasks[0].description)) - 14)
        while len(parts) > 2 and len(" · ".join(parts)) > room:
            parts.pop()
        return " · ".join(parts)

    def update(self, done: int, failed: int, waiting: int = 0, *, force: bool = False) -> None:
        """Redraws (at most every 0.1 s)."""
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        self.progress.update(
            self.task, completed=done + failed, stats=self._stats(done, failed, waiting, now)
        )
        self.progress.refresh()

    def close(self, done: int, failed: int, waiting: int = 0, note: str = "") -> None:
        """Draws the final state, stops, and prints ``note``."""
        self.update(done, failed, waiting, force=True)
        self.progress.stop()
        if note:
            self.console.print(note, markup=False, highlight=False)


class _Silent:
    def update(self, done: int, failed: int, waiting: int = 0) -> None:
        pass

    def close(self, done: int, failed: int, waiting: int = 0, note: str = "") -> None:
        if note:
            sys.stderr.write(note + "\n")


def _rich_installed() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def open_progress(
    total: int,
    finished: int = 0,
    *,
    label: str = "",
    style: ProgressStyle = True,
    qps: Optional[float] = None,
) -> Progress:
    """A progress display for ``total`` rows (``finished`` of them before
    the run), drawn on stderr in ``style`` (see :data:`ProgressStyle`)."""
    if style is False:
        return _Silent()
    if style not in (True, "auto", "rich", "plain"):
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"progress must be True, False, 'auto', 'rich' or 'plain', got {style!r}"
        )
    if style == "rich":
        if not _rich_installed():
            raise ImportError("progress='rich' needs rich: pip install 'ferroq[progress]'")
        return _RichBar(total, finished, label, qps)
    if (
        style != "plain"
        and not _in_jupyter()
        and sys.stderr.isatty()
        and _rich_installed()
    ):
        return _RichBar(total, finished, label, qps)
    return ProgressBar(total, finished, label=label, qps=qps)
