"""Tasks run by worker subprocesses. Each appends its id to $FERROQ_TEST_LOG
(when set) so tests can count executions across processes."""

from __future__ import annotations

import os
import time

from ferroq import current_task, task


def _log(tag: str) -> None:
    path = os.environ.get("FERROQ_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{tag} {current_task().id} {os.getpid()}\n")


@task
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


@task(retries=3)
def slow(i: int, seconds: float = 0.005) -> int:
    """Logs its start and end around a short sleep."""
    _log("start")
    time.sleep(seconds)
    _log("end")
    return i


@task(queue="other")
def shout(text: str) -> str:
    """Upper-cases text, on the 'other' queue."""
    return text.upper()
