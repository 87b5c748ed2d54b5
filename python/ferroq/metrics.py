"""Prometheus metrics: what this process's workers did, and what the store
holds, in the Prometheus text format (``prometheus-client``, the
``metrics`` extra).

* :func:`start_http_server` serves them on a port (``ferroq worker
  --metrics-port``);
* :func:`render` returns them for a web app of your own (the dashboard's
  ``/metrics``);
* :func:`collector` gives a collector to register in a
  ``prometheus_client`` registry you already export.

Worker metrics count from the moment metrics are turned on in the process
(:func:`enable`, which each of the above calls): until then the task loops
do no per-task work for them. Counting is kept off the hot path's locks:
each thread tallies into plain dicts of its own, summed when scraped.
Store metrics are read on every scrape, with the same queries as
:meth:`Queue.stats <ferroq.Queue.stats>` and :meth:`Queue.workers
<ferroq.Queue.workers>` plus one page of each non-empty queue's waiting
tasks.

The metrics, their types and labels are listed in the Observability page
of the documentation.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Iterator, Optional

from ._errors import FerroqError, InvalidArgumentError
from .scheduler import _state

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import start_http_server as _start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - the extra is part of the test install
    raise ImportError(
        "ferroq.metrics needs prometheus-client: pip install 'ferroq[metrics]'"
    ) from e

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .queue import Queue

__all__ = [
    "BUCKETS",
    "MetricsServer",
    "collector",
    "enable",
    "render",
    "start_http_server",
]

#: Upper bounds (seconds) of the task duration histogram's buckets.
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, float("inf"),
)
# A queue's waiting tasks read per scrape to find its oldest ready task.
_OLDEST_PAGE = 200
# Outcomes that count as a failed attempt, and whether it was the last.
_FAILED = {"failed": "true", "unknown": "true", "retried": "false"}
_STALE_AFTER_MS = 30_000


class _Tally:
    """One thread's counts; written by that thread alone, read by scrapes."""

    __slots__ = ("ended", "started")

    def __init__(self) -> None:
        self.started: dict[tuple[str, str], int] = {}
        # (queue, name, outcome) -> one count per bucket, then the sum of seconds.
        self.ended: dict[tuple[str, str, str], list[float]] = {}


class _Meter(threading.local):
    """The process's :class:`~ferroq.scheduler._state.TaskMeter`: per-thread
    tallies (no lock on the hot path), summed by :meth:`totals`."""

    def __init__(self) -> None:
        self.tally = _Tally()
        with _TALLIES_LOCK:
            _TALLIES.append(self.tally)

    def started(self, queue: str, name: str) -> None:
        """Counts an attempt that starts."""
        d = self.tally.started
        key = (queue, name)
        d[key] = d.get(key, 0) + 1

    def ended(self, queue: str, name: str, outcome: str, seconds: float) -> None:
        """Counts an attempt that ended, in its duration bucket."""
        d = self.tally.ended
        key = (queue, name, outcome)
        row = d.get(key)
        if row is None:
            row = d[key] = [0.0] * (len(BUCKETS) + 1)
        row[bisect_left(BUCKETS, seconds)] += 1
        row[-1] += seconds


_TALLIES: list[_Tally] = []
_TALLIES_LOCK = threading.Lock()
_meter: Optional[_Meter] = None
_enable_lock = threading.Lock()


def enable() -> None:
    """Turns worker metrics on in this process (idempotent): from now on
    every scheduler here counts its attempts."""
    global _meter
    with _enable_lock:
        if _meter is None:
            _meter = _Meter()
            _state.set_meter(_meter)


def _totals() -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, str], list[float]]]:
    started: dict[tuple[str, str], int] = {}
    ended: dict[tuple[str, str, str], list[float]] = {}
    with _TALLIES_LOCK:
        tallies = list(_TALLIES)
    for t in tallies:
        # Copies taken in one C call each (the writer may be adding keys).
        for key, n in list(t.started.items()):
            started[key] = started.get(key, 0) + n
        for ekey, row in list(t.ended.items()):
            acc = ended.get(ekey)
            if acc is None:
                ended[ekey] = list(row)
            else:
                for i, v in enumerate(row):
                    acc[i] += v
    return started, ended


def _worker_families() -> Iterator[Metric]:
    started, ended = _totals()
    fam = CounterMetricFamily(
        "ferroq_tasks_started", "Attempts started by this process's workers.",
        labels=["queue", "task"],
    )
    for (queue, name), n in sorted(started.items()):
        fam.add_metric([queue, name], n)
    yield fam
    finished = CounterMetricFamily(
        "ferroq_tasks_finished", "Attempts that finished done (result stored).",
        labels=["queue", "task"],
    )
    failed = CounterMetricFamily(
        "ferroq_tasks_failed",
        "Attempts that failed; final=true when the task failed for good (out of "
        "attempts, or no function registered for it), false when it will be retried.",
        labels=["queue", "task", "final"],
    )
    cancelled = CounterMetricFamily(
        "ferroq_tasks_cancelled", "Attempts ended by a cancellation.", labels=["queue", "task"]
    )
    hist = HistogramMetricFamily(
        "ferroq_task_duration_seconds",
        "How long attempts ran, by outcome (done, retried, failed, cancelled).",
        labels=["queue", "task", "outcome"],
    )
    by_final: dict[tuple[str, str, str], float] = {}
    for (queue, name, outcome), row in sorted(ended.items()):
        count = sum(row[:-1])
        if outcome in _FAILED:
            fkey = (queue, name, _FAILED[outcome])
            by_final[fkey] = by_final.get(fkey, 0.0) + count
        elif outcome == "cancelled":
            cancelled.add_metric([queue, name], count)
        else:
            finished.add_metric([queue, name], count)
        if outcome == "unknown":
            continue  # never ran: no duration
        cumulative, buckets = 0.0, []
        for bound, in_bucket in zip(BUCKETS, row):
            cumulative += in_bucket
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        hist.add_metric([queue, name, outcome], buckets, row[-1])
    for (queue, name, final), count in sorted(by_final.items()):
        failed.add_metric([queue, name, final], count)
    yield finished
    yield failed
    yield cancelled
    yield hist


def _oldest_ready_age(queue: Queue, name: str, now_ms: int) -> float:
    """Seconds the oldest ready task of ``name`` has waited since its
    ``run_at``, judged from the queue's first waiting tasks by id (0 when
    none of them is ready)."""
    page = queue._store.list_tasks(queue=name, status="queued", limit=_OLDEST_PAGE)
    ready = [t.run_at for t in page if t.run_at <= now_ms]
    return max(0.0, (now_ms - min(ready)) / 1000) if ready else 0.0


def _store_families(queue: Queue) -> Iterator[Metric]:
    up = GaugeMetricFamily("ferroq_store_up", "1 when the store answered this scrape, else 0.")
    try:
        stats = queue.stats()
        workers = queue.workers()
        now_ms = queue._store.now_ms()
        ages = {
            name: _oldest_ready_age(queue, name, now_ms)
            for name, counts in stats.items()
            if counts.get("queued")
        }
    except (FerroqError, OSError):
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    depth = GaugeMetricFamily(
        "ferroq_queue_tasks", "Tasks in the store, by queue and status.",
        labels=["queue", "status"],
    )
    for name, counts in sorted(stats.items()):
        for status, n in counts.items():
            depth.add_metric([name, status], n)
    yield depth
    oldest = GaugeMetricFamily(
        "ferroq_queue_oldest_ready_age_seconds",
        "How long the oldest ready task of each queue has waited to start (0 when none).",
        labels=["queue"],
    )
    for name in sorted(stats):
        oldest.add_metric([name], ages.get(name, 0.0))
    yield oldest
    alive = [w for w in workers if now_ms - w.heartbeat_ms <= _STALE_AFTER_MS]
    total = GaugeMetricFamily(
        "ferroq_workers_alive", "Workers (schedulers) with a recent heartbeat in the store."
    )
    total.add_metric([], len(alive))
    yield total
    serving: dict[str, int] = {}
    for w in alive:
        for name in w.queues:
            serving[name] = serving.get(name, 0) + 1
    per_queue = GaugeMetricFamily(
        "ferroq_queue_workers", "Workers alive that serve each queue.", labels=["queue"]
    )
    for name in sorted(set(serving) | set(stats)):
        per_queue.add_metric([name], serving.get(name, 0))
    yield per_queue


class _FerroqCollector(Collector):
    """Store-wide gauges of ``queue`` (read on each scrape) and this
    process's worker counters and histograms."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now."""
        yield from _worker_families()
        yield from _store_families(self.queue)

    def describe(self) -> Iterator[Metric]:
        """Nothing: describing would scrape the store at registration."""
        return iter(())


def collector(queue: Queue) -> Collector:
    """A collector of every ferroq metric for ``queue``, to register in a
    registry of your own (``prometheus_client.REGISTRY.register(...)``).
    Turns worker metrics on (:func:`enable`)."""
    enable()
    return _FerroqCollector(queue)


def _registry(queue: Queue) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector(queue))
    return registry


def render(queue: Queue) -> tuple[bytes, str]:
    """Every ferroq metric for ``queue`` in the Prometheus text format, and
    its content type: ``(body, content_type)`` for an HTTP response."""
    return generate_latest(_registry(queue)), CONTENT_TYPE_LATEST


class MetricsServer:
    """A running metrics endpoint (:func:`start_http_server`)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        #: The host and port it listens on (the port the system chose, for port 0).
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        """Where to scrape it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stops serving and frees the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    shutdown = close

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_http_server(queue: Queue, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serves every ferroq metric for ``queue`` at ``http://host:port/metrics``
    from a background thread (port 0: any free port, see
    :attr:`MetricsServer.port`). Binds to localhost unless told otherwise.
    Returns the server; :meth:`MetricsServer.close` stops it. Raises
    :class:`~ferroq.InvalidArgumentError` for a port it cannot listen on."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be an int from 0 to 65535, got {port!r}")
    try:
        server, thread = _start_http_server(port, addr=host, registry=_registry(queue))
    except OSError as e:  # in use, not an address of this host, no permission
        raise InvalidArgumentError(f"cannot serve metrics on {host}:{port}: {e}") from e
    return MetricsServer(server, thread)
