"""The progress display of Queue.process: in a real pseudo-terminal of 60
columns (plain and rich), in a real Jupyter kernel, and its numbers: 100%
only when every row finished, an ETA that is no guess on the first line,
rows in backoff shown as waiting, the batch labelled by its name."""

from __future__ import annotations

import os
import pty
import re
import select
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import python_env
from ferroq.progress import ProgressBar

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SCRIPT = textwrap.dedent("""
    import logging, sys, time
    import polars as pl
    from ferroq import Backoff, Queue

    # Per-task log lines are not what this test looks at.
    logging.getLogger("ferroq").setLevel(logging.CRITICAL)

    seen = set()

    def summarize(n: int) -> int:
        time.sleep(0.02)
        if n % 10 == 0 and n not in seen:
            seen.add(n)  # fails once, then waits 1 s in backoff
            raise ConnectionError("reset")
        return n

    q = Queue("memory://")
    q.process(summarize, pl.DataFrame({"n": range(60)}), concurrency=3,
              backoff=Backoff.fixed(1.0), progress=sys.argv[1])
    print("finished", flush=True)
""")


def run_in_terminal(style: str, columns: int) -> str:
    """Runs SCRIPT (as ``python -c``, so its function is ``__main__:summarize``)
    with stdin, stdout and stderr on a pseudo-terminal of ``columns``."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**python_env(), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, style], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode()


@pytest.mark.parametrize("style", ["plain", "rich"])
def test_fits_a_60_column_terminal(style: str) -> None:
    text = run_in_terminal(style, 60)
    assert "finished" in text
    frames = [ANSI.sub("", f) for f in re.split(r"[\r\n]", text)]
    drawn = [f for f in frames if "/60" in f]
    assert len(drawn) >= 5, text  # redrawn in place, many times
    too_wide = [f for f in frames if len(f.rstrip()) > 60]
    assert not too_wide, too_wide
    # Labelled by the function, not __main__:summarize.
    assert all("summarize" in f and "__main__" not in f for f in drawn), drawn[-1]
    # Rows sleeping in backoff are shown as waiting.
    assert any(re.search(r"\b[1-6] waiting", f) for f in drawn), drawn
    assert "100%" in drawn[-1] and "60/60" in drawn[-1]
    assert not any("100%" in f for f in drawn if "60/60" not in f)


def test_percent_is_rounded_down_and_eta_is_no_guess_at_first() -> None:
    bar = ProgressBar(1000, 0, label="job:fn", enabled=False)
    assert " 99% " in f" {bar.line(998, 1)} " and "100%" not in bar.line(998, 1)
    assert "100%" in bar.line(999, 1)
    first = ProgressBar(100, 0, label="job:fn", enabled=False).line(0, 0)
    assert "ETA ?" in first  # nothing measured, no rate asked
    paced = ProgressBar(100, 0, label="job:fn", enabled=False, qps=10).line(0, 0)
    assert "ETA 0:10" in paced  # the rate asked stands in until one is measured
    resumed = ProgressBar(100, 40, label="job:fn", enabled=False).line(40, 0)
    assert "40%" in resumed and "ETA ?" in resumed


NOTEBOOK_CELL = textwrap.dedent("""
    import polars as pl
    from ferroq import Queue

    def summarize(n: int) -> int:
        return n * 2

    q = Queue("memory://")
    out = q.process(summarize, pl.DataFrame({"n": range(200)}), concurrency=2)
    print("rows", out.height)
""")


def test_renders_in_jupyter(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CELL))
    env_path = python_env().get("PYTHONPATH")
    if env_path:
        nb.cells.insert(0, nbformat.v4.new_code_cell(
            f"import sys; sys.path[:0] = {env_path.split(os.pathsep)!r}"))
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[-1].outputs
    shown = [o for o in outputs if o.output_type == "display_data"]
    # One display, updated in place to the final state (not a scroll of lines).
    assert len(shown) == 1, outputs
    text = shown[0].data["text/plain"]
    assert "summarize" in text and "__main__" not in text
    assert "100%" in text and "200/200" in text
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "rows 200" in streams and "\r" not in streams and "/200" not in streams
