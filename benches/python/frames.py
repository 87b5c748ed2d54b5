"""Figures for DataFrames in and out, each beside the check of what was
processed and the peak RSS of the process that did it (every phase runs in
its own subprocess, so ``ru_maxrss`` is that phase's alone):

* ``enqueue``: ``queue.enqueue_frame`` of N rows (keyed) into a 4-shard
  SQLite store, as rows/s;
* ``prompts``: the batch runner's main path, ``enqueue_frame(df,
  key=["batch_id", "input_text"])`` of N prompt rows into 4 shards, keyed
  by their text, beside the same rows unkeyed (``prompts_unkeyed``);
* ``process``: ``queue.process`` of M rows with a no-op function on 10
  threads, as rows/s (enqueue included: it is part of the call);
* ``results``: ``queue.results_frame`` of N finished rows, in seconds (the
  rows are finished beforehand, in another subprocess, by direct
  claim/complete calls).

    python benches/python/frames.py [--rows 1000000] [--process-rows 100000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from ferroq import Queue, task

HERE = Path(__file__).resolve()


@task(name="bench.frames.noop")
def noop(n: int, text: str) -> int:
    """Returns ``n``."""
    return n


def make_frame(rows: int) -> pl.DataFrame:
    """An int key and a short text per row."""
    return pl.DataFrame({"n": pl.int_range(rows, eager=True)}).with_columns(
        text=pl.format("input text for row {}", "n")
    )


def peak_rss_mb() -> float:
    """This process's peak resident set, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_baseline(url: str, rows: int) -> dict[str, Any]:
    """Peak RSS of importing ferroq and Polars and opening a store."""
    with Queue(url):
        pass
    return {"check": "ok", "rss_mb": peak_rss_mb()}


def phase_enqueue(url: str, rows: int) -> dict[str, Any]:
    """enqueue_frame of ``rows`` keyed rows."""
    df = make_frame(rows)
    with Queue(url) as q:
        t0 = time.perf_counter()
        summary = q.enqueue_frame(df, task=noop, key="n", batch="bench")
        dt = time.perf_counter() - t0
        queued = q.stats()[summary.queue]["queued"]
    ok = summary.inserted == rows and queued == rows
    return {
        "rows_per_s": rows / dt,
        "seconds": dt,
        "check": "ok" if ok else f"FAILED inserted={summary.inserted} queued={queued}",
        "rss_mb": peak_rss_mb(),
    }


@task(name="bench.frames.prompt")
def prompt(input_text: str) -> str:
    """Returns its prompt."""
    return input_text


def prompt_frame(rows: int) -> pl.DataFrame:
    """A batch of prompts as the batch runner keeps them: a batch id and
    a distinct text per row."""
    return pl.DataFrame({"i": pl.int_range(rows, eager=True)}).select(
        batch_id=pl.lit("batch-2026-12-01"),
        input_text=pl.format("Summarise support ticket #{} in one sentence.", "i"),
    )


def enqueue_prompts(url: str, rows: int, keyed: bool) -> dict[str, Any]:
    """enqueue_frame of ``rows`` prompts, keyed by (batch_id, input_text) or not."""
    df = prompt_frame(rows)
    key = ["batch_id", "input_text"] if keyed else None
    with Queue(url) as q:
        t0 = time.perf_counter()
        summary = q.enqueue_frame(df if keyed else df.select("input_text"), task=prompt,
                                  key=key, batch="prompts")
        dt = time.perf_counter() - t0
        queued = q.stats()[summary.queue]["queued"]
        # Keyed: sending the frame again stores nothing more.
        again = q.enqueue_frame(df, task=prompt, key=key, batch="prompts").inserted if keyed else 0
    ok = summary.inserted == rows and queued == rows and again == 0
    check = f"FAILED inserted={summary.inserted} queued={queued} again={again}"
    return {
        "rows_per_s": rows / dt,
        "seconds": dt,
        "check": "ok" if ok else check,
        "rss_mb": peak_rss_mb(),
    }


def phase_prompts(url: str, rows: int) -> dict[str, Any]:
    """The batch runner's keyed enqueue (see the module doc)."""
    return enqueue_prompts(url, rows, keyed=True)


def phase_prompts_unkeyed(url: str, rows: int) -> dict[str, Any]:
    """The same prompts without a key (the reference)."""
    return enqueue_prompts(url, rows, keyed=False)


def phase_process(url: str, rows: int) -> dict[str, Any]:
    """process() of ``rows`` rows with a no-op function on 10 threads."""
    df = make_frame(rows)
    with Queue(url) as q:
        t0 = time.perf_counter()
        out = q.process(noop, df, key="n", concurrency=10, progress=False)
        dt = time.perf_counter() - t0
    ok = (
        out.height == rows
        and out["status"].eq("done").all()
        and out["result"].eq(out["n"]).all()
        and out["attempts"].max() == 1
    )
    return {
        "rows_per_s": rows / dt,
        "seconds": dt,
        "check": "ok" if ok else "FAILED",
        "rss_mb": peak_rss_mb(),
    }


def phase_finish(url: str, rows: int) -> dict[str, Any]:
    """Setup for ``results``: enqueues ``rows`` rows and completes them."""
    df = make_frame(rows)
    with Queue(url) as q:
        summary = q.enqueue_frame(df, task=noop, key="n", batch="bench")
        store, worker = q._store, "bench-finisher"
        while True:
            got = store.claim(summary.queue, worker, 10_000, 600_000)
            if not got:
                break
            ids = [t.id for t in got]
            # The result of row n is {"n": n, "ok": true}: checked after reading.
            results = [b'J{"n":%s,"ok":true}' % t.key.encode() for t in got if t.key]
            store.complete_many(ids, worker, results)
        done = q.stats()[summary.queue]["done"]
    return {"check": "ok" if done == rows else f"FAILED done={done}", "rss_mb": peak_rss_mb()}


def phase_results(url: str, rows: int) -> dict[str, Any]:
    """results_frame of ``rows`` finished rows."""
    with Queue(url) as q:
        t0 = time.perf_counter()
        out = q.results_frame("bench")
        dt = time.perf_counter() - t0
    ok = (
        out.height == rows
        and out["n"].n_unique() == rows
        and out["result"].struct.field("n").eq(out["n"]).all()
        and out["result"].struct.field("ok").all()
    )
    return {"seconds": dt, "check": "ok" if ok else "FAILED", "rss_mb": peak_rss_mb()}


PHASES = {
    "baseline": phase_baseline,
    "enqueue": phase_enqueue,
    "prompts": phase_prompts,
    "prompts_unkeyed": phase_prompts_unkeyed,
    "process": phase_process,
    "finish": phase_finish,
    "results": phase_results,
}


def run_phase(name: str, url: str, rows: int) -> dict[str, Any]:
    """Runs one phase in a fresh interpreter; returns what it printed."""
    done = subprocess.run(
        [sys.executable, str(HERE), "--phase", name, "--url", url, "--rows", str(rows)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Runs every phase and prints one line per figure."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--process-rows", type=int, default=100_000)
    ap.add_argument("--dir", default=None, help="where the SQLite stores go (a temp dir)")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.url, args.rows)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        def url(name: str) -> str:
            return f"sqlite://{tmp}/{name}?shards=4"

        n, m = args.rows, args.process_rows
        base = run_phase("baseline", url("baseline"), 0)
        print(f"baseline  import ferroq + polars, open a store      "
              f"peak RSS {base['rss_mb']:>7,.0f} MB")
        r = run_phase("enqueue", url("enqueue"), n)
        print(f"enqueue   {n:>9,} rows enqueue_frame (4 shards) {r['rows_per_s']:>10,.0f} rows/s  "
              f"({r['seconds']:.2f} s)  peak RSS {r['rss_mb']:>7,.0f} MB  check={r['check']}")
        for phase, how in (("prompts", "keyed by text"), ("prompts_unkeyed", "no key")):
            r = run_phase(phase, url(phase), n)
            print(f"prompts   {n:>9,} prompt rows, {how:<13}  {r['rows_per_s']:>10,.0f} rows/s  "
                  f"({r['seconds']:.2f} s)  peak RSS {r['rss_mb']:>7,.0f} MB  check={r['check']}")
        r = run_phase("process", url("process"), m)
        print(f"process   {m:>9,} rows no-op, 10 threads      {r['rows_per_s']:>10,.0f} rows/s  "
              f"({r['seconds']:.2f} s)  peak RSS {r['rss_mb']:>7,.0f} MB  check={r['check']}")
        f = run_phase("finish", url("results"), n)
        if f["check"] != "ok":
            raise SystemExit(f"setup for results failed: {f['check']}")
        r = run_phase("results", url("results"), n)
        print(f"results   {n:>9,} rows results_frame          {r['seconds']:>10.2f} s       "
              f"        peak RSS {r['rss_mb']:>7,.0f} MB  check={r['check']}")


if __name__ == "__main__":
    main()
