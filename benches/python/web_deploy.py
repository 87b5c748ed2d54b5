"""The web deployment of issue 19, measured: a FastAPI app under uvicorn
with 2 processes, each ``POST /jobs`` sending one task to a ferroq store,
2 ``ferroq worker -c 4`` processes draining it, all on this machine, loaded
by wrk with 64 connections (``web_app.py`` is the app, ``web_post.lua``
wrk's script). Goal: >= 3,000 POST/s with p99 <= 50 ms, every task done
once.

    ./scripts/bench --web [--seconds 15] [--rounds 1]   # installs fastapi, uvicorn, wrk
    python benches/python/web_deploy.py [--seconds 15] [--rounds 1] [--only a,b,c,d]

Variants, alternated within one run (``--rounds`` times each):

* a: 4 shards, the 2 workers running during the load;
* b: 1 shard, the 2 workers running during the load;
* c: 4 shards, no worker during the load (started after it, to drain);
* d: the work done inline in the request, no queue (the reference);
* e (only with ``--only``): as a, from an ``async def`` endpoint that
  awaits ``double.asend(n)``.

Every result is checked once the store has nothing unfinished: the tasks
stored number at least the 2xx answers wrk counted (plus the warm-up
requests) and at most that plus the connections (requests still in flight
when wrk stops are not counted by wrk but may have been stored), each
request's argument appears once, and every task is ``done`` after one
attempt with ``2 * n`` as its result. Beside each figure: CPU-seconds used
by the uvicorn processes, the worker processes and wrk during the load
(from /proc), what the rest of the machine used (the kernel's network
work, anything else running), its idle share, and the load average. The
machine is shared (2 cores here for everything): compare the variants of
one run.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from procstat import TICK, cpu_seconds, load

from ferroq import Queue

HERE = Path(__file__).resolve().parent
LUA = HERE / "web_post.lua"
WARMUP = 20  # POSTs each uvicorn process answers before the load (counted in the check)


@dataclass(frozen=True)
class Variant:
    """One deployment to measure."""

    key: str
    label: str
    shards: int  # 0: no store (inline)
    workers: str  # "during", "after" or "none"
    route: str


VARIANTS = {
    "a": Variant("a", "4 shards, 2 workers", 4, "during", "/jobs"),
    "b": Variant("b", "1 shard, 2 workers", 1, "during", "/jobs"),
    "c": Variant("c", "4 shards, no worker", 4, "after", "/jobs"),
    "d": Variant("d", "inline, no queue", 0, "none", "/inline"),
    "e": Variant("e", "4 shards, 2 workers, asend", 4, "during", "/jobs-async"),
}


@dataclass
class Result:
    """What one run of a variant measured."""

    rate: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    requests: int = 0
    non2xx: int = 0
    socket_errors: int = 0
    uvicorn_cpu: float = 0.0
    worker_cpu: float = 0.0
    wrk_cpu: float = 0.0
    idle: float = 0.0
    other_cpu: float = 0.0
    drain_s: float = 0.0
    drain_cpu: float = 0.0
    stored: int = 0
    check: str = "FAILED"
    notes: list[str] = field(default_factory=list)


# -- processes ---------------------------------------------------------------

_live: list[subprocess.Popen[bytes]] = []


def machine_times() -> tuple[float, float]:
    """(busy, idle) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4]  # idle + iowait
    return float(sum(cpu[:8]) - idle), float(idle)


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Starts ``cmd`` in its own session (so Ctrl+C reaches only us and the
    cleanup stops it), remembered for :func:`stop`."""
    p = subprocess.Popen(cmd, cwd=HERE, env=env, start_new_session=True)
    _live.append(p)
    return p


def stop(p: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM (a graceful stop for uvicorn and ferroq worker), then SIGKILL
    to the process group if it has not ended within ``grace`` seconds."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    if p in _live:
        _live.remove(p)


def stop_all() -> None:
    """Stops every process this script started and has not stopped yet."""
    for p in list(_live):
        stop(p)


def free_port() -> int:
    """A port nobody listens on now (the kernel picks it, away from the usual ones)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(url: str) -> dict[str, str]:
    """The environment of the app and the workers: the store's URL, this
    directory importable, no output buffering."""
    env = dict(os.environ)
    env["FERROQ_WEB_URL"] = url
    paths = [str(HERE), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_workers(url: str, processes: int, concurrency: int) -> subprocess.Popen[bytes]:
    """``ferroq worker web_app -c C --processes P`` on ``url``; returns once
    all P schedulers have registered in the store."""
    w = spawn(
        [
            sys.executable,
            "-m",
            "ferroq",
            "worker",
            "web_app",
            "--url",
            url,
            "-c",
            str(concurrency),
            "--processes",
            str(processes),
            "--log-level",
            "warning",
        ],
        child_env(url),
    )
    deadline = time.monotonic() + 60
    with Queue(url) as q:
        while len(q.workers()) < processes:
            if w.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the workers did not start")
            time.sleep(0.1)
    time.sleep(0.5)  # loops waiting for work
    return w


def request(port: int, method: str, path: str, body: Optional[dict[str, int]] = None) -> dict:
    """One request on a new connection; the decoded JSON answer (raises
    unless it is a 2xx)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        text = r.read()
        if not 200 <= r.status < 300:
            raise RuntimeError(f"{method} {path}: {r.status} {text[:200]!r}")
        return dict(json.loads(text))
    finally:
        conn.close()


def start_app(url: str, port: int, senders: int) -> subprocess.Popen[bytes]:
    """uvicorn serving ``web_app:app`` with ``senders`` processes; returns
    once each process has answered (``/health`` gives its pid)."""
    u = spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "web_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(senders),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        child_env(url),
    )
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while len(seen) < senders:
        if u.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"uvicorn did not start ({len(seen)} of {senders} answered)")
        try:
            seen.add(int(request(port, "GET", "/health")["pid"]))
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.1)
    return u


def warm_up(port: int, route: str) -> int:
    """POSTs ``WARMUP`` requests per sender process, each on a new connection
    (so both processes get some), with negative arguments; returns how many."""
    n = WARMUP * 2
    for i in range(1, n + 1):
        request(port, "POST", route, {"n": -i})
    return n


# -- wrk -------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def millis(text: str) -> float:
    """wrk's ``18.65ms`` / ``1.02s`` / ``850.00us`` in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unreadable wrk time {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(port: int, route: str, seconds: float, threads: int, conns: int) -> tuple[str, float]:
    """Runs wrk; (its output, its CPU-seconds)."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(
            [
                "wrk",
                f"-t{threads}",
                f"-c{conns}",
                f"-d{seconds:g}s",
                "--latency",
                "-s",
                str(LUA),
                f"http://127.0.0.1:{port}{route}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            p.wait()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"wrk failed ({p.returncode}):\n{text}")
    return text, usage.ru_utime + usage.ru_stime


def parse_wrk(text: str, r: Result) -> None:
    """Fills ``r`` from wrk's report: Requests/sec, the 50% and 99%
    latencies, requests done, non-2xx answers and socket errors."""
    r.rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    r.p50 = millis(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    r.p99 = millis(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    r.requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    r.non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r.socket_errors = sum(int(x) for x in m.groups()) if m else 0


# -- one variant -------------------------------------------------------------------


def wait_finished(q: Queue, timeout: float) -> bool:
    """Waits until the store has no queued or running task; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        counts = q.stats().get("default", {})
        if not counts.get("queued", 0) + counts.get("running", 0):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def check_store(q: Queue, low: int, high: int, r: Result) -> None:
    """Every stored task: done, one attempt, result 2*n, n never repeated;
    as many as ``low``..``high``. Sets ``r.stored`` and ``r.check``."""
    seen: set[int] = set()
    bad: list[str] = []
    after: Optional[int] = None
    while True:
        page = q.list(after_id=after, limit=10_000)
        if not page:
            break
        after = page[-1].id
        for t in page:
            n = t.args[0]
            if n in seen:
                bad.append(f"argument {n} stored twice")
            seen.add(n)
            if t.status != "done" or t.attempts != 1 or t.result != 2 * n:
                bad.append(
                    f"task {t.id}: {t.status}, {t.attempts} attempt(s), {t.result!r} for n={n}"
                )
    r.stored = len(seen)
    if not low <= r.stored <= high:
        bad.append(f"{r.stored} tasks stored, expected {low}..{high}")
    r.notes += bad[:5]
    r.check = "ok" if not bad else "FAILED"


def run_variant(v: Variant, base: str, a: argparse.Namespace) -> Result:
    """Starts the deployment of ``v``, loads it with wrk, drains and checks."""
    r = Result()
    url = f"sqlite://{base}/{uuid.uuid4().hex}?shards={max(v.shards, 1)}"
    Queue(url).close()  # created once, before several processes open it
    port = free_port()
    app = workers = None
    try:
        if v.workers == "during":
            workers = start_workers(url, a.workers, a.concurrency)
        app = start_app(url, port, a.senders)
        warm = warm_up(port, v.route)
        u0 = cpu_seconds(app.pid)
        w0 = cpu_seconds(workers.pid) if workers else 0.0
        busy0, idle0 = machine_times()
        text, r.wrk_cpu = run_wrk(port, v.route, a.seconds, a.threads, a.connections)
        busy1, idle1 = machine_times()
        r.uvicorn_cpu = cpu_seconds(app.pid) - u0
        r.worker_cpu = (cpu_seconds(workers.pid) - w0) if workers else 0.0
        r.idle = (idle1 - idle0) / max(busy1 - busy0 + idle1 - idle0, 1.0)
        r.other_cpu = (busy1 - busy0) / TICK - r.uvicorn_cpu - r.worker_cpu - r.wrk_cpu
        parse_wrk(text, r)
        if a.verbose:
            print(text, flush=True)
        stop(app)
        app = None
        if r.non2xx:
            r.notes.append(f"{r.non2xx} non-2xx answers")
        if r.socket_errors:
            r.notes.append(f"{r.socket_errors} socket errors")
        if v.shards == 0:
            r.check = "ok" if not r.non2xx and not r.socket_errors else "FAILED"
            return r
        with Queue(url) as q:
            if workers is None:  # c: the backlog drained by workers started now
                q.pause("default")
                workers = start_workers(url, a.workers, a.concurrency)
                w0 = cpu_seconds(workers.pid)
                q.resume("default")
            t0 = time.monotonic()
            if not wait_finished(q, a.drain_timeout):
                r.notes.append(f"tasks still unfinished after {a.drain_timeout:g} s")
            r.drain_s = time.monotonic() - t0
            if v.workers == "after":
                r.drain_cpu = cpu_seconds(workers.pid) - w0
            ok = r.requests - r.non2xx + warm
            check_store(q, ok, ok + a.connections + r.socket_errors, r)
            if r.non2xx:
                r.check = "FAILED"
        r.notes.insert(0, f"stored {r.stored}, wrk 2xx {ok - warm} + warm-up {warm}")
        return r
    finally:
        for p in (app, workers):
            if p is not None:
                stop(p)


# -- the run -------------------------------------------------------------------------


def print_result(v: Variant, r: Result) -> None:
    """One line per measurement, as it comes, and what was checked."""
    per_post = 1000 * r.uvicorn_cpu / max(r.requests, 1)
    print(
        f"  {v.key}: {v.label:<27} {r.rate:>7,.0f} POST/s  p50 {r.p50:6.1f} ms"
        f"  p99 {r.p99:6.1f} ms  check={r.check}  {load()}",
        flush=True,
    )
    print(
        f"       CPU-s during the load: uvicorn {r.uvicorn_cpu:.1f} ({per_post:.2f} ms/POST),"
        f" workers {r.worker_cpu:.1f}, wrk {r.wrk_cpu:.1f}, the rest of the machine"
        f" {max(r.other_cpu, 0.0):.1f} (kernel, other processes); idle {100 * r.idle:.0f}%",
        flush=True,
    )
    if v.workers == "after" and r.drain_s:
        print(
            f"       backlog drained after the load: {r.stored / r.drain_s:,.0f} tasks/s,"
            f" {1000 * r.drain_cpu / max(r.stored, 1):.3f} worker CPU-ms/task",
            flush=True,
        )
    elif v.workers == "during":
        print(
            f"       workers {1000 * r.worker_cpu / max(r.requests, 1):.3f} CPU-ms/task;"
            f" left unfinished when wrk stopped: drained {r.drain_s:.2f} s later",
            flush=True,
        )
    for note in r.notes:
        print(f"       {note}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="wrk's duration per run")
    ap.add_argument("--rounds", type=int, default=1, help="times each variant runs, alternated")
    ap.add_argument("--only", default="a,b,c,d", help="variants to run (a,b,c,d,e)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--senders", type=int, default=2, help="uvicorn processes")
    ap.add_argument("--workers", type=int, default=2, help="ferroq worker --processes")
    ap.add_argument("--concurrency", type=int, default=4, help="ferroq worker -c")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--verbose", action="store_true", help="print wrk's reports")
    a = ap.parse_args()
    variants = [VARIANTS[k.strip()] for k in a.only.split(",") if k.strip()]
    framework = "fastapi" if importlib.util.find_spec("fastapi") else "starlette"
    extras = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m)]
    print(
        f"web deployment: {framework} under uvicorn --workers {a.senders}"
        f" ({', '.join(extras) or 'asyncio, h11'}), ferroq worker -c {a.concurrency}"
        f" --processes {a.workers}, wrk -t{a.threads} -c{a.connections} -d{a.seconds:g}s;"
        f" {os.cpu_count()} cores  {load()}",
        flush=True,
    )
    if framework != "fastapi":
        print("  (FastAPI is not installed: plain Starlette serves the same routes)")
    results: dict[str, list[Result]] = {v.key: [] for v in variants}
    with tempfile.TemporaryDirectory() as base:
        for _ in range(a.rounds):
            for v in variants:
                r = run_variant(v, base, a)
                results[v.key].append(r)
                print_result(v, r)
    print(
        f"medians of {a.rounds} alternated round(s); goal (a): >= 3,000 POST/s,"
        " p99 <= 50 ms, every task done once"
    )
    print(
        f"  {'variant':<30} {'POST/s':>7}  {'p50 ms':>6}  {'p99 ms':>6}  {'uvicorn':>7}"
        f"  {'workers':>7}  check"
    )
    for v in variants:
        rs = results[v.key]
        med = {
            k: statistics.median(getattr(r, k) for r in rs)
            for k in ("rate", "p50", "p99", "uvicorn_cpu", "worker_cpu")
        }
        check = "ok" if all(r.check == "ok" for r in rs) else "FAILED"
        goal = ""
        if v.workers == "during":
            met = med["rate"] >= 3000 and med["p99"] <= 50 and check == "ok"
            goal = "  goal met" if met else "  goal NOT met"
        print(
            f"  {v.key}: {v.label:<27} {med['rate']:>7,.0f}  {med['p50']:6.1f}  "
            f"{med['p99']:6.1f}  {med['uvicorn_cpu']:6.1f}s  {med['worker_cpu']:6.1f}s"
            f"  {check}{goal}"
        )
    if any(r.check != "ok" for rs in results.values() for r in rs):
        raise SystemExit(1)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: stop like Ctrl+C, through the cleanup."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        stop_all()
