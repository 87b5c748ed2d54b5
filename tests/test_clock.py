"""A store opened with a ManualClock reads its time from it: delays, leases
and deadlines move only when the clock does, with no sleeping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import ferroq
from conftest import store_url
from ferroq._core import ManualClock, Store


@pytest.mark.parametrize("kind", ["memory", "sqlite-1", "sqlite-4"])
def test_delays_and_leases_follow_the_manual_clock(kind: str, tmp_path: Path) -> None:
    clock = ManualClock(1_000_000)
    store = Store(store_url(kind, tmp_path), clock)
    assert store.now_ms() == 1_000_000
    store.enqueue("q", "t", b"J[[],{}]", run_at=clock.now_ms + 10_000)
    assert store.claim("q", "w") == []
    clock.advance(10)
    (task,) = store.claim("q", "w", lease_ms=1_000)
    assert store.recover() == []
    clock.advance(1.5)  # past the lease, without sleeping
    assert store.recover() == [(task.id, "queued")]
    store.close()


def test_the_clock_refuses_bad_steps() -> None:
    clock = ManualClock()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ferroq.InvalidArgumentError):
            clock.advance(bad)
