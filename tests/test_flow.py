"""Flows (issue 15): chains, groups, chords and ``options(after=...)`` on
every backend, a chain that survives SIGKILL of its worker, and the checks
that refuse a bad flow before anything is stored."""

from __future__ import annotations

import collections
import signal
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, python_env, spawn_worker, wait_for
from ferroq import (
    FlowHandle,
    GroupFailedError,
    GroupHandle,
    InvalidArgumentError,
    Queue,
    QueueScheduler,
    TaskCancelledError,
    TaskNotFoundError,
    chain,
    chord,
    group,
    set_default_queue,
    task,
)
from ferroq.flow import FLOW_KEY
from ferroq.task_function import remote_task
from ferroq.testing import eager, run_until_empty

# Every run of a test task, by name, in this process (the in-process tests).
RAN: collections.Counter[str] = collections.Counter()


@task
def add(a: int, b: int) -> int:
    """a + b."""
    RAN["add"] += 1
    return a + b


@task
def double(x: int) -> int:
    """2x."""
    RAN["double"] += 1
    return 2 * x


@task
def square(x: int) -> int:
    """x squared."""
    return x * x


@task
def total(values: list[int], extra: int = 0) -> int:
    """The sum of a list (a chord callback), plus ``extra``."""
    RAN["total"] += 1
    return sum(values) + extra


@task
def ping() -> str:
    """Takes nothing: an immutable step."""
    RAN["ping"] += 1
    return "pong"


@task
def boom(*args: object) -> None:
    """Always fails."""
    RAN["boom"] += 1
    raise ValueError(f"boom {args!r}")


@pytest.fixture
def q(queue: Queue) -> Iterator[Queue]:
    set_default_queue(queue)
    RAN.clear()
    yield queue
    set_default_queue(None)


def count(q: Queue) -> int:
    return sum(sum(v.values()) for v in q.stats().values())


def test_a_chain_passes_each_result_to_the_next_step(q: Queue) -> None:
    h = chain(add.s(1, 2), double.s(), add.s(10), ping.si(), double.si(4)).send()
    assert isinstance(h, FlowHandle)
    assert [s.status() for s in h.steps] == ["queued"] + ["waiting"] * 4
    run_until_empty(q)
    assert h.result(0) == 8
    assert [s.result(0) for s in h.steps] == [3, 6, 16, "pong", 8]
    assert RAN == {"add": 2, "double": 2, "ping": 1}
    # Only steps that take a result are marked; ping.si() and the first are not.
    marks = [s.info().metadata for s in h.steps]
    assert [bool(m and FLOW_KEY in m) for m in marks] == [False, True, True, False, False]


def test_a_group_of_1000_returns_every_result(q: Queue) -> None:
    g = group([square.s(i) for i in range(1000)]).send()
    assert isinstance(g, GroupHandle) and len(g) == 1000
    with QueueScheduler(q, concurrency=4):
        results = g.results(timeout=150)
    assert results == [i * i for i in range(1000)]
    assert g.statuses() == ["done"] * 1000


def test_a_chord_gives_the_callback_every_result_in_order(q: Queue) -> None:
    h = chord(group([square.s(i) for i in range(10)]), total.s(extra=1)).send()
    # A chain with a group inside: each member gets the result before it,
    # the step after gets the list.
    h2 = chain(add.s(1, 1), group([add.s(1), add.s(2), chain(double.s(), double.s())]), total.s())
    h2_handle = h2.send()
    assert h.status() == "waiting"
    run_until_empty(q)
    assert h.result(0) == sum(i * i for i in range(10)) + 1
    assert h2_handle.result(0) == 3 + 4 + 8
    assert RAN["total"] == 2


def test_partial_failures_of_a_group_are_reported_with_the_other_results(q: Queue) -> None:
    g = group([square.s(1), boom.s("x"), square.s(3), boom.s("y")]).send()
    run_until_empty(q)
    with pytest.raises(GroupFailedError) as err:
        g.results(timeout=0)
    assert err.value.results == [1, None, 9, None]
    assert err.value.failed == [1, 3]
    assert isinstance(err.value.errors[1], ValueError) and "'x'" in str(err.value.errors[1])
    got = g.results(timeout=0, return_exceptions=True)
    assert got[0] == 1 and got[2] == 9
    assert isinstance(got[1], ValueError) and isinstance(got[3], ValueError)


def test_a_failed_step_stops_the_chain_with_its_own_error(q: Queue) -> None:
    h = chain(add.s(1, 2), boom.s(), double.s(), double.s()).send()
    run_until_empty(q)
    assert [s.status() for s in h.steps] == ["done", "failed", "cancelled", "cancelled"]
    assert h.info().raw.error == f"dependency {h.steps[2].id} ended cancelled"
    with pytest.raises(ValueError, match="boom \\(3,\\)"):
        h.result(0)
    assert RAN == {"add": 1, "boom": 1}
    # A chord whose member fails: the callback never runs, its handle
    # raises the member's error.
    c = chord([square.s(2), boom.s("m")], total.s()).send()
    run_until_empty(q)
    assert c.status() == "cancelled"
    with pytest.raises(ValueError, match="boom \\('m',\\)"):
        c.result(0)
    assert RAN["total"] == 0


def test_cancel_of_a_flow_cancels_its_pending_steps(q: Queue) -> None:
    h = chain(add.s(1, 2), double.s(), double.s()).send()
    assert h.cancel() == "cancelled"
    assert [s.status() for s in h.steps] == ["cancelled"] * 3
    assert run_until_empty(q) == 0
    with pytest.raises(TaskCancelledError):
        h.result(0)
    # Cancelled mid-way: the finished step stays done, the rest end cancelled.
    h = chain(add.options(queue="first").s(1, 2), double.s(), double.s()).send()
    assert run_until_empty(q, queues=["first"]) == 1
    assert h.cancel() == "cancelled"
    assert [s.status() for s in h.steps] == ["done", "cancelled", "cancelled"]
    g = group([square.s(i) for i in range(5)]).send()
    g.cancel()
    assert g.statuses() == ["cancelled"] * 5
    assert run_until_empty(q) == 0
    assert RAN == {"add": 1}


def test_after_a_task_already_done_runs_and_after_a_failed_one_is_cancelled(q: Queue) -> None:
    parent = q.send(add, 1, 2)
    bad = q.send(boom, "p")
    run_until_empty(q)
    ok = double.options(after=[parent]).send(21)
    assert ok.status() == "queued"  # its parent is done already
    gone = double.options(after=[parent, bad]).send(1)
    assert gone.status() == "cancelled"
    assert gone.info().raw.error == f"dependency {bad.id} ended failed"
    run_until_empty(q)
    assert ok.result(0) == 42  # plain dependency: no result passed
    with pytest.raises(ValueError, match="boom"):
        gone.result(0)
    # A dependency still to run: waiting until it is done.
    later = q.send(add, 2, 2)
    dep = double.options(after=[later], priority=5).send(3)
    assert dep.status() == "waiting"
    run_until_empty(q)
    assert (later.result(0), dep.result(0)) == (4, 6)


def test_result_without_timeout_waits_through_the_waiting_status(
    q: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # result() with no timeout waits in slices; a step still ``waiting`` for
    # its parent is unfinished like a queued one, never a timeout. (Short
    # slices here, so that several pass while the step waits.)
    import ferroq.handle

    monkeypatch.setattr(ferroq.handle, "_FOREVER_SLICE", 0.05)
    parent = q.send(add, 1, 2)
    child = double.options(after=[parent]).send(4)
    got: list[object] = []

    def wait_for_child() -> None:
        try:
            got.append(child.result())
        except Exception as e:  # the assertion below shows it
            got.append(e)

    waiter = threading.Thread(target=wait_for_child)
    waiter.start()
    waiter.join(0.5)  # slices pass while the child waits for its parent
    assert child.status() == "waiting"
    with QueueScheduler(q, queues=["default"]):
        waiter.join(60)
    assert got == [8]


def test_after_across_shards(tmp_path: Path) -> None:
    q = Queue(f"sqlite://{tmp_path}/store?shards=4")
    set_default_queue(q)
    try:
        parents = [q.send(add, i, i) for i in range(12)]
        # One task on each of several queues: the shards get different parents.
        parents += [add.options(queue=f"q{i}").send(i, 0) for i in range(8)]
        child = total.options(after=parents).send([1])
        failing = [q.send(boom, "s")] + [add.options(queue=f"q{i}").send(1, 1) for i in range(4)]
        doomed = double.options(after=failing).send(1)
        assert (child.status(), doomed.status()) == ("waiting", "waiting")
        # A SQLite task's shard is its id modulo the shard count.
        assert {p.id % 4 for p in parents} == {0, 1, 2, 3}
        assert len({p.id % 4 for p in failing}) > 1
        assert q._store.dependencies([child.id])[0] == [p.id for p in parents]
        queues = ["default", *(f"q{i}" for i in range(8))]
        run_until_empty(q, queues=queues)
        # Releases across shards happen after commit, or in the sweep of recover.
        q._store.recover()
        run_until_empty(q, queues=queues)
        assert child.result(0) == 1
        assert doomed.status() == "cancelled"
        with pytest.raises(ValueError, match="boom"):
            doomed.result(0)
    finally:
        set_default_queue(None)
        q.close()


def test_bad_flows_are_refused_before_anything_is_stored(q: Queue) -> None:
    before = count(q)
    with pytest.raises(InvalidArgumentError):
        chain()
    with pytest.raises(InvalidArgumentError):
        group([])
    with pytest.raises(InvalidArgumentError):
        group([add.s(1, 2), "not a signature"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError):
        chain(add.s(1, 2), 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="delay"):
        chain(add.s(1, 2), double.options(delay=5).s()).send()
    with pytest.raises(InvalidArgumentError, match="after"):
        double.options(after="12").send(1)
    with pytest.raises(InvalidArgumentError, match="after"):
        double.send(1, after=[1])  # type: ignore[call-arg]
    with pytest.raises(TaskNotFoundError):
        chain(add.s(1, 2), double.s()).send(after=[10**12])
    with eager(), pytest.raises(InvalidArgumentError, match="eager"):
        chain(add.s(1, 2), double.s()).send()
    # Not iterables, and a queue that is not one: typed errors, not TypeError
    # or AttributeError from inside.
    with pytest.raises(InvalidArgumentError, match="group"):
        group(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="group"):
        group(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="group"):
        chord(None, total.s())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="takes a Queue"):
        chain(add.s(1, 2), double.s()).send("default")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="takes a Queue"):
        group([add.s(1, 2)]).send(q.url)  # type: ignore[arg-type]
    assert count(q) == before


def test_after_refuses_a_handle_of_another_store(q: Queue, tmp_path: Path) -> None:
    # A handle's id means a task of its own store only: in another store the
    # same id is some other task (or none), so a dependency on it is refused
    # rather than made on the wrong task.
    other = Queue(f"sqlite://{tmp_path}/other-store")
    try:
        theirs = other.send(add, 1, 1)
        ours = q.send(add, 2, 2)
        before = count(q)
        with pytest.raises(InvalidArgumentError, match="another store"):
            double.options(after=[theirs]).send(1)
        with pytest.raises(InvalidArgumentError, match="another store"):
            chain(add.s(1, 2), double.s()).send(q, after=[theirs])
        assert count(q) == before
        if q.url.startswith("memory"):
            return  # each memory:// queue is a store of its own
        # The same store opened twice is the same store.
        again = Queue(q.url)
        try:
            h = double.options(after=[again.handle(ours.id)]).send(1)
            assert q._store.dependencies([h.id])[0] == [ours.id]
        finally:
            again.close()
    finally:
        other.close()


FLOW_APP = '''
"""Steps of the chain the SIGKILL test runs in a worker subprocess."""
import os
import time
from pathlib import Path

from ferroq import current_task, task

LOG = Path(os.environ["FLOW_LOG"])
GATE = Path(os.environ["FLOW_GATE"])


def _log(tag, step):
    with LOG.open("a") as f:
        f.write(f"{tag} {step} {current_task().attempt} {os.getpid()}\\n")


@task(retries=3)
def step(value, n):
    _log("start", n)
    if n == 3:
        # The kill comes while this step runs (its first attempt waits here).
        while not GATE.exists():
            time.sleep(0.02)
    _log("end", n)
    return value + [n]
'''


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_chain_survives_sigkill_of_its_worker_and_finishes_once(
    tmp_path: Path, mode: str
) -> None:
    (tmp_path / "flowapp.py").write_text(textwrap.dedent(FLOW_APP))
    log, gate = tmp_path / "log.txt", tmp_path / "gate"
    env = {
        "FLOW_LOG": str(log),
        "FLOW_GATE": str(gate),
        "PYTHONPATH": f"{tmp_path}:{ROOT / 'tests'}:{python_env().get('PYTHONPATH', '')}",
    }
    url = str(tmp_path / "store")
    q = Queue(url)
    step = remote_task("flowapp:step", "json")
    h = chain(step.s([], 1), *(step.s(n) for n in range(2, 7))).send(q)

    def rows() -> list[tuple[str, int, int, int]]:
        if not log.exists():
            return []
        out = []
        for line in log.read_text().splitlines():
            tag, n, attempt, pid = line.split()
            out.append((tag, int(n), int(attempt), int(pid)))
        return out

    first = spawn_worker(url, "--lease", "1", "--mode", mode, modules=("flowapp",), **env)
    try:
        wait_for(lambda: ("start", 3, 1) in [r[:3] for r in rows()], 60, "step 3 to start")
        assert [s.status() for s in h.steps][3:] == ["waiting"] * 3
    finally:
        first.kill()
        first.communicate(timeout=10)
    gate.touch()
    second = spawn_worker(url, "--lease", "1", "--mode", mode, modules=("flowapp",), **env)
    try:
        assert h.result(timeout=90) == [1, 2, 3, 4, 5, 6]
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
    got = rows()
    ends = collections.Counter(n for tag, n, _, _ in got if tag == "end")
    starts = collections.Counter(n for tag, n, _, _ in got if tag == "start")
    # Every step finished exactly once; only the step the kill interrupted
    # started twice (its second attempt, in the second worker).
    assert ends == {n: 1 for n in range(1, 7)}
    assert starts == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1}
    pids = {(tag, n, attempt): pid for tag, n, attempt, pid in got}
    assert pids[("end", 2, 1)] != pids[("end", 3, 2)]
    assert [s.status() for s in h.steps] == ["done"] * 6
    assert h.steps[2].info().attempts == 2
    q.close()


@task
async def adouble(x: int) -> int:
    """2x, as a coroutine."""
    return 2 * x


def test_a_chain_runs_in_asyncio_mode(disk_url: str) -> None:
    q = Queue(disk_url)
    set_default_queue(q)
    try:
        h = chain(add.s(2, 3), adouble.s(), double.s(), adouble.s()).send()
        with QueueScheduler(q, mode="asyncio"):
            assert h.result(timeout=60) == 40
    finally:
        set_default_queue(None)
        q.close()


def test_queue_send_explicit_form_takes_after(queue: Queue) -> None:
    @queue.task
    def parent() -> int:
        return 1

    @queue.task
    def child(x: int) -> int:
        return x

    first = parent.send()
    second = queue.send(child, args=[5], after=[first])
    assert queue.get(second.id).status == "waiting"  # type: ignore[union-attr]
    with QueueScheduler(queue):
        assert second.result(timeout=10) == 5
