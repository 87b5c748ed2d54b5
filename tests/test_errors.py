"""Every core error reaches Python as its own FerroqError subclass, and
numbers that cannot become a duration or a stored integer give a typed
error (or the documented meaning) instead of a panic or a bare builtin."""

from __future__ import annotations

import math
import threading
import time

import pytest

import ferroq
from ferroq import _core, _errors

# Each variant of ferroq_core::Error and the class it must become. A new
# variant fails test_every_core_error_has_its_class until it is listed here.
EXPECTED = {
    "NotFound": _errors.TaskNotFoundError,
    "LeaseLost": _errors.LeaseLostError,
    "AlreadyFinished": _errors.AlreadyFinishedError,
    "InvalidTransition": _errors.InvalidTransitionError,
    "InvalidArgument": _errors.InvalidArgumentError,
    "PayloadTooLarge": _errors.PayloadTooLargeError,
    "QueueFull": _errors.QueueFullError,
    "QueuePaused": _errors.QueuePausedError,
    "DuplicateKey": _errors.DuplicateKeyError,
    "Unavailable": _errors.StoreUnavailableError,
    "PermissionDenied": _errors.StorePermissionError,
    "NotAStore": _errors.NotAStoreError,
    "Corrupt": _errors.CorruptStoreError,
    "ShardMismatch": _errors.ShardMismatchError,
    "StoreInUse": _errors.StoreInUseError,
    "Storage": _errors.StoreError,
}


def test_every_core_error_has_its_class() -> None:
    samples = dict(_core._error_samples())
    assert set(samples) == set(EXPECTED)
    for variant, exc in samples.items():
        assert type(exc) is EXPECTED[variant], variant
        assert isinstance(exc, ferroq.FerroqError)
        assert str(exc), variant


def test_errors_naming_a_task_carry_its_id_and_status() -> None:
    samples = dict(_core._error_samples())
    for variant in ("LeaseLost", "AlreadyFinished", "InvalidTransition"):
        assert samples[variant].task_id == 7  # type: ignore[attr-defined]
        assert samples[variant].status in {"queued", "done"}  # type: ignore[attr-defined]


@pytest.fixture
def store() -> _core.Store:
    return _core.Store("memory://")


def test_a_closed_store_raises_a_ferroq_error(store: _core.Store) -> None:
    store.close()
    with pytest.raises(ferroq.StoreUnavailableError, match="closed"):
        store.counts()


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, -(2**70)])
def test_out_of_range_priority_is_invalid_argument(store: _core.Store, value: int) -> None:
    with pytest.raises(ferroq.InvalidArgumentError, match="out of range"):
        store.enqueue("q", "t", b"J[[],{}]", priority=value)
    assert store.counts() == []  # nothing stored half-way


def test_out_of_range_lease_and_capacity_are_invalid_argument(store: _core.Store) -> None:
    with pytest.raises(ferroq.InvalidArgumentError):
        store.claim("q", "w", lease_ms=10**30)
    with pytest.raises(ferroq.InvalidArgumentError):
        store.set_capacity("q", -1)
    with pytest.raises(ferroq.InvalidArgumentError):
        store.enqueue_many("q", "t", [b"J[[],{}]"] * 2, priority=[1, 2**63])
    assert store.counts() == []


def test_mismatched_batch_lengths_are_invalid_argument(store: _core.Store) -> None:
    with pytest.raises(ferroq.InvalidArgumentError, match="3 values for 2 tasks"):
        store.enqueue_many("q", "t", [b"J[[],{}]"] * 2, priority=[1, 2, 3])
    with pytest.raises(ferroq.InvalidArgumentError):
        store.complete_many([1, 2], "w", [b"J1"])
    with pytest.raises(ferroq.InvalidArgumentError):
        store.fail(1, "w", "boom", retry="sometimes")


def test_nan_waits_are_invalid_argument(store: _core.Store) -> None:
    (tid, _) = store.enqueue("q", "t", b"J[[],{}]")
    for call in (
        lambda: store.claim("q", "w", wait=math.nan),
        lambda: store.wait_finished(tid, math.nan),
        lambda: store.wait_for_change(0, math.nan),
        lambda: _core.TokenBucket(1.0).acquire(timeout=math.nan),
    ):
        with pytest.raises(ferroq.InvalidArgumentError, match="nan"):
            call()


def test_negative_waits_return_at_once(store: _core.Store) -> None:
    (tid, _) = store.enqueue("q", "t", b"J[[],{}]")
    assert store.wait_finished(tid, -5.0).status == "queued"
    assert store.claim("other", "w", wait=-1.0) == []
    assert store.wait_for_change(store.change_token(), -1.0) is False


@pytest.mark.parametrize("forever", [math.inf, 1e20, 1e300])
def test_infinite_and_huge_waits_wait_until_done(store: _core.Store, forever: float) -> None:
    """inf (and any span no clock reaches) means "until it happens"."""
    (tid, _) = store.enqueue("q", "t", b"J[[],{}]")

    def finish_later() -> None:
        time.sleep(0.2)
        (task,) = store.claim("q", "w")
        store.complete(task.id, "w", b"J1")

    threading.Thread(target=finish_later).start()
    assert store.wait_finished(tid, forever).status == "done"


def test_infinite_claim_wait_returns_when_work_arrives(store: _core.Store) -> None:
    threading.Timer(0.2, lambda: store.enqueue("q", "t", b"J[[],{}]")).start()
    got = store.claim("q", "w", wait=math.inf)
    assert len(got) == 1


def test_token_bucket_infinite_timeout_waits_for_a_token() -> None:
    bucket = _core.TokenBucket(10.0, 1.0)
    assert bucket.try_acquire()
    assert bucket.acquire(timeout=math.inf)  # the next token comes in 0.1 s
    assert bucket.acquire(timeout=1e20)


def test_unknown_backoff_strategy_is_invalid_argument() -> None:
    with pytest.raises(ferroq.InvalidArgumentError, match="unknown backoff strategy"):
        _core.backoff_delay_ms("cubic", 100, 2.0, 1000, 0.0, 1)


@pytest.mark.parametrize("bad", ["q\udc80", "\ud800"])
def test_lone_surrogates_are_invalid_argument(store: _core.Store, bad: str) -> None:
    with pytest.raises(ferroq.InvalidArgumentError, match="not valid Unicode"):
        store.enqueue(bad, "t", b"J[[],{}]")
    with pytest.raises(ferroq.InvalidArgumentError, match="not valid Unicode"):
        store.enqueue("q", "t", b"J[[],{}]", key=bad)
    with pytest.raises(ferroq.InvalidArgumentError, match="not valid Unicode"):
        store.get_by_key("q", bad)
    assert store.counts() == []
    q = ferroq.Queue("memory://")

    @q.task
    def noop() -> None:
        return None

    with pytest.raises(ferroq.InvalidArgumentError):
        noop.options(key=bad).send()
    with pytest.raises(ferroq.InvalidArgumentError):
        noop.options(queue=bad).send()
    assert q.stats() == {}


def test_out_of_range_ids_and_tokens_are_invalid_argument(store: _core.Store) -> None:
    for call in (
        lambda: store.get(2**70),
        lambda: store.get_many([1, 2**70]),
        lambda: store.wait_for_change(2**70, 0.0),
        lambda: store.register_worker("w", "h", -1, []),
        lambda: store.list_tasks(after_id=2**64),
        lambda: _core.ManualClock(2**70),
    ):
        with pytest.raises(ferroq.InvalidArgumentError):
            call()


def test_a_manual_clock_refuses_to_overflow() -> None:
    clock = _core.ManualClock(2**63 - 10)
    with pytest.raises(ferroq.InvalidArgumentError):
        clock.advance(1.0)
    assert clock.now_ms == 2**63 - 10  # unchanged
    clock = _core.ManualClock(0)
    clock.advance(5e15)  # 5e18 ms: fits
    with pytest.raises(ferroq.InvalidArgumentError):
        clock.advance(5e15)  # 1e19 ms: does not


def test_close_ends_waits_in_other_threads(tmp_path: object) -> None:
    store = _core.Store("memory://")
    (tid, _) = store.enqueue("q", "t", b"J[[],{}]")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            store.wait_finished(tid, math.inf)
        except BaseException as e:  # noqa: B036 - recorded for the assertion
            errors.append(e)

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for w in waiters:
        w.start()
    deadline = time.monotonic() + 5
    while store.waiting < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.waiting == 3
    store.close()
    for w in waiters:
        w.join(timeout=2)
    assert not any(w.is_alive() for w in waiters)
    assert len(errors) == 3 and all(isinstance(e, ferroq.StoreUnavailableError) for e in errors)
    assert store.waiting == 0


def test_lease_keeper_rejects_bad_text_and_ids() -> None:
    store = _core.Store("memory://")
    with pytest.raises(ferroq.InvalidArgumentError):
        _core.LeaseKeeper(store, "w\udc80", 1000, 0.1)
    keeper = _core.LeaseKeeper(store, "w", 1000, 0.1)
    with pytest.raises(ferroq.InvalidArgumentError):
        keeper.add([2**70])
    with pytest.raises(ferroq.InvalidArgumentError):
        _core.LeaseKeeper(store, "w", 1000, 1e-300)
    keeper.close()
