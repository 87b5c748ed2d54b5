"""ferroq beside the Python queues people use today, in one run on one
machine: the same workloads on each system, every figure checked, one table
and a JSON file. Run it through ``scripts/bench`` (which installs the peers
into their own virtualenv); ``--help`` lists the options.

Workloads (payload ``{"i": i, "text": "hello world"}``; the task returns it):

* W1  send: N single sends, each durable when the call returns, from one
      thread and from 4 producer threads at once.
* W1b batch: N rows through each system's batch API (ferroq: ``enqueue_many``
      and ``enqueue_frame`` from Polars, into a 4-shard store).
* W2  drain: N tasks already queued, drained by a worker process with 4
      threads, from the moment it starts consuming until every result is
      stored; the worker's peak RSS. ferroq also drains a 4-shard store, and
      runs 2 worker processes (``QueueScheduler(processes=2)``) on 1 and on
      4 shards (variants ``4sh``, ``2p``, ``4sh+2p``).
* W3  latency: an idle worker in another process; sequential sends, each
      waiting for its result; p50 / p95 / p99.
* W4  crash: tasks that log their id and sleep 5 ms; the worker is SIGKILLed
      ~1 s in and restarted; lost and run-twice counts, and how long after
      the restart the killed worker's in-flight tasks ran again.
* W5  memory: drain N tasks; the worker's RSS at a quarter of the work and
      at the end: does it grow with the number of tasks?
* raw SQLite: ``cargo bench --bench store -- raw_sqlite`` (single-row
      commits, 1,000-row transactions, claim+complete in batches of 100).

Full sizes: W1 100k; W1b 100k and 1M; W2 20k and 100k; W3 200 sends; W4 2,000
tasks; W5 1M (the W5 task is the same echo, so its results can be checked).
Time caps per measurement: W1 20 s, W1b 120 s, W2 60 s, W3 90 s, W4 60 s
after the restart, W5 90 s. ``--quick`` shrinks both for a smoke run.

Each (workload, size, system) runs in a fresh temp dir, in a driver process
of its own (``harness.py case ...``), with workers as further subprocesses
(``harness.py worker ...``), so one system's failure or memory never leaks
into another's figures. A system too slow for a size is stopped at the
workload's time cap and its figure is the rate over what it did, marked as
capped; a failure (an exception, a wrong or missing result) shows FAILED
with the reason, and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from peers import SYSTEMS, NotSupported, Peer, load, payload  # noqa: E402

WORKLOADS = ["W1", "W1b", "W2", "W3", "W4", "W5"]

FULL_SIZES = {
    "W1": [100_000],
    "W1b": [100_000, 1_000_000],
    "W2": [20_000, 100_000],
    "W3": [200],
    "W4": [2_000],
    "W5": [1_000_000],
}
QUICK_SIZES = {
    "W1": [2_000],
    "W1b": [10_000, 50_000],
    "W2": [2_000, 5_000],
    "W3": [50],
    "W4": [1_000],
    "W5": [40_000],
}
# Seconds a system gets for one measurement before it is stopped and its
# rate taken over what it did (W4: after the restart).
FULL_CAPS = {"W1": 20.0, "W1b": 120.0, "W2": 60.0, "W3": 90.0, "W4": 60.0, "W5": 90.0}
QUICK_CAPS = {"W1": 8.0, "W1b": 30.0, "W2": 15.0, "W3": 30.0, "W4": 30.0, "W5": 20.0}

CONCURRENCY = 4
PRODUCERS = 4
RESULT_TIMEOUT = 10.0  # W3: one result not back in this long fails the row


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


class CheckFailed(Exception):
    """What a workload processed is not what it was given."""


def check_tasks(
    expected: Optional[dict[Any, int]],
    got: Iterable[tuple[Any, Any]],
    n: int,
    *,
    exact: bool,
    what: str,
) -> int:
    """Verifies ``(key, value)`` pairs read back from a store: every key
    appears once, every value equals the payload of its task (by the key ->
    i map when there is one, else by the value's own ``i``, each ``i`` in
    ``range(n)`` once), and — when ``exact`` — all ``n`` are there. Returns
    how many were read back; raises CheckFailed saying what is wrong."""
    seen_keys: set[Any] = set()
    seen_i: set[int] = set()
    dup = unknown = wrong = 0
    example = ""
    for key, value in got:
        if key in seen_keys:
            dup += 1
            example = example or f"key {key!r} twice"
            continue
        seen_keys.add(key)
        if expected is not None:
            i = expected.get(key)
            if i is None:
                unknown += 1
                example = example or f"unexpected key {key!r}"
                continue
        else:
            i = value.get("i") if isinstance(value, dict) else None
            if not isinstance(i, int) or not 0 <= i < n:
                unknown += 1
                example = example or f"value {value!r} has no i in range"
                continue
        if i in seen_i:
            dup += 1
            example = example or f"i={i} twice"
            continue
        seen_i.add(i)
        if value != payload(i):
            wrong += 1
            example = example or f"{what} of i={i} is {value!r}"
    count = len(seen_i)
    missing = n - count if exact else 0
    if dup or unknown or wrong or missing:
        raise CheckFailed(
            f"{what}: {count} read back, {missing} missing, {dup} duplicated, "
            f"{unknown} unknown, {wrong} wrong (e.g. {example or 'n/a'})"
        )
    return count


# ---------------------------------------------------------------------------
# Worker subprocesses
# ---------------------------------------------------------------------------


def proc_memory(pid: int) -> tuple[Optional[int], Optional[int]]:
    """(VmRSS, VmHWM) of a live process in bytes, from /proc."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


class WorkerDied(Exception):
    pass


class Worker:
    """A worker subprocess (``harness.py worker``) with a READY handshake,
    its stderr in a file of the temp dir, and its memory read from /proc."""

    count = 0

    def __init__(self, system: str, root: Path, mode: str, env: Optional[dict[str, str]] = None):
        Worker.count += 1
        self.log_path = root / f"worker-{Worker.count}.log"
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "worker",
                "--system",
                system,
                "--mode",
                mode,
                "--concurrency",
                str(CONCURRENCY),
            ],
            cwd=root,
            env={**os.environ, **(env or {}), "PYTHONPATH": str(HERE)},
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Waits for the READY line; returns the monotonic time it came."""
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied(f"worker not ready after {timeout:.0f} s; {self.tail()}")
            r, _, _ = select.select([self.p.stdout], [], [], min(left, 0.5))
            if r:
                chunk = os.read(self.p.stdout.fileno(), 4096)
                if not chunk:
                    raise WorkerDied(f"worker exited before READY; {self.tail()}")
                buf += chunk
        if not buf.startswith(b"READY"):
            raise WorkerDied(f"worker said {buf[:200]!r}; {self.tail()}")
        return time.monotonic()

    def alive(self) -> bool:
        return self.p.poll() is None

    def memory(self) -> tuple[Optional[int], Optional[int]]:
        return proc_memory(self.p.pid)

    def check_alive(self) -> None:
        if not self.alive():
            raise WorkerDied(f"worker exited with {self.p.returncode}; {self.tail()}")

    def kill(self) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def tail(self, lines: int = 6) -> str:
        self.log.flush()
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no worker log"
        return "worker log: " + " | ".join(text[-lines:]) if text else "worker log empty"


@dataclass
class Progress:
    """Polls a system's stored-result count until a target, a time cap, or
    the worker's death; keeps (seconds, done, rss, hwm) samples."""

    peer: Peer
    worker: Worker
    target: int
    cap: float
    t0: float
    samples: list[tuple[float, int, Optional[int], Optional[int]]] = field(default_factory=list)

    def run(self) -> tuple[int, float, bool]:
        """Returns (done, seconds from t0 to when it was seen, capped)."""
        while True:
            q0 = time.monotonic()
            done = self.peer.done_count()
            now = time.monotonic()
            rss, hwm = self.worker.memory()
            self.samples.append((now - self.t0, done, rss, hwm))
            if done >= self.target:
                return done, now - self.t0, False
            if now - self.t0 > self.cap:
                return done, now - self.t0, True
            self.worker.check_alive()
            # Poll often, but never spend more than a quarter of a core on it.
            time.sleep(max(0.01, 3 * (now - q0)))


# ---------------------------------------------------------------------------
# Workloads (each runs in a driver process; returns a result dict)
# ---------------------------------------------------------------------------


def rate_fields(
    done: int, seconds: float, n: int, capped: bool, cap: float, unit: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "value": done / seconds if seconds > 0 else None,
        "unit": unit,
        "done": done,
        "n": n,
        "seconds": round(seconds, 3),
    }
    if capped:
        out["capped"] = f"stopped at the {cap:.0f} s cap: {done:,} of {n:,} done; rate over those"
    return out


def w1_send(peer: Peer, n: int, cap: float, threads: int) -> dict[str, Any]:
    payloads = [payload(i) for i in range(n)]
    keys: dict[Any, int] = {}
    if threads == 1:
        deadline = time.perf_counter() + cap
        sent = 0
        t0 = time.perf_counter()
        for i in range(n):
            keys[peer.key(peer.send("echo", payloads[i]))] = i
            sent += 1
            if (i & 255) == 0 and time.perf_counter() > deadline:
                break
        seconds = time.perf_counter() - t0
    else:
        senders = [peer.thread_sender() for _ in range(threads)]
        barrier = threading.Barrier(threads + 1)
        stop = threading.Event()
        per_thread: list[dict[Any, int]] = [{} for _ in range(threads)]
        errors: list[BaseException] = []

        def produce(j: int) -> None:
            send, mine = senders[j], per_thread[j]
            barrier.wait()
            try:
                for k, i in enumerate(range(j, n, threads)):
                    mine[peer.key(send("echo", payloads[i]))] = i
                    if (k & 63) == 0 and stop.is_set():
                        break
            except BaseException as e:  # noqa: B036 - reported as FAILED
                errors.append(e)

        pool = [threading.Thread(target=produce, args=(j,)) for j in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        timer = threading.Timer(cap, stop.set)
        timer.start()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - t0
        timer.cancel()
        if errors:
            raise errors[0]
        for mine in per_thread:
            keys.update(mine)
        sent = sum(len(m) for m in per_thread)
    capped = sent < n
    if len(keys) != sent:
        raise CheckFailed(f"{sent} sends returned {len(keys)} distinct ids")
    stored = check_tasks(keys, peer.queued(), sent, exact=True, what="queued payload")
    out = rate_fields(sent, seconds, n, capped, cap, "tasks/s")
    out["check"] = f"{stored:,} queued, each id once, payloads equal"
    return out


def w1b_batch(peer: Peer, n: int, cap: float, variant: str) -> dict[str, Any]:
    if variant == "frame":
        try:
            import polars as pl
        except ImportError as e:
            raise NotSupported(f"polars not installed ({e})") from e
        if not hasattr(peer, "frame_send") or type(peer).frame_send is Peer.frame_send:
            raise NotSupported("no DataFrame API")
        df = pl.DataFrame(
            {"i": pl.Series(range(n), dtype=pl.Int64), "text": pl.Series(["hello world"] * n)}
        )
        t0 = time.perf_counter()
        peer.frame_send(df)
        seconds = time.perf_counter() - t0
        expected = None
        how = "enqueue_frame"
    else:
        payloads = [payload(i) for i in range(n)]
        t0 = time.perf_counter()
        expected = peer.batch_send(payloads)
        seconds = time.perf_counter() - t0
        how = peer.batch_label()
    stored = check_tasks(expected, peer.queued(), n, exact=True, what="queued payload")
    out = rate_fields(n, seconds, n, False, cap, "rows/s")
    out["check"] = f"{stored:,} queued, each i once, payloads equal"
    out["how"] = how
    if seconds > cap:
        out["note"] = (
            f"took {seconds:.0f} s, over the {cap:.0f} s cap (batch calls cannot be cut short)"
        )
    return out


def drain(
    peer: Peer, system: str, root: Path, n: int, cap: float, variant: str = ""
) -> tuple[dict[str, Any], Progress]:
    """Prefills ``n`` echo tasks, runs a worker until every result is
    stored (or the cap), checks the results. Shared by W2 and W5."""
    t = time.perf_counter()
    expected = peer.prefill("echo", [payload(i) for i in range(n)])
    prefill_s = time.perf_counter() - t
    if len(expected) != n:
        raise CheckFailed(f"prefill returned {len(expected)} ids for {n} tasks")
    worker = Worker(system, root, "drain", env={"BENCH_VARIANT": variant})
    try:
        t0 = worker.wait_ready()
        prog = Progress(peer, worker, n, cap, t0)
        done, seconds, capped = prog.run()
        rss, hwm = worker.memory()
    finally:
        worker.stop()
    got = check_tasks(expected, peer.results(), n, exact=not capped, what="result")
    if got < done:
        raise CheckFailed(f"{done} counted done but {got} results read back")
    out = rate_fields(done, seconds, n, capped, cap, "tasks/s")
    out.update(
        peak_rss=hwm,
        rss=rss,
        prefill_s=round(prefill_s, 1),
        prefill=peer.prefill_note,
        check=f"{got:,} results, each task once, result == input",
    )
    return out, prog


def w2_drain(
    peer: Peer, system: str, root: Path, n: int, cap: float, variant: str
) -> dict[str, Any]:
    out, _ = drain(peer, system, root, n, cap, variant)
    return out


# W2's ferroq variants: (shards, worker processes).
W2_VARIANTS = {"": (1, 1), "4sh": (4, 1), "2p": (1, 2), "4sh+2p": (4, 2)}


def variant_options(system: str, workload: str, variant: str) -> dict[str, Any]:
    """The adapter options of a case: ferroq's W1b into 4 shards, its W2
    variants' shards and processes."""
    if system != "ferroq":
        return {}
    if workload == "W1b":
        return {"shards": 4}
    if workload == "W2":
        shards, processes = W2_VARIANTS[variant]
        return {"shards": shards, "processes": processes}
    return {}


def w5_memory(peer: Peer, system: str, root: Path, n: int, cap: float) -> dict[str, Any]:
    out, prog = drain(peer, system, root, n, cap)
    samples = [s for s in prog.samples if s[3] is not None]
    if not samples:
        raise CheckFailed("no memory samples of the worker")
    final = samples[-1]
    quarter_target = final[1] / 4
    quarter = min(samples, key=lambda s: abs(s[1] - quarter_target))
    growth = final[3] - quarter[3]
    out.update(
        hwm_quarter=quarter[3],
        done_quarter=quarter[1],
        hwm_end=final[3],
        done_end=final[1],
        grows=growth > max(10 * 2**20, 0.10 * quarter[3]),
        rss_curve=[(round(s[0], 2), s[1], s[3]) for s in samples[:: max(1, len(samples) // 40)]],
    )
    return out


def w3_latency(peer: Peer, system: str, root: Path, n: int, cap: float) -> dict[str, Any]:
    worker = Worker(system, root, "serve")
    lat: list[float] = []
    try:
        worker.wait_ready()
        time.sleep(1.0)  # the worker goes idle before the first send
        start = time.monotonic()
        for i in range(n):
            p = payload(i)
            t = time.perf_counter()
            value = peer.send_wait("echo", p, RESULT_TIMEOUT)
            lat.append((time.perf_counter() - t) * 1000)
            if value != p:
                raise CheckFailed(f"result of send {i} is {value!r}")
            if time.monotonic() - start > cap:
                break
            worker.check_alive()
    finally:
        worker.stop()
    lat_sorted = sorted(lat)

    def pct(q: float) -> float:
        return lat_sorted[max(0, math.ceil(q * len(lat_sorted)) - 1)]

    out: dict[str, Any] = {
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "mean": statistics.mean(lat),
        "max": lat_sorted[-1],
        "unit": "ms",
        "done": len(lat),
        "n": n,
        "check": f"{len(lat)} results, each equal to its input",
    }
    if len(lat) < n:
        out["capped"] = f"stopped at the {cap:.0f} s cap after {len(lat)} of {n} sends"
    return out


def read_log(path: Path) -> list[tuple[str, int, int, float]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:  # a line cut by the kill has fewer fields
            rows.append((parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
    return rows


def w4_crash(
    peer: Peer, system: str, root: Path, n: int, cap: float, kill_after: float, idle: float
) -> dict[str, Any]:
    log = root / "tasks.log"
    env = {"BENCH_LOG": str(log)}
    expected = peer.prefill("sleeplog", [payload(i) for i in range(n)])
    first = Worker(system, root, "crash", env)
    try:
        first.wait_ready()
        deadline = time.monotonic() + 60
        while not read_log(log):
            first.check_alive()
            if time.monotonic() > deadline:
                raise WorkerDied(f"no task started within 60 s; {first.tail()}")
            time.sleep(0.005)
        t_first = time.time()
        time.sleep(kill_after)
        first.kill()
        t_kill = time.time()
    finally:
        first.stop()
    first_pid = first.p.pid
    second = Worker(system, root, "crash", env)
    t_restart = time.time()
    try:
        ready_after = second.wait_ready() - second.started
        last_size, last_change = -1, time.monotonic()
        start = time.monotonic()
        ended_all = False
        while time.monotonic() - start < cap:
            rows = read_log(log)
            if len(rows) != last_size:
                last_size, last_change = len(rows), time.monotonic()
            ended = {i for kind, i, _, _ in rows if kind == "E"}
            if len(ended) >= n:
                ended_all = True
                break
            if time.monotonic() - last_change > idle:
                break
            second.check_alive()
            time.sleep(0.05)
        waited = time.monotonic() - start
        time.sleep(0.5)  # let the last results be stored
    finally:
        second.stop()

    rows = read_log(log)
    starts: dict[int, list[tuple[int, float]]] = {}
    ends: dict[int, list[tuple[int, float]]] = {}
    for kind, i, pid, t in rows:
        (starts if kind == "S" else ends).setdefault(i, []).append((pid, t))
    in_flight = {
        i
        for i, ss in starts.items()
        if any(pid == first_pid for pid, _ in ss)
        and not any(pid == first_pid for pid, _ in ends.get(i, []))
    }
    twice = {i for i, ss in starts.items() if len(ss) > 1}
    rerun_delays = []
    never_rerun = 0
    for i in in_flight:
        again = [t for pid, t in starts.get(i, []) if pid != first_pid]
        if again:
            rerun_delays.append(min(again) - t_restart)
        else:
            never_rerun += 1
    stored_keys: list[Any] = []

    def remember(pairs: Iterable[tuple[Any, Any]]) -> Iterable[tuple[Any, Any]]:
        for key, value in pairs:
            stored_keys.append(key)
            yield key, value

    stored = check_tasks(expected, remember(peer.results()), n, exact=False, what="result")
    lost = n - stored
    have = {expected[k] for k in stored_keys if k in expected}
    lost_ids = set(range(n)) - have
    out: dict[str, Any] = {
        "n": n,
        "lost": lost,
        # Lost tasks that never started anywhere were claimed by the killed
        # worker (or never reached) and not handed out again.
        "lost_never_started": len(lost_ids - set(starts)),
        "lost_finished_unrecorded": len({i for i in lost_ids if i in ends}),
        "twice": len(twice),
        "in_flight": len(in_flight),
        "twice_not_in_flight": len(twice - in_flight),
        "never_rerun": never_rerun,
        "rerun_after_restart_s": max(rerun_delays) if rerun_delays and not never_rerun else None,
        "killed_after_s": round(t_kill - t_first, 2),
        "ready_after_restart_s": round(ready_after, 2),
        "started_before_kill": len(
            {i for i, ss in starts.items() if any(p == first_pid for p, _ in ss)}
        ),
        "finished": ended_all,
        "prefill": peer.prefill_note,
        "waited_s": round(waited, 1),
        "check": f"{stored:,} results stored, each once, result == input; log parsed",
    }
    if not ended_all:
        why = f"no progress for {idle:.0f} s" if waited < cap else "the cap"
        unfinished = n - len({i for k, i, _, _ in rows if k == "E"})
        out["note"] = (
            f"waited {waited:.0f} s after the restart ({why}); {unfinished} never finished"
        )
    if lost:
        why = (
            f"of the {lost} lost, {out['lost_never_started']} never started (claimed by the "
            f"killed worker, never handed out again), {out['lost_finished_unrecorded']} "
            f"finished but their result was not stored"
        )
        out["note"] = f"{out['note']}; {why}" if out.get("note") else why
    return out


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """One (workload, size, system) in this process; the caller prints it."""
    root = Path.cwd()
    options = variant_options(args.system, args.workload, args.variant)
    peer = load(args.system, root, "driver", **options)
    try:
        if args.workload == "W1":
            out = w1_send(peer, args.n, args.cap, args.threads)
        elif args.workload == "W1b":
            out = w1b_batch(peer, args.n, args.cap, args.variant)
        elif args.workload == "W2":
            out = w2_drain(peer, args.system, root, args.n, args.cap, args.variant)
        elif args.workload == "W3":
            out = w3_latency(peer, args.system, root, args.n, args.cap)
        elif args.workload == "W4":
            out = w4_crash(peer, args.system, root, args.n, args.cap, args.kill_after, args.idle)
        elif args.workload == "W5":
            out = w5_memory(peer, args.system, root, args.n, args.cap)
        else:
            raise ValueError(args.workload)
        out["status"] = "ok"
        out["durability"] = peer.durability()
        out["adapter_notes"] = list(peer.notes)
    finally:
        try:
            peer.close()
        except Exception:
            pass
    return out


def run_worker(args: argparse.Namespace) -> None:
    workload = "W2" if os.environ.get("BENCH_VARIANT") else ""
    options = variant_options(args.system, workload, os.environ.get("BENCH_VARIANT", ""))
    peer = load(args.system, Path.cwd(), "worker", **options)

    def ready() -> None:
        sys.stdout.write("READY\n")
        sys.stdout.flush()

    peer.run_worker(args.concurrency, ready, args.mode)
    # Measurements are over once a worker is told to stop; some libraries'
    # non-daemon threads would keep the process up for a while.
    sys.stdout.flush()
    os._exit(0)


# ---------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------


@dataclass
class Case:
    workload: str
    n: int
    system: str
    variant: str = ""  # W1: threads; W1b: batch | frame

    @property
    def row(self) -> str:
        return f"{self.workload}:{self.variant}:{self.n}"


def plan(only: list[str], systems: list[str], sizes: dict[str, list[int]]) -> list[Case]:
    cases = []
    for w in WORKLOADS:
        if w not in only:
            continue
        variants = {
            "W1": ["1", str(PRODUCERS)], "W1b": ["batch", "frame"], "W2": list(W2_VARIANTS)
        }.get(w, [""])
        for v in variants:
            for n in sizes[w]:
                for s in systems:
                    if w == "W1b" and v == "frame" and s != "ferroq":
                        continue
                    if w == "W2" and v and s != "ferroq":
                        continue
                    cases.append(Case(w, n, s, v))
    return cases


def execute(case: Case, caps: dict[str, float], quick: bool, keep: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"bench-{case.workload}-{case.system}-"))
    cap = caps[case.workload]
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "case",
        "--workload",
        case.workload,
        "--system",
        case.system,
        "--n",
        str(case.n),
        "--cap",
        str(cap),
    ]
    if case.workload == "W1":
        cmd += ["--threads", case.variant]
    if case.workload in ("W1b", "W2"):
        cmd += ["--variant", case.variant]
    if case.workload == "W4":
        cmd += ["--kill-after", "0.5" if quick else "1.0", "--idle", "5" if quick else "10"]
    # Generous: prefill, verification and start-up come on top of the cap.
    timeout = cap * 3 + 300 + case.n / 2_000
    base = {"workload": case.workload, "variant": case.variant, "n": case.n, "system": case.system}
    t = time.monotonic()
    try:
        p = subprocess.run(
            cmd,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(HERE)},
        )
        line = next(
            (ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None
        )
        if line is None:
            tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-4:])
            out = {"status": "FAILED", "error": f"driver exited {p.returncode}: {tail}"}
        else:
            out = json.loads(line[len("RESULT ") :])
    except subprocess.TimeoutExpired:
        out = {"status": "FAILED", "error": f"driver still running after {timeout:.0f} s (killed)"}
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out.update(base, wall_s=round(time.monotonic() - t, 1))
    return out


def driver_main(args: argparse.Namespace) -> None:
    try:
        out = run_case(args)
    except NotSupported as e:
        out = {"status": "n/a", "reason": str(e)}
    except CheckFailed as e:
        out = {"status": "FAILED", "error": f"check: {e}"}
    except Exception as e:
        traceback.print_exc()
        out = {"status": "FAILED", "error": f"{type(e).__name__}: {e}"[:500]}
    print("RESULT " + json.dumps(out, default=str), flush=True)


UNITS = {"elem/s": 1.0, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}


def raw_sqlite(timeout: float) -> dict[str, Any]:
    """Runs the criterion reference and parses its throughput lines."""
    cargo = shutil.which("cargo")
    if cargo is None:
        return {"status": "FAILED", "error": "cargo not found"}
    t = time.monotonic()
    try:
        p = subprocess.run(
            [cargo, "bench", "--bench", "store", "--", "raw_sqlite"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"status": "FAILED", "error": f"cargo bench still running after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-4:])
        return {"status": "FAILED", "error": f"cargo bench exited {p.returncode}: {tail}"}
    found = {}
    pattern = (
        r"raw_sqlite/(\w+)\s+time:\s+\[[^\]]*\]\s+thrpt:\s+"
        r"\[\s*[\d.]+ \S+ ([\d.]+) (\S+) [\d.]+ \S+\s*\]"
    )
    for m in re.finditer(pattern, p.stdout):
        found[m.group(1)] = float(m.group(2)) * UNITS.get(m.group(3), float("nan"))
    want = ["single_row_commit", "insert_1000_per_tx", "claim_complete_100"]
    if not all(k in found for k in want):
        return {
            "status": "FAILED",
            "error": f"could not parse criterion output (found {sorted(found)})",
        }
    extra = ["insert_4_per_tx", "single_row_commit_4096_pages"]
    return {
        "status": "ok",
        "unit": "rows/s",
        **{k: found[k] for k in want},
        **{k: found[k] for k in extra if k in found},
        "seconds": round(time.monotonic() - t, 1),
        "check": "the bench asserts the rows stored, claimed and completed",
        "durability": {"synchronous": "NORMAL (asserted by the bench)", "journal": "wal"},
    }


# ---- the table ------------------------------------------------------------


RAW_LEGEND = (
    "raw SQLite: cargo bench --bench store -- raw_sqlite in this run (rusqlite, WAL, "
    "synchronous=NORMAL, 1 KiB pages as ferroq uses, no Python): W1 = single-row "
    "commits/s, W1b = rows/s inserted 1,000 per transaction, W2 = claim+complete "
    "cycles/s in batches of 100 on one thread. "
    "'ferroq vs best peer': ferroq's figure over the best peer's (for latency and memory, "
    "the best peer's over ferroq's), so >1x means ferroq is ahead. 'W5 grows?': the "
    "worker's peak RSS rises by more than 10% from a quarter of the W5 drain to its end, or "
    "is more than 1.5x (and 20 MB over) its peak RSS draining W2's smallest queue."
)


def raw_extras(raw: Optional[dict[str, Any]]) -> str:
    """The reference's other figures, for reading W1: the ceiling of four
    senders sharing each commit, and single commits at SQLite's default
    page size (ferroq and the reference use 1 KiB pages)."""
    if not raw or raw.get("status") != "ok":
        return ""
    parts = []
    if "insert_4_per_tx" in raw:
        parts.append(f"4 rows per transaction {raw['insert_4_per_tx']:,.0f} rows/s")
    if "single_row_commit_4096_pages" in raw:
        parts.append(
            f"single-row commits with 4 KiB pages {raw['single_row_commit_4096_pages']:,.0f}/s"
        )
    return ("raw SQLite, also: " + "; ".join(parts) + ".") if parts else ""


def mb(x: Optional[float]) -> str:
    return "?" if x is None else f"{x / 2**20:,.0f} MB"


class Table:
    """Rows of workload figures, one column per system, the raw SQLite
    reference, and two ratios for ferroq; footnotes for anything a figure
    needs said beside it."""

    RATIO_PEER = "ferroq vs best peer"
    RATIO_RAW = "ferroq / raw"

    def __init__(self, systems: list[str], with_raw: bool) -> None:
        self.systems = systems
        self.cols = systems + (["raw SQLite"] if with_raw else [])
        if "ferroq" in systems and len(systems) > 1:
            self.cols.append(self.RATIO_PEER)
        if "ferroq" in systems and with_raw:
            self.cols.append(self.RATIO_RAW)
        self.rows: list[tuple[str, dict[str, str]]] = []
        self.notes: list[str] = []

    def note(self, text: str) -> str:
        if text not in self.notes:
            self.notes.append(text)
        return f"[{self.notes.index(text) + 1}]"

    def add(
        self,
        label: str,
        cells: dict[str, str],
        values: Optional[dict[str, float]] = None,
        better: str = "high",
        raw: Optional[float] = None,
    ) -> None:
        """A row; ``values`` (numbers of the checked figures) give the
        ratio columns: ferroq against the best peer (>1 = ferroq better)
        and ferroq as a fraction of the raw SQLite figure."""
        cells = dict(cells)
        values = values or {}
        mine = values.get("ferroq")
        peers = [v for k, v in values.items() if k != "ferroq" and v and v > 0]
        if mine and peers:
            if better == "high":
                best = max(peers)
                cells[self.RATIO_PEER] = f"{mine / best:.1f}x"
            else:
                best = min(peers)
                cells[self.RATIO_PEER] = f"{best / mine:.1f}x"
        if mine and raw:
            cells[self.RATIO_RAW] = f"{mine / raw:.0%}"
        self.rows.append((label, cells))

    def render(self) -> str:
        w0 = max(len(r[0]) for r in self.rows) + 2
        widths = {
            c: max([len(c)] + [len(r[1].get(c, "")) for r in self.rows]) + 2 for c in self.cols
        }
        lines = ["".ljust(w0) + "".join(c.rjust(widths[c]) for c in self.cols)]
        for label, cells in self.rows:
            lines.append(
                label.ljust(w0) + "".join(cells.get(c, "").rjust(widths[c]) for c in self.cols)
            )
        lines.append("")
        lines += [f"[{k + 1}] {text}" for k, text in enumerate(self.notes)]
        return "\n".join(lines)


Fmt = Callable[[dict[str, Any]], str]
Metric = Callable[[dict[str, Any]], Optional[float]]


def build_table(
    results: list[dict[str, Any]],
    raw: Optional[dict[str, Any]],
    systems: list[str],
    sizes: dict[str, list[int]],
) -> Table:
    tab = Table(systems, with_raw=raw is not None)
    by: dict[tuple[str, str, int, str], dict[str, Any]] = {
        (r["workload"], r["variant"], r["n"], r["system"]): r for r in results
    }

    # Durability: what each system ran at, read in every case; one value
    # per system, or "varies" when cases disagree.
    for key, label in (
        ("synchronous", "synchronous (read back)"),
        ("journal", "journal_mode (file)"),
    ):
        cells = {}
        for s in systems:
            seen = sorted(
                {r["durability"][key] for r in results if r["system"] == s and r.get("durability")}
            )
            if len(seen) == 1:
                cells[s] = seen[0].split(" ")[0]
                if " " in seen[0]:
                    cells[s] += " " + tab.note(f"{s}: {key} {seen[0]}")
            elif seen:
                cells[s] = "varies " + tab.note(f"{s}: {key} differs between cases: {seen}")
            else:
                cells[s] = "?"
        if raw and raw.get("status") == "ok":
            cells["raw SQLite"] = raw["durability"][key].split(" ")[0]
        tab.add(label, cells)

    def cell(r: Optional[dict[str, Any]], fmt: Fmt) -> str:
        if r is None:
            return ""
        variant = f" {r['variant']}" if r["variant"] else ""
        who = f"{r['system']} {r['workload']}{variant}"
        if r["status"] == "n/a":
            return "n/a " + tab.note(f"{who}: n/a: {r['reason']}")
        if r["status"] != "ok":
            return "FAILED " + tab.note(f"{who}: FAILED: {r.get('error', '?')}")
        text = fmt(r)
        extra = [r[k] for k in ("capped", "note") if r.get(k)]
        if r["workload"] == "W1b" and r.get("how") and r["system"] != "ferroq":
            extra.append(f"via {r['how']}")
        if extra:
            text += " " + tab.note(f"{who} n={r['n']:,}: " + "; ".join(extra))
        return text

    def raw_value(key: str) -> tuple[str, Optional[float]]:
        if not raw:
            return "", None
        if raw.get("status") != "ok":
            return "FAILED " + tab.note(f"raw SQLite: {raw.get('error')}"), None
        return f"{raw[key]:,.0f}", float(raw[key])

    def row(
        label: str,
        key: tuple[str, str, int],
        fmt: Fmt,
        metric: Optional[Metric] = None,
        better: str = "high",
        raw_key: Optional[str] = None,
    ) -> None:
        rs = {s: by.get((*key, s)) for s in systems}
        cells = {s: cell(r, fmt) for s, r in rs.items()}
        values = {}
        if metric is not None:
            for s, r in rs.items():
                if r is not None and r["status"] == "ok" and metric(r) is not None:
                    values[s] = float(metric(r))  # type: ignore[arg-type]
        raw_num = None
        if raw_key:
            cells["raw SQLite"], raw_num = raw_value(raw_key)
        tab.add(label, cells, values, better, raw_num)

    def rate(r: dict[str, Any]) -> str:
        return f"{r['value']:,.0f}" + ("*" if r.get("capped") else "")

    def value(r: dict[str, Any]) -> Optional[float]:
        return r.get("value")

    for v in ("1", str(PRODUCERS)):
        for n in sizes.get("W1", []):
            threads = "1 thread" if v == "1" else f"{v} threads"
            row(
                f"W1 send {n:,}, {threads} /s",
                ("W1", v, n),
                rate,
                value,
                raw_key="single_row_commit",
            )
    for v in ("batch", "frame"):
        for n in sizes.get("W1b", []):
            label = "W1b batch API" if v == "batch" else "W1b Polars frame"
            row(f"{label} {n:,} rows/s", ("W1b", v, n), rate, value, raw_key="insert_1000_per_tx")
    for n in sizes.get("W2", []):
        row(
            f"W2 drain {n:,}, c=4 tasks/s", ("W2", "", n), rate, value, raw_key="claim_complete_100"
        )
        for v, label in (
            ("4sh", "4 shards"), ("2p", "2 processes"), ("4sh+2p", "4 shards, 2 processes")
        ):
            row(f"W2 drain {n:,}, c=4, {label} tasks/s", ("W2", v, n), rate, value)
        row(
            f"W2 drain {n:,} peak RSS",
            ("W2", "", n),
            lambda r: mb(r.get("peak_rss")),
            lambda r: r.get("peak_rss"),
            better="low",
        )
    for n in sizes.get("W3", []):
        for q in ("p50", "p95", "p99"):
            row(
                f"W3 latency {q} ms ({n} sends)",
                ("W3", "", n),
                lambda r, q=q: f"{r[q]:.2f}",
                lambda r, q=q: r[q],
                better="low",
            )
    for n in sizes.get("W4", []):
        row(f"W4 crash {n:,}: lost", ("W4", "", n), lambda r: f"{r['lost']:,}")
        row(
            "W4 run twice (in flight at kill)",
            ("W4", "", n),
            lambda r: f"{r['twice']} ({r['in_flight']})",
        )
        row("W4 in-flight rerun after restart", ("W4", "", n), rerun_text)
    for n in sizes.get("W5", []):
        key = ("W5", "", n)
        row(f"W5 drain {n:,} tasks/s", key, rate, value)
        row("W5 peak RSS at 1/4 of the work", key, lambda r: mb(r["hwm_quarter"]))
        row(
            "W5 peak RSS at the end",
            key,
            lambda r: mb(r["hwm_end"]),
            lambda r: r["hwm_end"],
            better="low",
        )
        small = min(sizes.get("W2", [0]) or [0])

        def grows(r: dict[str, Any], small: int = small) -> str:
            # Within the run (1/4 of the work vs the end), and against the
            # same worker draining a queue of W2's smallest size: a worker
            # that holds every queued task in memory is flat within a run
            # (it loaded them all at the start) but not across depths.
            base = by.get(("W2", "", small, r["system"]))
            text = "yes" if r["grows"] else "no"
            if base and base["status"] == "ok" and base.get("peak_rss"):
                b, e = base["peak_rss"], r["hwm_end"]
                if e - b > max(20 * 2**20, 0.5 * b):
                    text = "yes"
                text += f" ({b / 2**20:.0f}->{e / 2**20:.0f} MB)"
            return text

        label = f"W5 grows? (vs W2 {small:,})" if small else "W5 grows with tasks?"
        row(label, key, grows)
    return tab


def rerun_text(r: dict[str, Any]) -> str:
    """W4: when the killed worker's in-flight tasks ran again."""
    if r["in_flight"] == 0:
        return "none in flight"
    if r["rerun_after_restart_s"] is None:
        return f"{r['never_rerun']} never"
    return f"{r['rerun_after_restart_s']:.2f} s"


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in (
        "ferroq",
        "huey",
        "persist-queue",
        "queue-sqlite",
        "queue-sqlite-core",
        "litequeue",
        "polars",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def parse_kv(items: list[str], kind: Callable[[str], Any]) -> dict[str, Any]:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if k not in WORKLOADS or not v:
            raise SystemExit(f"expected WORKLOAD=VALUE with WORKLOAD in {WORKLOADS}, got {item!r}")
        out[k] = kind(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd")
    ap.add_argument("--quick", action="store_true", help="small sizes and caps (a smoke run)")
    ap.add_argument(
        "--only", default=",".join(WORKLOADS), help="workloads, e.g. W1,W2 (default: all)"
    )
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"default: {','.join(SYSTEMS)}")
    ap.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="W=N[,N]",
        help="override sizes, e.g. --sizes W2=50000,200000",
    )
    ap.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="W=SECONDS",
        help="override a workload's time cap per measurement",
    )
    ap.add_argument("--no-raw", action="store_true", help="skip the cargo bench reference")
    ap.add_argument(
        "--json", default=str(REPO / "bench-results.json"), help="where to write results"
    )
    ap.add_argument("--keep", action="store_true", help="keep each case's temp dir")

    c = sub.add_parser("case", help="(internal) run one measurement in this process")
    c.add_argument("--workload", required=True)
    c.add_argument("--system", required=True)
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--cap", type=float, required=True)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--variant", default="batch")
    c.add_argument("--kill-after", type=float, default=1.0)
    c.add_argument("--idle", type=float, default=10.0)
    w = sub.add_parser("worker", help="(internal) a worker process")
    w.add_argument("--system", required=True)
    w.add_argument("--mode", required=True)
    w.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = ap.parse_args()

    if args.cmd == "case":
        driver_main(args)
        return
    if args.cmd == "worker":
        run_worker(args)
        return

    only = [x.strip() for x in args.only.split(",") if x.strip()]
    systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    for x in only:
        if x not in WORKLOADS:
            raise SystemExit(f"unknown workload {x!r}; choose from {WORKLOADS}")
    for x in systems:
        if x not in SYSTEMS:
            raise SystemExit(f"unknown system {x!r}; choose from {list(SYSTEMS)}")
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    sizes.update(parse_kv(args.sizes, lambda v: [int(x.replace("_", "")) for x in v.split(",")]))
    sizes = {k: v for k, v in sizes.items() if k in only}
    caps = dict(QUICK_CAPS if args.quick else FULL_CAPS)
    caps.update(parse_kv(args.cap, float))

    started = time.time()
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "mode": "quick" if args.quick else "full",
        "sizes": sizes,
        "caps": caps,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git": git_commit(),
        "versions": versions(),
        "load_at_start": os.getloadavg(),
    }
    print(
        f"ferroq benchmarks ({meta['mode']} sizes), commit {meta['git']}, "
        f"load {meta['load_at_start'][0]:.2f} on {meta['cpus']} CPUs"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), flush=True)

    raw = None
    if not args.no_raw:
        print("raw SQLite reference: cargo bench --bench store -- raw_sqlite ...", flush=True)
        raw = raw_sqlite(timeout=1800)
        if raw["status"] == "ok":
            print(
                f"  single-row commits {raw['single_row_commit']:,.0f}/s, 1,000-row tx "
                f"{raw['insert_1000_per_tx']:,.0f} rows/s, claim+complete x100 "
                f"{raw['claim_complete_100']:,.0f}/s ({raw['seconds']} s)",
                flush=True,
            )
        else:
            print(f"  FAILED: {raw['error']}", flush=True)

    results = []
    for case in plan(only, systems, sizes):
        variant = {"1": "1 thread", str(PRODUCERS): f"{PRODUCERS} threads"}.get(
            case.variant, case.variant
        )
        label = f"{case.workload} {variant} n={case.n:,}".replace("  ", " ")
        print(f"{label:<22} {case.system:<14}", end=" ", flush=True)
        r = execute(case, caps, args.quick, args.keep)
        results.append(r)
        print(summary(r), flush=True)

    meta["load_at_end"] = os.getloadavg()
    meta["seconds"] = round(time.time() - started)
    table = build_table(results, raw, systems, sizes).render()
    notes = sorted({n for r in results for n in r.get("adapter_notes", [])})
    prefills = {r["system"]: r["prefill"] for r in results if r.get("prefill")}
    notes += [f"{s}: W2/W4/W5 queues prefilled (not timed) by {how}" for s, how in prefills.items()]
    head = (
        f"Every figure was checked (ids each present once, results equal inputs); '*' = "
        f"stopped at the time cap, rate over what was done. {meta['mode']} run, "
        f"{meta['seconds']} s, load {meta['load_at_start'][0]:.2f} -> "
        f"{meta['load_at_end'][0]:.2f}."
    )
    Path(args.json).write_text(
        json.dumps(
            {
                "meta": meta,
                "raw_sqlite": raw,
                "results": results,
                "table": f"{head}\n{table}\n{RAW_LEGEND}",
                "adapter_notes": notes,
            },
            indent=1,
            default=str,
        )
    )
    print()
    print(head)
    print(table)
    print(RAW_LEGEND)
    extras = raw_extras(raw)
    if extras:
        print(extras)
    if notes:
        print()
        print("How each system was driven:")
        for n in notes:
            print(f"- {n}")
    print(f"\nwrote {args.json}")


def summary(r: dict[str, Any]) -> str:
    if r["status"] == "n/a":
        return f"n/a: {r['reason']}"
    if r["status"] != "ok":
        return f"FAILED: {r.get('error')}"
    w = r["workload"]
    capped = " (capped)" if r.get("capped") else ""
    if w in ("W1", "W1b", "W2", "W5"):
        s = f"{r['value']:,.0f} {r['unit']}{capped}"
        if r.get("peak_rss"):
            s += f", peak RSS {mb(r['peak_rss'])}"
        if w == "W5":
            s += f" (at 1/4: {mb(r['hwm_quarter'])})"
    elif w == "W3":
        s = f"p50 {r['p50']:.2f} p95 {r['p95']:.2f} p99 {r['p99']:.2f} ms{capped}"
    else:
        s = f"lost {r['lost']}, twice {r['twice']} ({r['in_flight']} in flight)"
        s += f", rerun {rerun_text(r)}"
    return f"{s}  [{r['wall_s']} s]"


if __name__ == "__main__":
    main()
