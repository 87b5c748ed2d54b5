"""Prometheus metrics: a real worker process serving its endpoint over
HTTP, scraped and parsed with prometheus_client's own text parser; the same
metrics rendered in-process on every backend."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import PG_URL, needs_pg, pg_url, python_env, wait_for
from ferroq import Backoff, InvalidArgumentError, Queue, QueueScheduler, metrics, task

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# The tasks both sides know; "ghost" is registered here only, so the worker
# meets a task it does not know.
TASKS = textwrap.dedent(
    """
    from ferroq import Backoff, task

    @task(name="metrics.ok", queue="metrics")
    def ok(i: int) -> int:
        return i

    @task(name="metrics.boom", queue="metrics", retries=1, backoff=Backoff.fixed(0))
    def boom(i: int) -> int:
        raise ValueError(f"boom {i}")
    """
)

WORKER = textwrap.dedent(
    """
    import sys
    from ferroq import Queue, QueueScheduler, logs, metrics

    sys.path.insert(0, sys.argv[2])
    import metrics_tasks  # noqa: F401  (registers the tasks)

    logs.configure("INFO", "json")
    q = Queue(sys.argv[1])
    server = metrics.start_http_server(q, 0)
    print(server.port, flush=True)
    QueueScheduler(q, concurrency=2, queues=["metrics"]).run_forever(grace=1)
    server.close()
    q.close()
    """
)


@task(name="metrics_ghost:run", queue="metrics")
def ghost() -> None:
    """Registered in the test process only."""


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = resp.read().decode()
    return parse(body)


def parse(body: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(params=["sqlite-1", pytest.param("postgres", marks=needs_pg)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        assert PG_URL
        return pg_url()
    return f"sqlite://{tmp_path}/store"


@pytest.fixture
def tasks_module(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "mod"
    folder.mkdir()
    (folder / "metrics_tasks.py").write_text(TASKS)
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))


def test_a_worker_serves_its_metrics_over_http(
    tmp_path: Path, shared_url: str, tasks_module: Path
) -> None:
    import metrics_tasks  # type: ignore[import-not-found]

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, shared_url, str(tasks_module)],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        port = int(worker.stdout.readline())
        url = f"http://127.0.0.1:{port}/metrics"
        with Queue(shared_url) as q:
            for i in range(5):
                q.send(metrics_tasks.ok, i)
            for i in range(2):
                q.send(metrics_tasks.boom, i)
            q.send(ghost)
            # Waiting an hour already, in a queue no worker serves.
            q.send(ghost.options(queue="metrics-idle", run_at=datetime.now(timezone.utc)
                                 - timedelta(hours=1)))
            wait_for(
                lambda: value(scrape(url), "ferroq_tasks_failed_total", queue="metrics",
                              task="metrics_ghost:run", final="true") == 1
                and value(scrape(url), "ferroq_tasks_finished_total", queue="metrics",
                          task="metrics.ok") == 5
                and value(scrape(url), "ferroq_tasks_failed_total", queue="metrics",
                          task="metrics.boom", final="true") == 2,
                60,
                "the worker to count every task",
            )
            got = scrape(url)
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
    ok = {"queue": "metrics", "task": "metrics.ok"}
    boom = {"queue": "metrics", "task": "metrics.boom"}
    assert value(got, "ferroq_tasks_started_total", **ok) == 5
    assert value(got, "ferroq_tasks_started_total", **boom) == 4  # two attempts each
    assert value(got, "ferroq_tasks_failed_total", **boom, final="false") == 2
    assert value(got, "ferroq_tasks_finished_total", **boom) == 0
    # The ghost never started: a final failure with no duration observed.
    assert value(got, "ferroq_tasks_started_total", queue="metrics", task="metrics_ghost:run") == 0
    # Histograms: counts per outcome, cumulative buckets ending at the count.
    assert value(got, "ferroq_task_duration_seconds_count", **ok, outcome="done") == 5
    assert value(got, "ferroq_task_duration_seconds_count", **boom, outcome="retried") == 2
    assert value(got, "ferroq_task_duration_seconds_count", **boom, outcome="failed") == 2
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in got.items()
        if name == "ferroq_task_duration_seconds_bucket"
        and dict(labels).get("task") == "metrics.ok"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), 5)
    assert value(got, "ferroq_task_duration_seconds_sum", **ok, outcome="done") > 0
    # Store-wide gauges, read at the scrape.
    assert value(got, "ferroq_store_up") == 1
    assert value(got, "ferroq_queue_tasks", queue="metrics", status="done") == 5
    assert value(got, "ferroq_queue_tasks", queue="metrics", status="failed") == 3
    assert value(got, "ferroq_queue_tasks", queue="metrics-idle", status="queued") == 1
    assert value(got, "ferroq_workers_alive") == 1
    assert value(got, "ferroq_queue_workers", queue="metrics") == 1
    assert value(got, "ferroq_queue_workers", queue="metrics-idle") == 0
    age = value(got, "ferroq_queue_oldest_ready_age_seconds", queue="metrics-idle")
    assert 3500 < age < 4000
    assert value(got, "ferroq_queue_oldest_ready_age_seconds", queue="metrics") == 0
    # Its log (JSON lines, from logs.configure) named the module to import.
    assert "no task named 'metrics_ghost:run'" in err and "import 'metrics_ghost'" in err


def test_render_on_every_backend(queue: Queue) -> None:
    name = f"m{uuid.uuid4().hex[:8]}"  # metrics are per process: count our own queue only

    @queue.task(name=f"{name}.ok", queue=name)
    def ok(i: int) -> int:
        return i

    @queue.task(name=f"{name}.bad", queue=name, retries=0, backoff=Backoff.fixed(0))
    def bad() -> None:
        raise RuntimeError("bad")

    metrics.enable()
    handles = [ok.send(i) for i in range(3)] + [bad.send()]
    with QueueScheduler(queue, queues=[name]):
        wait_for(
            lambda: all(h.status() in ("done", "failed") for h in handles)
            and value(parse(metrics.render(queue)[0].decode()), "ferroq_tasks_failed_total",
                      queue=name, task=f"{name}.bad", final="true") == 1
            and value(parse(metrics.render(queue)[0].decode()), "ferroq_tasks_finished_total",
                      queue=name, task=f"{name}.ok") == 3,
            30,
            "the tasks to finish",
        )
    body, content_type = metrics.render(queue)
    assert content_type.startswith("text/plain")
    got = parse(body.decode())
    assert value(got, "ferroq_tasks_started_total", queue=name, task=f"{name}.ok") == 3
    assert value(got, "ferroq_queue_tasks", queue=name, status="done") == 3
    assert value(got, "ferroq_queue_tasks", queue=name, status="failed") == 1
    assert value(got, "ferroq_store_up") == 1


def test_a_closed_store_scrapes_as_down(tmp_path: Path) -> None:
    q = Queue(f"sqlite://{tmp_path}/s")
    q.close()
    got = parse(metrics.render(q)[0].decode())
    assert value(got, "ferroq_store_up") == 0


def test_the_endpoint_refuses_bad_ports(tmp_path: Path) -> None:
    with Queue(f"sqlite://{tmp_path}/s") as q:
        with pytest.raises(InvalidArgumentError):
            metrics.start_http_server(q, -1)
        with pytest.raises(InvalidArgumentError):
            metrics.start_http_server(q, True)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            with pytest.raises(InvalidArgumentError, match="cannot serve metrics"):
                metrics.start_http_server(q, taken.getsockname()[1])
        finally:
            taken.close()
        with metrics.start_http_server(q, 0) as server:
            assert server.url == f"http://127.0.0.1:{server.port}/metrics"
            assert value(scrape(server.url), "ferroq_store_up") == 1
