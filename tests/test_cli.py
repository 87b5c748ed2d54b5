"""The ``ferroq`` command: real ``ferroq`` processes for the worker (drained
with --burst, stopped with SIGTERM), ``stats --watch`` and the one-line
errors; click's CliRunner on real SQLite stores (and PostgreSQL when
$FERROQ_TEST_PG_URL is set) for the rest; docs/cli.md generated from the
commands themselves (``python tests/test_cli.py`` rewrites it).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import click
import pytest
from click.testing import CliRunner, Result

import ferroq
from conftest import ROOT, needs_pg, pg_url, python_env, wait_for
from ferroq import Queue, QueueScheduler
from ferroq.cli import cli, main
from ferroq.cli._common import mask, sqlite_dir
from ferroq.testing import run_until_empty

FERROQ = Path(sys.executable).with_name("ferroq")
REFERENCE = ROOT / "docs" / "cli.md"


def ferroq_cmd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the installed ``ferroq`` entry point."""
    return subprocess.run(
        [str(FERROQ), *args], env=python_env(**env), capture_output=True, text=True, timeout=120
    )


def invoke(*args: str, input: Optional[str] = None, env: Optional[dict[str, str]] = None) -> Result:
    """Runs ``ferroq ARGS`` in this process with click's runner; a crash
    (an exception other than the exit) fails the test with its traceback."""
    runner = CliRunner(env={"FERROQ_URL": None, **(env or {})})
    result = runner.invoke(cli, list(args), input=input, prog_name="ferroq")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line_error(result: Result, code: int = 1) -> str:
    """The single stderr line of a failed command (asserted to be one)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferroq: "), result.stderr
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[str, Queue]]:
    """A real two-shard SQLite store (URL with a query string) and a queue on it."""
    url = f"sqlite://{tmp_path}/store?shards=2"
    with Queue(url) as q:
        yield url, q


def fill(q: Queue) -> dict[str, list[int]]:
    """Done, failed and queued tasks in two queues, run to the end."""

    @q.task(name="jobs.add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @q.task(name="jobs.boom", queue="mail")
    def boom(text: str) -> None:
        raise ValueError(f"bad {text}")

    done = [add.send(i, b=1).id for i in range(3)]
    failed = [boom.send(f"m{i}").id for i in range(2)]
    run_until_empty(q)
    later = [add.options(delay=3600).send(9).id]
    return {"done": done, "failed": failed, "later": later}


# -- real processes ----------------------------------------------------------------


def test_version_from_the_entry_point_and_python_m() -> None:
    for argv in ([str(FERROQ), "--version"], [sys.executable, "-m", "ferroq", "--version"]):
        out = subprocess.run(argv, env=python_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"ferroq {ferroq.__version__}"


def test_worker_burst_drains_the_store_and_exits(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/burst?shards=4"
    with Queue(url) as q:
        ids, _ = q._store.enqueue_many(
            "default", "app.tasks:add", [b"J[[%d,%d],{}]" % (i, i) for i in range(300)]
        )
        other, _ = q._store.enqueue("other", "app.tasks:shout", b'J[["hi"],{}]')
        delayed, _ = q._store.enqueue(
            "default", "app.tasks:add", b"J[[1,1],{}]", run_at=q._store.now_ms() + 3_600_000
        )
    out = ferroq_cmd("worker", "app.tasks", "--url", url, "--burst", "-c", "2")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "burst: nothing ready or running" in out.stderr
    with Queue(url) as q:
        counts = q.stats()["default"]
        assert (counts["queued"], counts["running"], counts["done"]) == (1, 0, 300)
        assert sum(counts.values()) == 301
        results = {r.id: r.result for r in q.list(status="done", limit=1000)}
        assert [results[i] for i in ids] == [2 * i for i in range(300)]
        shouted = q.get(other)
        assert shouted is not None and shouted.result == "HI"
        late = q.get(delayed)
        assert late is not None and late.status == "queued"  # not due: left for later
        assert q.workers() == []  # deregistered on the way out


def test_worker_killed_with_sigterm_exits_cleanly(tmp_path: Path) -> None:
    url = str(tmp_path / "term")
    log = tmp_path / "log.txt"
    with Queue(url) as q:
        q._store.enqueue_many(
            "default", "app.tasks:slow", [b"J[[%d,0.05],{}]" % i for i in range(200)],
            max_attempts=4,
        )
    worker = subprocess.Popen(
        [str(FERROQ), "worker", "app.tasks", "--url", url, "-c", "4"],
        env=python_env(FERROQ_TEST_LOG=str(log)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: log.exists() and log.read_text().count("end") >= 8, 60, "tasks to run")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "Traceback" not in err and "signal 15: stopping" in err
    with Queue(url) as q:
        counts = q.stats()["default"]
        assert counts["running"] == 0  # finished or given back, none left held
        assert counts["done"] + counts["queued"] == 200
        assert counts["done"] == log.read_text().count("end")
        assert q.workers() == []


def test_stats_watch_redraws_until_ctrl_c(store: tuple[str, Queue]) -> None:
    url, q = store
    fill(q)
    proc = subprocess.Popen(
        [str(FERROQ), "stats", "--url", url, "--watch", "0.1"],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    frames = 0
    seen = []
    while frames < 3:
        line = proc.stdout.readline()
        assert line, "stats --watch ended on its own"
        seen.append(line)
        frames += line.startswith("queue ")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    failed = next(line for line in seen if line.startswith("queue ")).split().index("failed")
    rows = [line.split() for line in seen if line.startswith("mail ")]
    assert len(rows) >= 2 and all(r[failed] == "2" for r in rows)  # every frame


def test_a_typo_is_one_line_from_the_real_command(tmp_path: Path) -> None:
    for args in (["stats"], ["tasks", "list"], ["workers"], ["queues"], ["purge", "-y"],
                 ["dashboard"], ["tasks", "cancel", "1"]):
        out = ferroq_cmd(*args, "--url", str(tmp_path / "stroe"))
        assert out.returncode == 1, (args, out.stderr)
        assert out.stderr.startswith("ferroq: no ferroq store at"), out.stderr
        assert len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "stroe").exists()
    bad = ferroq_cmd("tasks", "show", "seven", "--url", str(tmp_path))
    assert bad.returncode == 2 and "'seven' is not a valid integer" in bad.stderr
    assert "Traceback" not in bad.stderr
    nomod = ferroq_cmd("worker", "app.nosuch", "--url", str(tmp_path / "w"), "--burst")
    assert nomod.returncode == 1 and "Traceback" not in nomod.stderr
    assert nomod.stderr.splitlines()[-1] == (
        "ferroq: no module named 'app.nosuch' (run from the directory that holds it, "
        "or set PYTHONPATH)"
    )


def test_a_reader_that_goes_away_ends_the_listing_quietly(tmp_path: Path) -> None:
    url = str(tmp_path / "many")
    with Queue(url) as q:  # far more than a pipe's buffer of table lines
        q._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"] * 3000)
    proc = subprocess.Popen(
        [str(FERROQ), "tasks", "list", "--url", url, "--limit", "3000"],
        env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().split()[0] == "ID"  # like `| head -1`
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert err == ""


def test_a_postgresql_password_is_never_printed() -> None:
    # Nothing listens on port 1: the connection fails, and the error names the URL.
    out = ferroq_cmd("stats", "--url", "postgresql://ops:hunter2secret@127.0.0.1:1/q")
    assert out.returncode == 1
    assert "hunter2secret" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1


# -- CliRunner on real stores --------------------------------------------------------


def test_main_returns_exit_codes(
    store: tuple[str, Queue], capsys: pytest.CaptureFixture[str]
) -> None:
    url, q = store
    fill(q)
    assert main(["stats", "--url", url]) == 0
    assert main(["tasks", "show", "999999", "--url", url]) == 1
    assert main(["tasks", "show", "x", "--url", url]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    err = capsys.readouterr().err
    assert "ferroq: no task 999999" in err and "Traceback" not in err


def test_url_from_the_environment(store: tuple[str, Queue]) -> None:
    url, q = store
    fill(q)
    result = invoke("stats", env={"FERROQ_URL": url})
    assert result.exit_code == 0 and "mail" in result.stdout
    missing = invoke("stats")
    assert missing.exit_code == 2 and "give --url or set FERROQ_URL" in missing.stderr


def test_stats_json(store: tuple[str, Queue]) -> None:
    url, q = store
    fill(q)
    doc = json.loads(invoke("stats", "--url", url, "--json").stdout)
    assert doc["default"]["done"] == 3 and doc["default"]["queued"] == 1
    assert doc["mail"]["failed"] == 2 and doc["mail"]["workers"] == 0
    assert invoke("stats", "--url", url, "--json", "--watch").exit_code == 2


def test_tasks_list_filters(store: tuple[str, Queue]) -> None:
    url, q = store
    ids = fill(q)
    keyed = q.put("hand", {"prompt": "ok?"}, key="k-1").id

    def listed(*args: str) -> list[int]:
        result = invoke("tasks", "list", "--url", url, "--json", *args)
        assert result.exit_code == 0, result.output
        return [r["id"] for r in json.loads(result.stdout)]

    assert listed() == sorted([*ids["done"], *ids["failed"], *ids["later"], keyed])
    assert listed("--status", "failed") == ids["failed"]
    assert listed("--queue", "mail") == ids["failed"]
    assert listed("--name", "jobs.add", "--status", "queued") == ids["later"]
    assert listed("--key", "k-1", "--queue", "hand") == [keyed]
    assert listed("--limit", "2") == sorted(ids["done"])[:2]
    assert listed("--after", str(max(ids["failed"]))) == sorted([*ids["later"], keyed])
    table = invoke("tasks", "list", "--url", url, "--status", "failed")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "QUEUE", "NAME", "STATUS"]
    assert [int(line.split()[0]) for line in lines[1:]] == ids["failed"]
    assert all(" jobs.boom " in line and " failed " in line for line in lines[1:])
    full = invoke("tasks", "list", "--url", url, "--limit", "1")
    assert "--after" in full.stderr
    assert invoke("tasks", "list", "--url", url, "--status", "lost").exit_code == 2


def test_tasks_show_decodes_and_shows_the_traceback(store: tuple[str, Queue]) -> None:
    url, q = store
    ids = fill(q)
    q.set_metadata(ids["done"][1], {"owner": "ops", "n": 2})
    done = invoke("tasks", "show", str(ids["done"][1]), "--url", url)
    assert done.exit_code == 0
    fields = dict(
        (line[:12].strip(), line[12:]) for line in done.stdout.splitlines() if line[:1] != " "
    )
    assert fields["status"] == "done"
    assert fields["args"] == "[1]" and fields["kwargs"] == '{"b": 1}'
    assert fields["result"] == "2"
    assert fields["metadata"] == '{"owner": "ops", "n": 2}'
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z", fields["finished"])
    failed = invoke("tasks", "show", str(ids["failed"][0]), "--url", url)
    assert "error       builtins.ValueError: bad m0" in failed.stdout
    assert "traceback:" in failed.stdout and 'raise ValueError(f"bad {text}")' in failed.stdout
    doc = json.loads(invoke("tasks", "show", str(ids["failed"][0]), "--url", url, "--json").stdout)
    assert doc["status"] == "failed" and doc["attempts"] == 1 and doc["args"] == ["m0"]
    assert doc["error"] == "bad m0" and doc["error_type"] == "builtins.ValueError"
    assert "ValueError: bad m0" in doc["traceback"]
    assert doc["finished_at"].endswith("+00:00")
    put = q.put("hand", {"prompt": "ok?"}).id
    shown = json.loads(invoke("tasks", "show", str(put), "--url", url, "--json").stdout)
    assert shown["payload"] == {"prompt": "ok?"} and "args" not in shown
    assert one_line_error(invoke("tasks", "show", "424242", "--url", url)) == (
        "ferroq: no task 424242"
    )


def test_verbs_by_id(store: tuple[str, Queue]) -> None:
    url, q = store
    ids = fill(q)
    failed, later, done = ids["failed"][0], ids["later"][0], ids["done"][0]
    result = invoke("tasks", "retry", str(failed), "--url", url)
    assert result.exit_code == 0 and result.stdout.startswith(f"task {failed}: queued")
    rec = q.get(failed)
    assert rec is not None and rec.status == "queued" and rec.attempts == 0
    assert invoke("tasks", "cancel", str(failed), str(later), "--url", url).exit_code == 0
    assert {q.get(i).status for i in (failed, later)} == {"cancelled"}  # type: ignore[union-attr]
    assert invoke("tasks", "requeue", str(done), "--url", url).exit_code == 0
    assert q.get(done).status == "queued"  # type: ignore[union-attr]
    assert invoke("tasks", "delete", str(later), "--url", url).exit_code == 0
    assert q.get(later) is None
    # One bad id among good ones: the others still move, each failure named, exit 1.
    mixed = invoke("tasks", "delete", str(failed), "999999", str(done), "--url", url)
    assert mixed.exit_code == 1
    assert mixed.stdout == f"task {failed}: deleted\n"
    assert mixed.stderr.splitlines() == [
        "ferroq: task 999999: no such task",
        f"ferroq: task {done}: " + mixed.stderr.splitlines()[1].split(": ", 2)[2],
    ]
    assert q.get(done) is not None  # a queued task is not deleted


def test_cancel_a_running_task_politely_or_by_force(store: tuple[str, Queue]) -> None:
    url, q = store
    a = q.put("hand", "a").id
    b = q.put("hand", "b").id
    assert q.claim("hand") is not None and q.claim("hand") is not None
    asked = invoke("tasks", "cancel", str(a), "--url", url)
    assert "cancel requested" in asked.stdout
    rec = q.get(a)
    assert rec is not None and rec.status == "running" and rec.cancel_requested
    forced = invoke("tasks", "cancel", str(b), "--force", "--url", url)
    assert forced.stdout == f"task {b}: cancelled\n"


def test_bulk_retry_asks_first(store: tuple[str, Queue]) -> None:
    url, q = store
    ids = fill(q)
    no = invoke("tasks", "retry", "--status", "failed", "--queue", "mail", "--url", url,
                input="n\n")
    assert no.exit_code == 1 and "Retry 2 failed task(s) in queue 'mail'?" in no.stderr
    assert q.stats()["mail"]["failed"] == 2
    yes = invoke("tasks", "retry", "--status", "failed", "--queue", "mail", "--name",
                 "jobs.boom", "--url", url, input="y\n")
    assert yes.exit_code == 0 and yes.stdout.endswith("retry: 2 task(s)\n")
    assert [q.get(i).status for i in ids["failed"]] == ["queued", "queued"]  # type: ignore[union-attr]
    none = invoke("tasks", "retry", "--status", "failed", "--url", url)
    assert none.stdout == "no failed tasks in any queue\n"


def test_bulk_cancel_delete_and_requeue(store: tuple[str, Queue]) -> None:
    url, q = store
    ids = fill(q)
    cancel = invoke("tasks", "cancel", "-s", "queued", "-q", "default", "-y", "--url", url)
    assert cancel.stdout == "cancel: 1 task(s)\n"
    requeue = invoke("tasks", "requeue", "-s", "done", "-n", "jobs.add", "-y", "--url", url)
    assert requeue.stdout == "requeue: 3 task(s)\n"
    assert q.stats()["default"]["queued"] == 3
    delete = invoke("tasks", "delete", "-s", "failed", "-y", "--url", url)
    assert delete.stdout == "delete: 2 task(s)\n"
    assert all(q.get(i) is None for i in ids["failed"])
    both = invoke("tasks", "delete", "1", "--status", "done", "--url", url)
    assert both.exit_code == 2 and "not both" in both.stderr
    neither = invoke("tasks", "delete", "--url", url)
    assert neither.exit_code == 2 and "--status" in neither.stderr


def test_queues_list_and_capacity(store: tuple[str, Queue]) -> None:
    url, q = store
    fill(q)
    q.set_queue_options("hand", serial=True, answer_timeout=30, retention=3600)
    assert invoke("queues", "capacity", "mail", "5", "--url", url).stdout == (
        "queue 'mail': capacity 5\n"
    )
    assert q.capacity("mail") == 5
    assert invoke("queues", "capacity", "mail", "--url", url).stdout.endswith("capacity 5\n")
    rows = {r["queue"]: r for r in json.loads(invoke("queues", "--url", url, "--json").stdout)}
    assert set(rows) == {"default", "mail", "hand"}
    assert rows["mail"]["capacity"] == 5 and rows["mail"]["failed"] == 2
    assert rows["hand"]["serial"] and rows["hand"]["answer_timeout"] == 30
    text = invoke("queues", "list", "--url", url).stdout.splitlines()
    hand = next(line for line in text if line.startswith("hand "))
    assert "serial, answer in 30s then requeue, keep 3600s" in hand
    assert invoke("queues", "capacity", "mail", "none", "--url", url).exit_code == 0
    assert q.capacity("mail") is None
    assert invoke("queues", "capacity", "mail", "-3", "--url", url).exit_code == 2


@pytest.mark.skipif(not hasattr(Queue, "pause"), reason="pause lands with the pause work")
def test_queues_pause_and_resume(store: tuple[str, Queue]) -> None:
    url, q = store
    fill(q)
    assert invoke("queues", "pause", "mail", "--url", url).exit_code == 0
    rows = {r["queue"]: r for r in json.loads(invoke("queues", "--url", url, "--json").stdout)}
    assert rows["mail"]["paused"] and not rows["default"]["paused"]
    q._store.enqueue("mail", "jobs.boom", q.encode([["x"], {}]))
    assert q.claim("mail") is None  # a paused queue hands out nothing
    assert invoke("queues", "resume", "mail", "--url", url).exit_code == 0
    assert q.claim("mail") is not None


def test_workers_shows_the_running_tasks(store: tuple[str, Queue]) -> None:
    url, q = store
    release = threading.Event()

    @q.task(name="jobs.hold")
    def hold() -> None:
        release.wait(30)

    handles = [hold.send() for _ in range(2)]
    with QueueScheduler(q, concurrency=2, queues=["default"]) as s:
        try:
            wait_for(lambda: q.stats()["default"]["running"] == 2, 30, "two tasks running")
            rows = json.loads(invoke("workers", "--url", url, "--json").stdout)
            assert len(rows) == 1
            (w,) = rows
            assert w["id"] == s.worker_id and w["alive"] and w["queues"] == ["default"]
            assert sorted(w["running"]) == sorted(h.id for h in handles)
            assert w["heartbeat_at"].endswith("+00:00")
            text = invoke("workers", "--url", url).stdout.splitlines()
            assert text[0].split() == ["WORKER", "STATE", "LAST", "HEARTBEAT", "QUEUES", "RUNNING"]
            assert text[1].startswith(s.worker_id) and " alive " in text[1]
        finally:
            release.set()
    assert invoke("workers", "--url", url).stdout == "no workers registered\n"


def test_purge_asks_then_deletes_finished_tasks(store: tuple[str, Queue]) -> None:
    url, q = store
    fill(q)
    no = invoke("purge", "--older-than", "0", "--url", url, input="n\n")
    assert no.exit_code == 1 and q.stats()["default"]["done"] == 3
    yes = invoke("purge", "--older-than", "0", "--url", url, input="y\n")
    assert yes.exit_code == 0 and yes.stdout.endswith("deleted 5 task(s)\n")
    counts = q.stats()
    assert counts["default"]["done"] == 0 and counts["default"]["queued"] == 1


def test_check_and_backup(store: tuple[str, Queue], tmp_path: Path) -> None:
    url, q = store
    fill(q)
    checked = invoke("check", "--url", url)
    assert checked.exit_code == 0 and checked.stdout.count("ok ") == 2
    dest = tmp_path / "copy"
    assert invoke("backup", str(dest), "--url", url).stdout == f"backed up to {dest}\n"
    with Queue(str(dest)) as copy:
        assert copy.stats() == q.stats()
    again = invoke("backup", str(dest), "--url", url)
    one_line_error(again)  # the directory is not empty any more


def test_store_paths_are_read_as_the_store_reads_them(tmp_path: Path) -> None:
    spaced = tmp_path / "my store"
    Queue(f"sqlite://{tmp_path}/my%20store?shards=2").close()
    assert (spaced / "shard-001.db").exists()
    assert invoke("stats", "--url", f"sqlite://{tmp_path}/my%20store?shards=2").exit_code == 0
    # A bare path is taken as written: no percent-decoding.
    literal = tmp_path / "a%20b"
    Queue(str(literal)).close()
    assert invoke("stats", "--url", str(literal)).exit_code == 0
    assert sqlite_dir(f"sqlite://{tmp_path}/x?shards=4") == f"{tmp_path}/x"
    assert sqlite_dir("memory://") is None and sqlite_dir("postgresql://u@h/db?schema=s") is None
    scheme = one_line_error(invoke("stats", "--url", "ftp://host/q"))
    assert "unknown store scheme" in scheme


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_serves_the_store_until_ctrl_c(store: tuple[str, Queue]) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    url, q = store
    fill(q)
    port = free_port()
    server = subprocess.Popen(
        [str(FERROQ), "dashboard", "--url", url, "--port", str(port), "--inbox", "hand"],
        env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        page: list[str] = []

        def loaded() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                page.append(r.read().decode())
            return True

        wait_for(loaded, 60, "the dashboard to answer", retry_on=(OSError,))
        assert "mail" in page[-1]  # the store's queues, from the real page
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert "Traceback" not in err
    refused = ferroq_cmd("dashboard", "--url", url, "--host", "0.0.0.0")
    assert refused.returncode == 1 and "without a token" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


def test_dashboard_without_its_extra_is_one_line(store: tuple[str, Queue]) -> None:
    url, _ = store
    # The dashboard's web stack made unimportable, as when the extra is not installed.
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "sys.modules['uvicorn'] = None\n"
        "from ferroq.cli import main\n"
        f"sys.exit(main(['dashboard', '--url', {url!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("ferroq: the dashboard needs its extra") and (
        "pip install 'ferroq[dashboard]'" in out.stderr
    )
    assert len(out.stderr.splitlines()) == 1


def test_mask_hides_passwords() -> None:
    assert mask("cannot reach postgresql://ops:s3cr%40t@db:5432/q?schema=a") == (
        "cannot reach postgresql://ops:***@db:5432/q?schema=a"
    )
    assert mask("host=db password=hunter2 user=ops") == "host=db password=*** user=ops"
    assert mask("sqlite:///tmp/q?shards=4") == "sqlite:///tmp/q?shards=4"


@needs_pg
def test_operating_a_postgresql_store() -> None:
    url = pg_url()
    with Queue(url) as q:
        ids = fill(q)
        doc = json.loads(invoke("stats", "--url", url, "--json").stdout)
        assert doc["mail"]["failed"] == 2
        listed = json.loads(invoke("tasks", "list", "-s", "failed", "--json", "--url", url).stdout)
        assert [r["id"] for r in listed] == ids["failed"]
        assert invoke("tasks", "retry", "-s", "failed", "-y", "--url", url).exit_code == 0
        assert q.stats()["mail"]["queued"] == 2



@needs_pg
def test_a_worker_on_postgresql_logs_its_url_without_the_password() -> None:
    # The test server trusts local connections: any password is accepted, and must not show.
    scheme, rest = pg_url().split("://", 1)
    user, at, host = rest.partition("@")
    if not at or ":" in user:
        pytest.skip("the test URL names no user, or has a password already")
    url = f"{scheme}://{user}:pg-Secret-42@{host}"
    with Queue(url) as q:
        q._store.enqueue("default", "app.tasks:add", b"J[[1,2],{}]")
    out = ferroq_cmd("worker", "app.tasks", "--url", url, "--burst")
    assert out.returncode == 0, out.stderr
    assert "ferroq:***@" in out.stderr and "pg-Secret-42" not in out.stderr + out.stdout


# -- logs and metrics of the worker --------------------------------------------------


def test_worker_logs_json_lines(tmp_path: Path) -> None:
    url = str(tmp_path / "logs")
    with Queue(url) as q:
        q._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"] * 3)
    out = ferroq_cmd("worker", "app.tasks", "--url", url, "--burst", "--log-format", "json",
                     "--log-level", "debug")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert any(r["message"].startswith("worker ") for r in records)
    finished = [r for r in records if r.get("task_name") == "app.tasks:add"]
    assert len(finished) == 3 and all(r["queue"] == "default" for r in finished)


def test_worker_serves_metrics(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    url = str(tmp_path / "metrics")
    with Queue(url) as q:
        q._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"] * 5)
    worker = subprocess.Popen(
        [str(FERROQ), "worker", "app.tasks", "--url", url, "--metrics-port", "0"],
        env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert worker.stderr is not None
        port = None
        while port is None:
            line = worker.stderr.readline()
            assert line, "the worker ended before serving metrics"
            m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            port = int(m.group(1)) if m else None

        def scraped() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return str(r.read().decode())

        wait_for(lambda: Queue(url).stats()["default"]["done"] == 5, 30, "tasks done")
        text = scraped()
        assert "ferroq_" in text
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0


# -- help and the reference page -----------------------------------------------------


def commands(cmd: click.Command = cli, path: tuple[str, ...] = ("ferroq",)) -> Iterator[
    tuple[tuple[str, ...], click.Command]
]:
    """Every command under ``cmd``, depth first, with its path."""
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in cmd.commands:  # the order of the help's command list
            yield from commands(cmd.commands[name], (*path, name))


def test_every_command_and_option_has_help() -> None:
    names = [" ".join(path) for path, _ in commands()]
    for expected in ("worker", "stats", "tasks list", "tasks show", "tasks cancel",
                     "tasks retry", "tasks requeue", "tasks delete", "queues", "queues pause",
                     "queues resume", "queues capacity", "workers", "purge", "check",
                     "backup", "dashboard"):
        assert f"ferroq {expected}" in names
    for path, cmd in commands():
        assert cmd.help, path
        # The line shown in its group's command list is whole, not cut off.
        assert not cmd.get_short_help_str(limit=60).endswith("..."), path
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert param.help, (path, param.name)
    top = invoke("--help").stdout
    assert "Examples:" in top and "ferroq worker app.tasks" in top


def reference() -> str:
    """docs/cli.md: a short introduction, then every command's help."""
    out = [
        "# Command line",
        "",
        "<!-- Generated from the commands' help by tests/test_cli.py; do not edit:",
        "     change the help text and run `python tests/test_cli.py`. -->",
        "",
        "`ferroq` (also `python -m ferroq`) runs workers, and shows and operates a",
        "store from a shell. Every command takes `--url`; without it the",
        "`FERROQ_URL` environment variable names the store. Only `ferroq worker`",
        "creates a store: every other command refuses a path where none exists, so",
        "a typo is an error rather than an empty queue.",
        "",
        "Exit codes: 0 on success; 1 for a failure, told in one line on stderr",
        "(`ferroq: ...`, never a traceback); 2 for a usage error (an unknown",
        "option, an id that is not a number). A PostgreSQL password is never",
        "printed: URLs in messages show it as `***`. Times are shown in UTC.",
        "",
    ]
    contexts: dict[tuple[str, ...], click.Context] = {}
    for path, cmd in commands():
        settings = {**cmd.context_settings, "terminal_width": 88, "max_content_width": 88}
        ctx = click.Context(cmd, info_name=path[-1], parent=contexts.get(path[:-1]), **settings)
        contexts[path] = ctx
        out += [f"## `{' '.join(path)}`", "", "```text", cmd.get_help(ctx), "```", ""]
    return "\n".join(out)


def _comparable(page: str) -> str:
    """The page without what differs between click releases alone (whether
    a group whose command is optional shows ``[COMMAND]`` or ``COMMAND``)."""
    return page.replace("[COMMAND]", "COMMAND")


def test_the_reference_page_is_current() -> None:
    assert _comparable(REFERENCE.read_text()) == _comparable(reference()), (
        "docs/cli.md is stale: run `python tests/test_cli.py` to regenerate it"
    )


if __name__ == "__main__":
    REFERENCE.write_text(reference())
    print(f"wrote {REFERENCE.relative_to(ROOT)}")


def test_schedules_lists_periodic_tasks_with_next_and_last_run(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    Queue(url).close()
    out = ferroq_cmd("schedules", "app.periodic_tasks", "--url", url)
    assert out.returncode == 0, out.stderr
    [line] = [ln for ln in out.stdout.splitlines() if "nightly_report" in ln]
    assert "0 3 * * * (Europe/Paris)" in line and "skip" in line and line.endswith("never")
    assert "T03:00:00+0" in line  # the next run, at 03:00 Paris time
    as_json = ferroq_cmd("schedules", "app.periodic_tasks", "--url", url, "--json")
    listed = json.loads(as_json.stdout)
    assert [s["name"] for s in listed] == ["app.periodic_tasks:nightly_report"]
    assert listed[0]["queue"] == "nightly" and listed[0]["last_run"] is None
    missing = ferroq_cmd("schedules", "app.nowhere", "--url", url)
    assert missing.returncode == 1 and "no module named" in missing.stderr
    nostore = ferroq_cmd("schedules", "app.periodic_tasks", "--url", str(tmp_path / "typo"))
    assert nostore.returncode == 1 and "no ferroq store" in nostore.stderr


def test_reshard_copies_a_stopped_store_into_a_new_shard_count(tmp_path: Path) -> None:
    src, dest = str(tmp_path / "one"), str(tmp_path / "four")
    with Queue(src) as q:
        ids, _ = q._store.enqueue_many("default", "app.tasks:add", [b"J[[1,2],{}]"] * 50)
        keyed = q.put("prompts", {"p": 1}, key="k1").id
    out = ferroq_cmd("reshard", dest, "--shards", "4", "--url", src)
    assert out.returncode == 0, out.stderr
    assert "copied 51 tasks from 1 to 4 shards" in out.stdout
    renumbered = dict(
        (int(a), int(b))
        for a, b in (ln.split()[1::2] for ln in out.stdout.splitlines() if "->" in ln)
    )
    with Queue(dest) as q:
        assert q.stats()["default"]["queued"] == 50
        assert all(q.get(renumbered.get(i, i)) is not None for i in ids)
        record = q.get_by_key("k1", "prompts")
        assert record is not None and record.id == renumbered.get(keyed, keyed)
    again = ferroq_cmd("reshard", dest, "--shards", "2", "--url", src)
    assert again.returncode == 1 and again.stderr.startswith("ferroq:")
    assert "Traceback" not in again.stderr


def test_a_module_that_is_not_a_module_name_is_a_usage_error(tmp_path: Path) -> None:
    Queue(str(tmp_path / "s")).close()
    url = str(tmp_path / "s")
    for bad in ("../../etc", "", "app/tasks.py", ".tasks", "app..tasks"):
        for command in ("schedules", "worker"):
            args = [command, bad, "--url", url] + (["--burst"] if command == "worker" else [])
            result = invoke(*args)
            assert result.exit_code == 2, (command, bad, result.output)
            assert "not a module name" in result.stderr, result.stderr
    real = ferroq_cmd("worker", "app/tasks.py", "--url", url, "--burst")
    assert real.returncode == 2 and "Traceback" not in real.stderr
    assert "'app/tasks.py' is not a module name" in real.stderr
