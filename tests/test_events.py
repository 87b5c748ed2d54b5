"""The event feed, followed from another process: a follower that records
every event it sees, is killed (SIGKILL) mid-way and restarted from its
persisted cursor, in the end has seen every transition exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import ferroq
from conftest import needs_pg, pg_url
from ferroq import _core

# The follower. Handling an event here means appending a line to its file;
# the line and the stored cursor cannot be written in one transaction, so
# the file is the record of what was handled: a restart resumes from the
# cursor of the file's last complete line when the store's cursor lags it
# (killed between the two writes). A torn last line was never handled.
FOLLOWER = r"""
import os, sys, time
from ferroq import _core

url, out = sys.argv[1], sys.argv[2]
store = _core.Store(url)
NAME = "test-follower"
last = None
if os.path.exists(out):
    with open(out, "rb") as f:
        data = f.read()
    good = data[: data.rfind(b"\n") + 1]
    with open(out, "wb") as f:
        f.write(good)
    lines = good.decode().splitlines()
    if lines:
        last = lines[-1].split("\t")[0]
cursor = store.event_cursor_get(NAME)
if last is not None and cursor != last:
    store.event_cursor_set(NAME, last)
    cursor = last
with open(out, "a", buffering=1) as f:
    print("ready", file=sys.stderr, flush=True)
    while True:
        token = store.change_token()
        events, _next = store.events(cursor, 7)
        for (c, at, task_id, queue, name, kind, old, new, worker, etype) in events:
            f.write(f"{c}\t{task_id}\t{kind}\t{old}\t{new}\t{worker}\t{etype}\n")
            f.flush()
            store.event_cursor_set(NAME, c)
            cursor = c
        if not events:
            store.wait_for_change(token, 0.05)
"""


def start_follower(url: str, out: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, url, str(out)],
        env=env,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline().strip() == b"ready"
    return proc


def lines(out: Path) -> list[list[str]]:
    if not out.exists():
        return []
    data = out.read_bytes()
    return [ln.split("\t") for ln in data[: data.rfind(b"\n") + 1].decode().splitlines()]


def wait_lines(out: Path, n: int, timeout: float = 30.0) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        got = lines(out)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


def produce(store: _core.Store, ids: list[int], rounds: int) -> None:
    """Sends, claims, completes and fails tasks: 3 or 5 events per task."""
    for _ in range(rounds):
        ids.extend(store.enqueue_many("q", "t", [b"x"] * 10, max_attempts=2)[0])
        for t in store.claim("q", "w", 10):
            if t.id % 3 == 0 and t.attempts == 1:
                store.fail(t.id, "w", '{"type": "ValueError", "message": "", "traceback": ""}', 0)
            else:
                store.complete(t.id, "w", b"r")


@pytest.mark.parametrize(
    "kind", ["sqlite-1", "sqlite-4", pytest.param("postgres", marks=needs_pg)]
)
def test_follower_in_another_process_sees_every_event_once_across_kills(
    kind: str, tmp_path: Path
) -> None:
    url = pg_url() if kind == "postgres" else f"sqlite://{tmp_path}/store?shards={kind[-1]}"
    store = _core.Store(url)
    out = tmp_path / "seen.tsv"
    ids: list[int] = []
    follower = start_follower(url, out)
    try:
        for _cycle in range(3):
            produce(store, ids, 5)
            # Killed once it is part-way through what was sent so far.
            wait_lines(out, len(ids))
            kill(follower)
            produce(store, ids, 2)
            follower = start_follower(url, out)
        # Finish everything still queued (the retried tasks).
        while True:
            batch = store.claim("q", "w", 50)
            if not batch:
                break
            for t in batch:
                store.complete(t.id, "w", b"r")
        retried = [i for i in ids if i % 3 == 0 and store.get(i).attempts == 2]
        expected = 3 * len(ids) + 2 * len(retried)
        seen = wait_lines(out, expected)
    finally:
        kill(follower)
    assert len(seen) == expected
    cursors = Counter(row[0] for row in seen)
    assert max(cursors.values()) == 1, "every event once"
    by_task: dict[int, list[str]] = {}
    for row in seen:
        by_task.setdefault(int(row[1]), []).append(row[2])
    assert sorted(by_task) == sorted(ids)
    for i in ids:
        want = ["sent", "claimed", "completed"]
        if i in retried:
            want = ["sent", "claimed", "retrying", "claimed", "completed"]
        assert by_task[i] == want, (i, by_task[i])
    # The retries carry the error's type.
    assert {row[6] for row in seen if row[2] == "retrying"} <= {"ValueError"}
    store.close()


def test_event_verbs_on_the_native_store(url: str) -> None:
    store = _core.Store(url)
    head = store.events_head()
    tid, _ = store.enqueue("q", "t", b"x")
    [task] = store.claim("q", "w", 1)
    store.complete(task.id, "w", b"r")
    assert store.ack_callbacks([tid]) == [None]
    deadline = time.monotonic() + 20
    while True:
        events, cursor = store.events(head, 100)
        if len(events) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert [e[5] for e in events] == ["sent", "claimed", "completed", "delivered"]
    assert events[1][6:9] == ("queued", "running", "w")
    assert events[-1][0] == cursor
    store.event_cursor_set("c", cursor)
    assert store.event_cursor_get("c") == cursor
    [err] = store.ack_callbacks([tid + 10_000 * 64])
    assert isinstance(err, ferroq.TaskNotFoundError)
    # Listen data: an equal value is not a change; consumers keep versions.
    v1 = store.listen_set("k", b"1")
    assert store.listen_set("k", b"1") == v1
    store.listen_cursor_set("sched", v1)
    assert store.listen_cursor_get("sched") == v1
    assert store.listen_cursor_get("other") is None
    assert [(k, v) for _ver, k, v, _at in store.listen_keys()] == [("k", b"1")]
    store.close()


def test_a_follower_ends_quietly_when_its_store_closes(tmp_path: Path) -> None:
    # close() wakes every waiter; a follower woken that way must end, not
    # raise "store is closed" on its thread (seen as a thread exception
    # failing an unrelated test).
    for i in range(5):
        q = ferroq.Queue(str(tmp_path / f"s{i}"))
        follower = q.follow(f"c{i}", lambda e: None).start()
        time.sleep(0.05)  # in its wait for a change
        q.close()
        assert follower._thread is not None
        follower._thread.join(5)
        assert not follower._thread.is_alive()
