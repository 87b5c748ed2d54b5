"""What exporting Prometheus metrics costs a worker: the W2 drain (N
prefilled no-op tasks, a scheduler with 4 threads in this process) with
metrics off, and with metrics on — the per-attempt counters and histograms
kept, the endpoint served by ``ferroq.metrics.start_http_server`` and
scraped every ``--scrape`` seconds during the drain (Prometheus itself
scrapes every 15-60 s: this is harsher). Alternated in one run, each mode
first in every other round; every drain is checked (each task done, each
result its input), and the scraped counters must add up to the tasks
drained. Printed: tasks/s, and the CPU time of this process per task (the
steadier figure when other processes share the machine), both as medians,
and the CPU time the metrics code adds to one attempt, timed alone.

With ``--logs``, a third drain is alternated with them: metrics off, and
the INFO line per task written as JSON (to /dev/null), which is what
``ferroq worker`` does by default.

    python benches/python/metrics_cost.py [--tasks 20000] [--rounds 5] [--shards 1] [--logs]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from basics import noop  # noqa: F401  (registers bench.noop, the W2 task)
from prometheus_client.parser import text_string_to_metric_families

from ferroq import Queue, QueueScheduler, logs, metrics
from ferroq.scheduler import _state
from ferroq.scheduler.task_loop import log_attempt


def counter(body: str, family: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == family and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def drain(
    url: str, n: int, exporting: bool, scrape_every: float
) -> tuple[float, float, int, float]:
    """(tasks/s, CPU microseconds of this process per task, scrapes made,
    tasks the last scrape counted) for one drain. CPU time is the steadier
    figure on a shared machine: other processes slow the wall clock, not it."""
    meter = _state.meter
    with Queue(url) as q:
        q._store.enqueue_many("default", "bench.noop", [b"J[[%d],{}]" % i for i in range(n)])
        server = metrics.start_http_server(q, 0) if exporting else None
        if not exporting:
            _state.set_meter(None)  # exactly a process that never turned metrics on
        stop = threading.Event()
        scrapes = [0]
        before = 0.0
        if server is not None:
            before = counter(urllib.request.urlopen(server.url).read().decode(),
                             "ferroq_tasks_finished_total", task="bench.noop")

            def scraper() -> None:
                while not stop.wait(scrape_every):
                    urllib.request.urlopen(server.url).read()
                    scrapes[0] += 1

            threading.Thread(target=scraper, daemon=True).start()
        t0, c0 = time.perf_counter(), time.process_time()
        with QueueScheduler(q, concurrency=4, queues=["default"]):
            while q._store.unfinished("default"):
                time.sleep(0.002)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        stop.set()
        counted = 0.0
        if server is not None:
            body = urllib.request.urlopen(server.url).read().decode()
            counted = counter(body, "ferroq_tasks_finished_total", task="bench.noop") - before
            server.close()
        _state.set_meter(meter)
        done = q._store.list_tasks(status="done", limit=n)
        ok = len(done) == n and all(t.result == b"J%d" % int(t.payload[3:-5]) for t in done)
        if not ok:
            raise SystemExit(f"drain of {url} FAILED its check")
        return n / dt, cpu / n * 1e6, scrapes[0], counted


def meter_cost_us(calls: int = 200_000) -> float:
    """CPU time (microseconds) metrics add to one attempt: what a task loop
    runs for it only because metrics are on (the meter's start and end, and
    the per-task pass over stored results, whose log level check is all a
    worker without INFO lines pays), single thread, no contention."""
    meter = _state.meter
    assert meter is not None

    class Task:  # the fields a loop reads off a claimed task
        id, name, queue, attempts, max_attempts = 1, "bench.noop", "default", 1, 1

    class State:
        worker_id = "bench"

    t, st = Task(), State()
    t0 = time.process_time()
    for _ in range(calls):
        meter.started(t.queue, t.name)
        log_attempt(st, t, "done", 0.0001)  # type: ignore[arg-type]
        meter.ended(t.queue, t.name, "done", 0.0001)
    return (time.process_time() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--scrape", type=float, default=0.25, help="seconds between scrapes")
    ap.add_argument("--logs", action="store_true", help="also drain with INFO lines per task")
    a = ap.parse_args()
    metrics.enable()
    modes = ("on", "off", "logs") if a.logs else ("on", "off")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    cpus: dict[str, list[float]] = {m: [] for m in modes}
    scrapes = 0
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives for the run
    sink.setFormatter(logs.JsonFormatter())
    task_log = logging.getLogger("ferroq.task")
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.rounds):
            # Each mode goes first as often as last: the second drain of a
            # pair runs a few percent slower whatever it is (an A/A run
            # shows it), which would otherwise be charged to one mode.
            for mode in modes if i % 2 == 0 else modes[::-1]:
                url = f"sqlite://{Path(d) / uuid.uuid4().hex}?shards={a.shards}"
                if mode == "logs":
                    task_log.addHandler(sink)
                    task_log.setLevel(logging.INFO)
                try:
                    rate, cpu, made, counted = drain(url, a.tasks, mode == "on", a.scrape)
                finally:
                    task_log.removeHandler(sink)
                    task_log.setLevel(logging.NOTSET)
                if mode == "on" and counted != a.tasks:
                    raise SystemExit(f"metrics counted {counted} tasks done, not {a.tasks}")
                scrapes += made
                rates[mode].append(rate)
                cpus[mode].append(cpu)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    per_attempt = meter_cost_us()
    print(f"drain {a.tasks} no-op tasks (W2), c=4, {a.shards} shard(s), {a.rounds} rounds "
          f"alternated; {scrapes} scrapes during the metrics drains")
    print(f"  metrics exported: {on:>9,.0f} tasks/s  {[round(r) for r in rates['on']]}")
    print(f"  metrics off     : {off:>9,.0f} tasks/s  {[round(r) for r in rates['off']]}")
    print(f"  cost of metrics: {100 * (1 - on / off):.1f}%   check=ok (every result, "
          "and the scraped count of tasks done)")
    cpu_on, cpu_off = statistics.median(cpus["on"]), statistics.median(cpus["off"])
    print(f"  CPU per task: {cpu_on:.1f} us exported, {cpu_off:.1f} us off: "
          f"cost {100 * (cpu_on / cpu_off - 1):.1f}%")
    if a.logs:
        lg = statistics.median(rates["logs"])
        cpu_lg = statistics.median(cpus["logs"])
        print(f"  CPU per task with INFO lines: {cpu_lg:.1f} us")
        print(f"  INFO line per task (JSON), metrics off: {lg:>9,.0f} tasks/s  "
              f"{[round(r) for r in rates['logs']]}  cost {100 * (1 - lg / off):.1f}%")
    print(f"  CPU that metrics add to one attempt: {per_attempt:.2f} us "
          f"({100 * per_attempt * off / 1e6:.1f}% of the time per task at the metrics-off "
          "rate)")


if __name__ == "__main__":
    main()
