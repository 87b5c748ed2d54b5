"""Tasks for the execution-mode, limit and listener tests (importable by
spawned worker processes)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from ferroq import current_task, listener, task

STATE = {"running": 0, "max_running": 0, "in_flight": 0, "max_in_flight": 0}
STARTS: list[float] = []
LOCK = threading.Lock()


def _log(line: str) -> None:
    path = os.environ.get("FERROQ_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@task(timeout=0.5, retries=1)
def hang_once() -> int:
    """Hangs forever on its first attempt; returns the attempt number after."""
    attempt = current_task().attempt
    _log(f"hang {attempt} {os.getpid()}")
    if attempt == 1:
        while True:
            time.sleep(1)
    return attempt


@task
def sleep_for(seconds: float) -> str:
    """Sleeps (not cooperatively)."""
    _log(f"sleep {os.getpid()}")
    time.sleep(seconds)
    return "slept"


@task
async def async_sleep(seconds: float) -> float:
    """Sleeps on the event loop, counting how many run at once."""
    with LOCK:
        STATE["in_flight"] += 1
        STATE["max_in_flight"] = max(STATE["max_in_flight"], STATE["in_flight"])
    try:
        await asyncio.sleep(seconds)
    finally:
        with LOCK:
            STATE["in_flight"] -= 1
    return seconds


@task(concurrency=2)
def limited(seconds: float) -> None:
    """At most two run at once across every worker."""
    with LOCK:
        STATE["running"] += 1
        STATE["max_running"] = max(STATE["max_running"], STATE["running"])
    time.sleep(seconds)
    with LOCK:
        STATE["running"] -= 1


@task(rate_limit="20/s")
def rated() -> None:
    """At most 20 claims per second across every worker."""
    with LOCK:
        STARTS.append(time.monotonic())


@task(requires={"gpu_memory_gb": 8})
def needs_gpu() -> str:
    """Runs only where 8 GB of GPU memory is offered."""
    return "ran"


@listener("config")
def on_config(value: object) -> None:
    """Logs each change of the 'config' listen data."""
    _log(f"config {value} {os.getpid()}")


@task(meta={"team": "media"})
def own_metadata() -> object:
    """Returns the running task's metadata and its process id."""
    return {"metadata": current_task().metadata, "pid": os.getpid()}
