"""Scale-out figures (issue 19): shards and worker processes that add speed,
quiet when idle, cheap under a trickle. Every figure is checked: a drain
counts the tasks done and compares each result with its input; senders count
what was stored. The machine is shared, so variants alternate within one run,
load averages are printed beside each figure, and CPU-seconds per task (of
the worker processes, from /proc) sit beside the wall-clock rates.

    python benches/python/scale.py [--tasks 100000] [--rounds 3] [--only drain,idle,trickle,senders]

* drain: N no-op tasks prefilled into a paused queue; ``ferroq worker -c 4``
  (1 or 2 processes) started and idle; the queue resumed and timed until
  nothing is unfinished. Variants: 1 shard x 1 process, 4 shards x 1 process,
  2 shards x 2 processes.
* idle: CPU of a ``ferroq worker`` on an empty store over 10 s.
* trickle: another process sends 1,000 tasks/s for some seconds; the worker's
  CPU per task, against its CPU per task draining a backlog.
* senders: N single ``send`` calls from 1 thread, then from 4 threads.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from basics import noop  # registers bench.noop, the no-op task workers run
from procstat import cpu_seconds, load, tree

from ferroq import Queue

HERE = Path(__file__).resolve().parent


def start_worker(url: str, processes: int, batch_wait: float = 0.0) -> subprocess.Popen[bytes]:
    """``ferroq worker basics -c 4 --processes P [--batch-wait S]`` on ``url``."""
    return subprocess.Popen(
        [sys.executable, "-m", "ferroq", "worker", "basics", "--url", url, "-c", "4",
         "--processes", str(processes), "--log-level", "warning",
         "--batch-wait", str(batch_wait)],
        cwd=HERE,
    )


def stop_worker(p: subprocess.Popen[bytes]) -> None:
    """Stops a worker gracefully and waits for it."""
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def settle(p: subprocess.Popen[bytes], processes: int) -> None:
    """Waits until the worker's processes are up and idle."""
    deadline = time.monotonic() + 60
    while len(tree(p.pid)) < 1 + (processes if processes > 1 else 0):
        if p.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("worker did not start")
        time.sleep(0.1)
    time.sleep(2.5)  # imports done, loops waiting


def check_done(q: Queue, n: int) -> bool:
    """Every one of the ``n`` tasks is done with its input as its result."""
    done, after = [], None
    while True:
        page = q._store.list_tasks(status="done", after_id=after, limit=50_000)
        if not page:
            break
        done += page
        after = page[-1].id
    return len(done) == n and all(t.result == b"J%d" % int(t.payload[3:-5]) for t in done)


def prefill(q: Queue, n: int) -> None:
    """``n`` no-op tasks into the default queue (paused first)."""
    q.pause("default")
    for start in range(0, n, 10_000):
        chunk = range(start, min(n, start + 10_000))
        q._store.enqueue_many("default", "bench.noop", [b"J[[%d],{}]" % i for i in chunk])


def drain(base: str, n: int, shards: int, processes: int) -> tuple[float, float, bool]:
    """(tasks/s, worker CPU-ms per task, check) of one drain."""
    url = f"sqlite://{base}/{uuid.uuid4().hex}?shards={shards}"
    with Queue(url) as q:
        prefill(q, n)
        w = start_worker(url, processes)
        try:
            settle(w, processes)
            c0 = cpu_seconds(w.pid)
            t0 = time.perf_counter()
            q.resume("default")
            while q._store.unfinished("default"):
                time.sleep(0.005)
            dt = time.perf_counter() - t0
            cpu = cpu_seconds(w.pid) - c0
        finally:
            stop_worker(w)
        return n / dt, 1000 * cpu / n, check_done(q, n)


def bench_drain(base: str, n: int, rounds: int) -> dict[str, float]:
    """The drain variants, alternated; prints medians and ratios."""
    variants = [(1, 1), (4, 1), (2, 2)]
    rates: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    cpus: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for shards, procs in variants:
            rate, cpu, ok = drain(base, n, shards, procs)
            if not ok:
                raise SystemExit(f"drain on {shards} shard(s) x {procs} process(es) FAILED")
            rates[(shards, procs)].append(rate)
            cpus[(shards, procs)].append(cpu)
            print(f"  drain {n} on {shards} shard(s) x {procs} process(es): {rate:>9,.0f} tasks/s"
                  f"  {cpu:.3f} CPU-ms/task  check=ok  {load()}", flush=True)
    med = {v: statistics.median(rates[v]) for v in variants}
    cpu_med = {v: statistics.median(cpus[v]) for v in variants}
    print(f"drain {n} no-op tasks, ferroq worker -c 4, medians of {rounds} alternated rounds:")
    for v in variants:
        print(f"  {v[0]} shard(s) x {v[1]} process(es): {med[v]:>9,.0f} tasks/s"
              f"  {cpu_med[v]:.3f} CPU-ms/task")
    four, two = med[(4, 1)] / med[(1, 1)], med[(2, 2)] / med[(1, 1)]
    print(f"  4 shards / 1 shard, one process:        {four:.2f}x  (goal >= 0.95)")
    print(f"  2 processes on 2 shards / 1 on 1 shard: {two:.2f}x  (goal >= 1.7)")
    return {"backlog_cpu_ms_1": cpu_med[(1, 1)], "backlog_cpu_ms_4": cpu_med[(4, 1)]}


def bench_idle(base: str, seconds: float) -> None:
    """CPU of an idle worker (1 and 4 shards)."""
    for shards in (1, 4):
        url = f"sqlite://{base}/{uuid.uuid4().hex}?shards={shards}"
        w = start_worker(url, 1)
        try:
            settle(w, 1)
            c0, t0 = cpu_seconds(w.pid), time.monotonic()
            time.sleep(seconds)
            share = (cpu_seconds(w.pid) - c0) / (time.monotonic() - t0)
            with Queue(url) as q:
                ok = q._store.unfinished("default") == 0  # nothing invented while idle
        finally:
            stop_worker(w)
        print(f"idle worker, {shards} shard(s), {seconds:.0f} s: {100 * share:.2f}% of a core"
              f"  (goal <= 0.5%)  check={'ok' if ok else 'FAILED'}  {load()}", flush=True)


def send_trickle(url: str, n: int, rate: float) -> None:
    """(In a child process) sends ``n`` no-op tasks at ``rate`` per second."""
    with Queue(url) as q:
        t0 = time.perf_counter()
        for i in range(n):
            pause = t0 + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            q.send(noop, i)


def bench_trickle(
    base: str, n: int, rate: float, backlog: dict[str, float], waits: list[float]
) -> None:
    """Worker CPU per task under a steady trickle, against a backlog drain:
    claiming at once (the default) and with each ``--batch-wait`` of ``waits``."""
    for shards, batch_wait in [(s, w) for s in (1, 4) for w in waits]:
        url = f"sqlite://{base}/{uuid.uuid4().hex}?shards={shards}"
        w = start_worker(url, 1, batch_wait)
        try:
            settle(w, 1)
            c0 = cpu_seconds(w.pid)
            subprocess.run(
                [sys.executable, __file__, "--send-trickle", url, str(n), str(rate)],
                cwd=HERE, check=True,
            )
            with Queue(url) as q:
                deadline = time.monotonic() + 60
                while q._store.unfinished("default") and time.monotonic() < deadline:
                    time.sleep(0.005)
                cpu = cpu_seconds(w.pid) - c0
                ok = check_done(q, n)
        finally:
            stop_worker(w)
        per = 1000 * cpu / n
        ref = backlog.get(f"backlog_cpu_ms_{shards}")
        vs = f"  {per / ref:.2f}x the backlog drain's {ref:.3f} (goal <= 2x)" if ref else ""
        check = "ok" if ok else "FAILED"
        how = f"--batch-wait {batch_wait:g}" if batch_wait else "claims at once"
        print(f"trickle {n} tasks at {rate:.0f}/s from another process, {shards} shard(s), {how}: "
              f"{per:.3f} worker CPU-ms/task{vs}  check={check}  {load()}", flush=True)


def send_threads(url: str, n: int, threads: int) -> tuple[float, bool]:
    """(sends/s, check) of ``n`` single sends split over ``threads`` threads."""
    with Queue(url) as q:
        each = n // threads

        def run(k: int) -> None:
            for i in range(k * each, (k + 1) * each):
                q.send(noop, i)

        ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        return each * threads / dt, q._store.unfinished("default") == each * threads


def bench_senders(base: str, n: int, rounds: int) -> None:
    """Single sends from 1 thread and from 4, alternated."""
    rates: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(rounds):
        for threads in (1, 4):
            url = f"sqlite://{base}/{uuid.uuid4().hex}?shards=1"
            rate, ok = send_threads(url, n, threads)
            if not ok:
                raise SystemExit(f"sends from {threads} thread(s) FAILED their check")
            rates[threads].append(rate)
    one, four = statistics.median(rates[1]), statistics.median(rates[4])
    print(f"senders: {n} single sends, 1 thread {one:,.0f}/s, 4 threads {four:,.0f}/s: "
          f"{four / one:.2f}x (goal >= 1)  check=ok  {load()}", flush=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--send-trickle":
        send_trickle(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--trickle", type=int, default=5_000, help="tasks sent at --rate")
    ap.add_argument("--rate", type=float, default=1_000.0)
    ap.add_argument("--sends", type=int, default=20_000)
    ap.add_argument("--batch-waits", default="0,0.01,0.02",
                    help="worker --batch-wait values the trickle runs with")
    ap.add_argument("--only", default="drain,idle,trickle,senders")
    a = ap.parse_args()
    only = set(a.only.split(","))
    with tempfile.TemporaryDirectory() as base:
        backlog: dict[str, float] = {}
        if "drain" in only:
            backlog = bench_drain(base, a.tasks, a.rounds)
        if "idle" in only:
            bench_idle(base, a.idle_seconds)
        if "trickle" in only:
            waits = [float(w) for w in a.batch_waits.split(",")]
            bench_trickle(base, a.trickle, a.rate, backlog, waits)
        if "senders" in only:
            bench_senders(base, a.sends, a.rounds)


if __name__ == "__main__":
    main()
