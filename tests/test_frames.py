"""DataFrames in and out: enqueue_frame, results_frame, process() (threads,
asyncio, qps, Ctrl+C and SIGKILL resume), on every backend the `queue`
fixture gives; what users of a DataFrame batch runner expect (the function
given is the one run, rows alone, one input column passed positionally,
failed rows re-run, one batch however a job is started, completion order,
Ctrl+C that returns). with_resilience has tests/test_resilience.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Optional

import polars as pl
import pytest
from pydantic import BaseModel

from conftest import PG_URL, python_env, store_url
from ferroq import InvalidArgumentError, Queue, SerializationError, with_resilience

DISK = ["sqlite-1", "sqlite-4", pytest.param("postgres", marks=pytest.mark.skipif(
    not PG_URL, reason="FERROQ_TEST_PG_URL is not set"))]


def measure(text: str, n: int) -> dict[str, int]:
    return {"n": n, "chars": len(text)}


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"n": range(n), "text": [f"row {i}" for i in range(n)]})


def test_round_trip_10k_rows(queue: Queue) -> None:
    df = frame(10_000)
    out = queue.process(measure, df, key="n", concurrency=10, progress=False)
    assert out.height == 10_000
    assert out["status"].unique().to_list() == ["done"]
    assert out.schema["n"] == pl.Int64
    assert out["attempts"].max() == 1
    checked = out.select(
        ok=(pl.col("result").struct.field("n") == pl.col("n"))
        & (pl.col("result").struct.field("chars") == pl.format("row {}", "n").str.len_chars())
    )
    assert checked["ok"].all()
    again = queue.results_frame(f"{__name__}:measure")
    assert again.sort("n").equals(out.sort("n"))


def count_enqueue_calls(queue: Queue, monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    """Replaces the queue's store by one that records the rows of each
    ``enqueue_many`` call (and forwards everything)."""
    calls: list[int] = []
    real = queue._store.enqueue_many

    class Spy:
        def __getattr__(self, name: str) -> object:
            return getattr(real.__self__, name)

        def enqueue_many(self, *a, **kw):  # type: ignore[no-untyped-def]
            calls.append(len(a[2]))
            return real(*a, **kw)

    monkeypatch.setattr(queue, "_store", Spy())
    return calls


def test_enqueue_is_one_store_call_and_idempotent(queue: Queue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = count_enqueue_calls(queue, monkeypatch)
    task = queue.task(measure)
    df = frame(3_000)
    first = queue.enqueue_frame(df, task=task, key="n", batch="b")
    assert (first.inserted, first.skipped, first.rows) == (3_000, 0, 3_000)
    assert calls == [3_000]
    again = queue.enqueue_frame(df, task=task, key="n", batch="b")
    assert (again.inserted, again.skipped) == (0, 3_000)
    more = queue.enqueue_frame(frame(4_000), task=task, key="n", batch="b")
    assert (more.inserted, more.skipped) == (1_000, 3_000)
    assert queue.stats()["batch:b"]["queued"] == 4_000


def test_large_frames_go_in_calls_of_bounded_size(queue: Queue, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("ferroq.frames._CHUNK_ROWS", 700)
    monkeypatch.setattr("ferroq.frames._CHUNK_BYTES", 20_000)
    calls = count_enqueue_calls(queue, monkeypatch)
    task = queue.task(measure)
    df = frame(2_000)  # about 32 bytes of payload a row: 20,000 bytes is 631 rows
    assert queue.enqueue_frame(df, task=task, key="n", batch="c").inserted == 2_000
    assert sum(calls) == 2_000 and len(calls) >= 4 and max(calls) <= 631
    assert queue.enqueue_frame(df, task=task, key="n", batch="c").skipped == 2_000


def echo_keys(**row: object) -> int:
    return 1


def test_key_columns_of_several_types_come_back_typed(queue: Queue) -> None:
    df = pl.DataFrame({
        "i": [3, 1, 2],
        "s": ["b", 'quote " and , comma', "é"],
        "d": [dt.date(2024, 1, 31), dt.date(1999, 12, 1), dt.date(2024, 2, 29)],
        "t": [dt.datetime(2024, 1, 1, 12, 30, 0, 5), dt.datetime(2020, 5, 5),
              dt.datetime(1970, 1, 1)],
        "c": pl.Series(["x", "y", "z"], dtype=pl.Categorical),
    })
    for key in (["i"], ["s"], ["d"], ["t"], ["c"], ["i", "s", "d"]):
        batch = "keys-" + "-".join(key)
        out = queue.process(echo_keys, df, key=key, batch=batch, progress=False, concurrency=2)
        got = out.select(key).sort(key)
        assert got.equals(df.select(key).sort(key)), (key, got)
    # One column: the key is the value's text, so it can be looked up.
    assert queue.get_by_key("2024-01-31", queue="batch:keys-d") is not None
    assert queue.get_by_key('quote " and , comma', queue="batch:keys-s") is not None
    assert queue.get_by_key("3", queue="batch:keys-i") is not None
    multi = queue.get_by_key('{"i":3,"s":"b","d":"2024-01-31"}', queue="batch:keys-i-s-d")
    assert multi is not None


class Scored(BaseModel):
    name: str
    score: int
    day: dt.date
    tags: list[str] = []
    note: Optional[str] = None


def score(name: str) -> dict[str, object]:
    if name == "bad":
        return {"name": name, "score": "not a number", "day": "2024-01-01"}
    if name == "worse":
        return {"name": name}
    return {"name": name, "score": len(name), "day": "2024-03-0" + str(len(name) % 9 + 1),
            "tags": [name[:1]]}


def test_pydantic_model_validates_into_typed_columns(queue: Queue) -> None:
    names = ["ann", "bad", "bob", "carol", "worse"] + [f"p{i}" for i in range(200)]
    out = queue.process(score, pl.DataFrame({"name": names}), progress=False, model=Scored)
    assert out.height == len(names)
    assert out.schema["score"] == pl.Int64
    assert out.schema["day"] == pl.Date
    assert out.schema["tags"] == pl.List(pl.String)
    assert out.schema["name"] == pl.String
    bad = out.filter(pl.col("validation_error").is_not_null()).sort("row")
    assert bad["row"].to_list() == [1, 4]
    assert "score" in bad["validation_error"][0]
    assert "day" in bad["validation_error"][1] and "score" in bad["validation_error"][1]
    assert bad["score"].null_count() == 2
    good = out.filter(pl.col("validation_error").is_null())
    assert good.height == len(names) - 2
    carol = good.filter(pl.col("name") == "carol")
    assert carol["score"].item() == 5 and carol["day"].item() == dt.date(2024, 3, 6)
    assert carol["tags"].item().to_list() == ["c"]


class Typed(BaseModel):
    value: int


def typed_result(x: int) -> Typed:
    return Typed(value=x * 3)


def test_process_uses_the_return_annotation_as_model(queue: Queue) -> None:
    out = queue.process(typed_result, pl.DataFrame({"x": [1, 2]}), progress=False)
    assert out["value"].to_list() == [3, 6]
    assert out["validation_error"].null_count() == 2


def flaky_row(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"no {x}")
    return x


def test_failed_rows_are_reported_not_dropped(queue: Queue) -> None:
    out = queue.process(flaky_row, pl.DataFrame({"x": range(20)}), retries=0, progress=False)
    failed = out.filter(pl.col("status") == "failed")
    assert failed["row"].to_list() == [0, 5, 10, 15]
    assert failed["error"].to_list()[1] == "ValueError: no 5"
    assert out.filter(pl.col("status") == "done")["result"].sum() == sum(
        x for x in range(20) if x % 5)
    only_done = queue.results_frame(f"{__name__}:flaky_row", include="done")
    assert only_done.height == 16


def size_of(blob: str, n: int) -> dict[str, int]:
    return {"n": n, "size": len(blob)}


def test_rows_of_a_few_hundred_kb(queue: Queue) -> None:
    blobs = [chr(ord("a") + i % 26) * (300_000 + i) for i in range(24)]
    df = pl.DataFrame({"blob": blobs, "n": range(24)})
    out = queue.process(size_of, df, key="n", progress=False, concurrency=4)
    assert out.height == 24
    sizes = out.select(pl.col("result").struct.field("size"), "n").sort("n")
    assert sizes["size"].to_list() == [300_000 + i for i in range(24)]


def shout(text: str) -> str:
    return text.upper()


def test_key_columns_the_function_does_not_take_only_key_rows(queue: Queue) -> None:
    df = pl.DataFrame({"order": ["o-2", "o-1"], "text": ["b", "a"]})
    out = queue.process(shout, df, key="order", progress=False).sort("order")
    assert out.select("order", "result").rows() == [("o-1", "A"), ("o-2", "B")]


def test_bad_frames_are_refused_before_anything_is_stored(queue: Queue) -> None:
    task = queue.task(measure)
    with pytest.raises(InvalidArgumentError, match="not parameters"):
        queue.enqueue_frame(pl.DataFrame({"text": ["a"], "n": [1], "x": [2]}), task=task)
    with pytest.raises(InvalidArgumentError, match="needs parameters"):
        queue.enqueue_frame(pl.DataFrame({"text": ["a"]}), task=task)
    with pytest.raises(InvalidArgumentError, match="not in the frame"):
        queue.enqueue_frame(frame(2), task=task, key="nope")
    with pytest.raises(InvalidArgumentError, match="null"):
        queue.enqueue_frame(pl.DataFrame({"text": ["a", "b"], "n": [1, None]}), task=task, key="n")
    with pytest.raises(SerializationError, match="binary"):
        queue.enqueue_frame(pl.DataFrame({"text": [b"a"], "n": [1]}), task=task)
    assert queue.stats() == {}
    queue.enqueue_frame(frame(2), task=task, key="n", batch="k")
    with pytest.raises(InvalidArgumentError, match="key columns"):
        queue.enqueue_frame(frame(2), task=task, key=["n", "text"], batch="k")
    with pytest.raises(InvalidArgumentError, match="needs a batch"):
        queue.results_frame()


def test_empty_frame_and_empty_batch(queue: Queue) -> None:
    task = queue.task(measure)
    summary = queue.enqueue_frame(frame(0), task=task, key="n", batch="e")
    assert (summary.inserted, summary.skipped) == (0, 0)
    out = queue.results_frame("nothing-here", model=Scored)
    assert out.height == 0 and out.schema["day"] == pl.Date


# -- rate limits and resilience ------------------------------------------------


def max_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_qps_holds_across_threads() -> None:
    calls: list[float] = []
    lock = threading.Lock()

    def call_api(n: int) -> int:
        with lock:
            calls.append(time.monotonic())
        return n

    with Queue("memory://") as q:
        out = q.process(call_api, pl.DataFrame({"n": range(45)}), qps=15, concurrency=8,
                        progress=False)
    assert out.height == 45 and len(calls) == 45
    # The bucket allows a burst of 1 on top of the rate: no one-second window
    # (sliding, starting at any call) sees more than qps + 1 calls.
    assert max_in_any_second(calls) <= 16, max_in_any_second(calls)


def test_with_resilience_async_and_rate_limited() -> None:
    seen: list[float] = []

    @with_resilience(qps=20, max_retries=2, base_delay=0.001)
    async def call(i: int) -> int:
        seen.append(time.monotonic())
        if i == 0 and len(seen) < 2:
            raise asyncio.TimeoutError()
        if i == 1:
            raise TypeError("no")  # a programming error: not retried
        return i

    async def main() -> list[object]:
        return await asyncio.gather(*(call(i) for i in range(30)), return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] == 0 and isinstance(results[1], TypeError)
    assert results[2:] == list(range(2, 30))
    assert len(seen) == 31  # one retry of row 0, none of row 1
    assert max_in_any_second(seen) <= 21


# -- asyncio ---------------------------------------------------------------------


class Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.max = 0


gauge = Gauge()


async def slow_call(n: int) -> int:
    gauge.now += 1
    gauge.max = max(gauge.max, gauge.now)
    await asyncio.sleep(0.3)
    gauge.now -= 1
    return n


@pytest.mark.parametrize("kind", ["memory", "sqlite-4"])
def test_async_function_runs_200_in_flight(kind: str, tmp_path: Path) -> None:
    gauge.now = gauge.max = 0
    with Queue(store_url(kind, tmp_path)) as q:
        out = q.process(slow_call, pl.DataFrame({"n": range(1_000)}), concurrency=200,
                        progress=False)
    assert out.height == 1_000 and out["status"].unique().to_list() == ["done"]
    assert gauge.max == 200


# -- progress, and no Polars ------------------------------------------------------


def test_progress_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with Queue("memory://") as q:
        q.process(flaky_row, pl.DataFrame({"x": range(1, 11)}), retries=0, batch="bar")
    err = capsys.readouterr().err
    assert "bar" in err and "10/10" in err and "8 done" in err and "2 failed" in err
    assert "ETA" in err


def test_import_without_polars_and_a_clear_error(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["polars"] = None  # as if it were not installed
        import ferroq
        q = ferroq.Queue("memory://")
        try:
            q.results_frame("b")
        except ImportError as e:
            print("refused:", e)
    """)
    done = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'ferroq[frames]'" in done.stdout


# -- stopping and resuming a run in another process -----------------------------

RUN = textwrap.dedent("""
    import os, sys, time
    import polars as pl
    from ferroq import Queue

    LOG = sys.argv[2]

    def work(n: int) -> int:
        time.sleep(0.004)
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"%d\\n" % n)
        os.close(fd)
        return n * 2

    if __name__ == "__main__":
        q = Queue(sys.argv[1])
        df = pl.DataFrame({"n": range(int(sys.argv[3]))})
        out = q.process(work, df, key="n", concurrency=4, progress=False, grace=30)
        assert out.height == df.height and (out["result"] == out["n"] * 2).all(), out
        print("finished", out.height)
""")
ROWS = 1_500


def run_script(tmp_path: Path, url: str) -> subprocess.Popen[str]:
    script = tmp_path / "run.py"
    script.write_text(RUN)
    return subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "calls.log"), str(ROWS)],
        env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def executions(tmp_path: Path) -> list[int]:
    log = tmp_path / "calls.log"
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def stop_midway(tmp_path: Path, url: str, sig: int) -> None:
    proc = run_script(tmp_path, url)
    deadline = time.monotonic() + 60
    while len(executions(tmp_path)) < ROWS // 4:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0  # stopped, not finished
    assert len(set(executions(tmp_path))) < ROWS


def resume(tmp_path: Path, url: str) -> None:
    proc = run_script(tmp_path, url)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"finished {ROWS}" in out
    q = Queue(url)
    try:
        # Named after the module the script's file is (run.py), not __main__.
        res = q.results_frame("run:work")
    finally:
        q.close()
    assert res.height == ROWS and res["n"].n_unique() == ROWS
    assert res["status"].unique().to_list() == ["done"]


@pytest.mark.parametrize("kind", DISK)
def test_ctrl_c_then_rerun_runs_the_rest_once(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    stop_midway(tmp_path, url, signal.SIGINT)
    before = executions(tmp_path)
    assert len(before) == len(set(before))
    resume(tmp_path, url)
    calls = executions(tmp_path)
    assert set(calls) == set(range(ROWS))
    # Ctrl+C lets running rows finish and puts claimed ones back: none twice.
    assert len(calls) == ROWS, len(calls) - ROWS


@pytest.mark.parametrize("kind", DISK)
def test_sigkill_then_rerun_runs_the_rest(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    stop_midway(tmp_path, url, signal.SIGKILL)
    resume(tmp_path, url)
    calls = executions(tmp_path)
    assert set(calls) == set(range(ROWS))
    # Only rows in flight at the kill run twice: those running, and those
    # finished but with results not yet stored (each of the 4 threads stores
    # the results of its claimed batch, at most 32 rows, together).
    twice = len(calls) - ROWS
    assert 0 <= twice <= 4 * 32, twice



# -- what users of a DataFrame batch runner expect ---------------------------------


def summarize_v1(text: str) -> str:
    return "v1:" + text


def summarize_v2(text: str) -> str:
    return "v2:" + text


def test_process_runs_the_function_given_or_refuses(queue: Queue) -> None:
    df = pl.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "c"]})
    queue.enqueue_frame(df, task=summarize_v1, key="id", batch="sum")
    with pytest.raises(InvalidArgumentError, match="summarize_v1.*rebind=True"):
        queue.process(summarize_v2, batch="sum", progress=False)
    assert queue.stats()["batch:sum"]["queued"] == 3  # nothing ran
    with pytest.raises(InvalidArgumentError, match="summarize_v1"):
        queue.process(summarize_v2, df, key="id", batch="sum", progress=False)
    out = queue.process(summarize_v2, batch="sum", rebind=True, progress=False).sort("id")
    assert out["result"].to_list() == ["v2:a", "v2:b", "v2:c"]
    # The function the rows were enqueued for runs them as before.
    again = queue.process(summarize_v1, pl.DataFrame({"id": [4], "text": ["d"]}), key="id",
                          batch="sum", progress=False).sort("id")
    assert again["result"].to_list() == ["v2:a", "v2:b", "v2:c", "v1:d"]


def my_processor(text: str) -> str:
    return text.upper()


def test_rows_alone_and_the_input_column_positionally(queue: Queue) -> None:
    # The batch runner's rows: batch_id, input_text; the worker's one
    # parameter is not called input_text.
    df = pl.DataFrame({"batch_id": ["B1", "B1", "B2"], "input_text": ["x", "y", "x"]})
    summary = queue.enqueue_frame(df, key=["batch_id", "input_text"], batch="rows")
    assert (summary.inserted, summary.skipped) == (3, 0)
    assert queue.enqueue_frame(df, key=["batch_id", "input_text"], batch="rows").skipped == 3
    out = queue.process(my_processor, batch="rows", progress=False, concurrency=2)
    got = sorted(out.select("batch_id", "input_text", "result").rows())
    assert got == [("B1", "x", "X"), ("B1", "y", "Y"), ("B2", "x", "X")]
    # With the function at enqueue time, the payload is positional: any
    # worker can run it, not only process().
    direct = queue.process(my_processor, df, key=["batch_id", "input_text"], batch="direct",
                           progress=False)
    assert sorted(direct["result"].to_list()) == ["X", "X", "Y"]
    with pytest.raises(InvalidArgumentError, match="batch="):
        queue.enqueue_frame(df)
    with pytest.raises(InvalidArgumentError, match="needs parameters"):
        queue.process(measure, batch="rows", progress=False)  # parameters not in the rows


class Switch:
    broken = True
    calls: list[int] = []


def fragile(n: int) -> int:
    Switch.calls.append(n)
    if Switch.broken and n % 3 == 0:
        raise RuntimeError("the API key expired")
    return n * 10


def test_failed_rows_run_again_when_asked(queue: Queue) -> None:
    Switch.broken, Switch.calls = True, []
    df = pl.DataFrame({"n": range(9)})
    out = queue.process(fragile, df, key="n", retries=0, progress=False)
    assert out.filter(pl.col("status") == "failed")["n"].to_list() == [0, 3, 6]
    Switch.broken, Switch.calls = False, []  # the cause is fixed
    again = queue.process(fragile, df, key="n", retries=0, progress=False)
    assert Switch.calls == [] and again.filter(pl.col("status") == "failed").height == 3
    fixed = queue.process(fragile, df, key="n", retries=0, progress=False, retry_failed=True)
    assert sorted(Switch.calls) == [0, 3, 6]  # only the failed rows ran again
    assert fixed["status"].unique().to_list() == ["done"]
    assert fixed.sort("n")["result"].to_list() == [n * 10 for n in range(9)]


def slow_by(n: int, wait: float) -> int:
    time.sleep(wait)
    return n


def test_results_in_completion_order_with_finish_times(queue: Queue) -> None:
    df = pl.DataFrame({"n": [0, 1, 2], "wait": [0.9, 0.0, 0.4]})
    out = queue.process(slow_by, df, key="n", concurrency=3, order="finished", progress=False)
    assert out["n"].to_list() == [1, 2, 0]
    assert out.schema["finished_at"] == pl.Datetime("ms", "UTC")
    assert out["finished_at"].is_sorted() and out["finished_at"].null_count() == 0
    assert out["result"].to_list() == [1, 2, 0]
    typed = queue.results_frame(f"{__name__}:slow_by", order="finished", model=Typed)
    assert typed["n"].to_list() == [1, 2, 0]


JOB = textwrap.dedent("""
    import os, sys
    import polars as pl
    from ferroq import Queue

    def work(n: int) -> int:
        fd = os.open(os.environ["CALLS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"%d\\n" % n)
        os.close(fd)
        return n

    def main() -> None:
        q = Queue(os.environ["STORE"])
        out = q.process(work, pl.DataFrame({"n": range(20)}), progress=False)
        print("batch", q.stats() and sorted(q.stats()), out.height)
        q.close()

    if __name__ == "__main__":
        main()
""")


def test_a_job_run_as_a_script_or_imported_is_one_batch(tmp_path: Path) -> None:
    pkg = tmp_path / "jobs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(JOB)
    env = {**python_env(), "STORE": str(tmp_path / "store"), "CALLS": str(tmp_path / "calls")}
    runs = [
        [sys.executable, str(pkg / "job.py")],  # python jobs/job.py
        [sys.executable, "-m", "jobs.job"],  # python -m jobs.job
        [sys.executable, "-c", "import jobs.job as j; j.main()"],  # imported as jobs.job
        [sys.executable, "-c", "import job; job.main()"],  # imported as job, from jobs/
    ]
    outs = []
    for i, cmd in enumerate(runs):
        done = subprocess.run(cmd, cwd=pkg if i == 3 else tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout.strip())
    assert outs == ["batch ['batch:job:work'] 20"] * 4, outs
    calls = (tmp_path / "calls").read_text().split()
    assert sorted(int(c) for c in calls) == list(range(20))  # each row ran once


STOPPABLE = textwrap.dedent("""
    import os, sys, time
    import polars as pl
    from ferroq import Queue

    def work(n: int) -> int:
        fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"%d\\n" % n)
        os.close(fd)
        time.sleep(0.3)
        return n

    if __name__ == "__main__":
        q = Queue(sys.argv[1])
        out = q.process(work, pl.DataFrame({"n": range(200)}), concurrency=4, grace=30,
                        on_interrupt="return", progress="plain")
        done = out.filter(pl.col("status") == "done").height
        print("returned", out.height, done, q.stats()["batch:run:work"]["done"])
""")


def test_ctrl_c_can_return_what_is_done(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(STOPPABLE)
    log = tmp_path / "calls.log"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"), str(log)],
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not log.exists() or len(log.read_text().split()) < 8:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # returned, not raised
    _, height, done, stored = out.split()
    started = len(log.read_text().split())
    # Every row that started finished in the grace period, and is returned.
    assert int(done) == int(height) == int(stored) == started < 200
    assert "stopped with" in err
    # The last progress line counts the rows finished during the grace period.
    last = [line for line in err.splitlines() if "/200" in line][-1]
    assert f"{started}/200" in last, last
