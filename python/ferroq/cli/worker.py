"""``ferroq worker``: import task modules and run a scheduler on a store
until stopped (or, with ``--burst``, until its queues are drained)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Callable, Optional

import click

from .. import Queue, QueueScheduler, discover, set_default_queue
from ..supervisor import cpu_count
from ._common import CliError, mask, module_names, open_queue, url_option

__all__ = ["worker"]

log = logging.getLogger("ferroq.cli")

# How often a --burst worker looks whether its queues are drained.
_BURST_CHECK_S = 0.2
_PAGE = 1000


def _ready(q: Queue, queue: str, now_ms: int) -> bool:
    """Whether ``queue`` holds a queued task due now (not one waiting for a
    later run_at: a retry in backoff, a delayed send)."""
    after: Optional[int] = None
    while True:
        page = q._store.list_tasks(queue=queue, status="queued", after_id=after, limit=_PAGE)
        if any(t.run_at <= now_ms for t in page):
            return True
        if len(page) < _PAGE:
            return False
        after = page[-1].id


def drained(q: Queue, queues: list[str]) -> bool:
    """True when none of ``queues`` has a task running or ready to run
    (paused queues hand out nothing, so their queued tasks do not count)."""
    counts = q.stats()
    now = q._store.now_ms()
    for name in queues:
        row = counts.get(name)
        if row is None:
            continue
        if row["running"]:
            return False
        if row["queued"] and not getattr(q.queue_options(name), "paused", False):
            if _ready(q, name, now):
                return False
    return True


def _run_burst(scheduler: QueueScheduler, queue: Queue, grace: float) -> None:
    """Runs ``scheduler`` until its queues are drained, or SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        log.info("signal %s: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        scheduler.start()
        while not stop.wait(_BURST_CHECK_S):
            if drained(queue, scheduler.queues):
                log.info("burst: nothing ready or running in %s; stopping",
                         ",".join(scheduler.queues))
                break
    finally:
        scheduler.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _configure_logging(level: str, fmt: str) -> None:
    from ..logs import configure

    configure(level.upper(), "json" if fmt == "json" else "text")


def _start_metrics(queue: Queue, host: str, port: int) -> Callable[[], None]:
    """Serves Prometheus metrics; returns what stops the server."""
    try:
        from ..metrics import start_http_server
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "prometheus_client":
            raise CliError(
                "--metrics-port needs prometheus-client: pip install 'ferroq[metrics]'"
            ) from e
        raise
    server = start_http_server(queue, port, host=host)
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server.close


def _processes(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """``--processes``: a count >= 1, or ``auto`` for the cores this
    process may use."""
    if value.strip().lower() == "auto":
        return cpu_count()
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of processes or 'auto'") from None
    if n < 1:
        raise click.BadParameter(f"{n} is not >= 1")
    return n


@click.command(short_help="Run tasks from the named modules until stopped or drained.")
@click.argument(
    "modules", metavar="MODULE...", nargs=-1, required=True, callback=module_names
)
@url_option
@click.option(
    "--concurrency", "-c", type=click.IntRange(min=1), default=4, show_default=True,
    metavar="N",
    help="Worker threads (thread mode), child processes (process mode) or tasks in "
    "flight (asyncio mode).",
)
@click.option(
    "--processes", "-p", callback=_processes, default="1", show_default=True, metavar="N|auto",
    help="Scheduler processes, under one supervisor that restarts any that dies "
    "('auto': one per core). Each runs --concurrency.",
)
@click.option(
    "--queue", "-q", "queues", multiple=True, metavar="NAME",
    help="A queue to serve (repeatable). Default: 'default', every queue a registered "
    "task names, and queues whose next task this worker can run.",
)
@click.option(
    "--lease", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
    metavar="SECONDS", help="How long a claim stays valid without a heartbeat.",
)
@click.option(
    "--batch-wait", type=click.FloatRange(min=0, max=1), default=0.0, show_default=True,
    metavar="SECONDS",
    help="When work arrives at an idle worker, wait this long before claiming it, so "
    "tasks sent one at a time are claimed several at once: less CPU per task for up "
    "to this much more latency.",
)
@click.option(
    "--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
    metavar="SECONDS", help="On stop, how long running tasks get to finish.",
)
@click.option(
    "--mode", type=click.Choice(["thread", "process", "asyncio"]), default="thread",
    show_default=True,
    help="How tasks run: worker threads, child processes (hard timeouts), or an event loop.",
)
@click.option(
    "--burst", is_flag=True,
    help="Exit (code 0) once the served queues have no task ready or running. "
    "Tasks waiting for a later time (retries in backoff) are left queued.",
)
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                     case_sensitive=False),
    default="INFO", show_default=True, envvar="FERROQ_LOG", show_envvar=True, metavar="LEVEL",
    help="Least level logged on stderr: DEBUG, INFO, WARNING or ERROR.",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    envvar="FERROQ_LOG_FORMAT", show_envvar=True,
    help="Text lines, or one JSON object per line with every field of the record.",
)
@click.option(
    "--metrics-port", type=click.IntRange(min=0, max=65535), metavar="PORT",
    help="Serve Prometheus metrics on this port (0: any free one, logged; needs the "
    "metrics extra).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
    help="Address the metrics endpoint binds (0.0.0.0 for scrapers on other hosts).",
)
def worker(
    modules: tuple[str, ...],
    url: Optional[str],
    concurrency: int,
    processes: int,
    queues: tuple[str, ...],
    lease: float,
    batch_wait: float,
    grace: float,
    mode: str,
    burst: bool,
    log_level: str,
    log_format: str,
    metrics_port: Optional[int],
    metrics_host: str,
) -> int:
    """Run tasks: import each MODULE (a package with every submodule) so
    its tasks are registered, open the store and serve it until Ctrl+C or
    SIGTERM.

    The current directory is put on sys.path first. The store becomes the
    process's default queue (where module-level @ferroq.task functions
    send); it is created if it does not exist. On SIGINT/SIGTERM running
    tasks get --grace seconds to finish and claimed tasks not yet started go
    back to the queue; a second Ctrl+C stops at once.

    With --processes N the command supervises N worker processes, each
    importing the MODULEs and running its own scheduler: one that dies is
    started again (after a growing delay if it keeps dying), and all stop
    together on SIGINT/SIGTERM.
    """
    _configure_logging(log_level, log_format)
    sys.path.insert(0, os.getcwd())
    found = []
    for module in modules:
        try:
            found += discover(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise  # a module the user's code imports: their traceback helps
            raise CliError(
                f"no module named {e.name!r} (run from the directory that holds it, "
                "or set PYTHONPATH)"
            ) from e
    if processes > 1:
        # The children configure their logging from the environment.
        os.environ["FERROQ_LOG"] = log_level.upper()
        os.environ["FERROQ_LOG_FORMAT"] = log_format
    queue = open_queue(url)
    stop_metrics: Optional[Callable[[], None]] = None
    try:
        set_default_queue(queue)
        scheduler = QueueScheduler(
            queue,
            concurrency=concurrency,
            queues=list(queues) or None,
            lease=lease,
            batch_wait=batch_wait,
            mode=mode,  # type: ignore[arg-type]  # one of the click choices
            processes=processes,
            imports=list(modules) if processes > 1 else None,
        )
        if metrics_port is not None:
            stop_metrics = _start_metrics(queue, metrics_host, metrics_port)
        log.info(
            "worker %s on %s serving %s with %d task(s), %s mode, concurrency %d%s",
            scheduler.worker_id,
            mask(queue.url),
            ",".join(scheduler.queues),
            len(found),
            mode,
            concurrency,
            ", until drained" if burst else "",
        )
        if processes > 1:
            log.info("supervising %d worker processes (pid %d)", processes, os.getpid())
        if burst:
            _run_burst(scheduler, queue, grace)
        else:
            scheduler.run_forever(grace=grace)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        set_default_queue(None)
        queue.close()
    return 0
