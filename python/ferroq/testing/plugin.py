"""ferroq's pytest plugin: fixtures for testing code that uses ferroq.

Registered under the ``pytest11`` entry point, so installing ferroq makes
them available in every test suite; this module imports nothing of ferroq
until a fixture is used, so suites that do not use them pay nothing.

* ``ferroq_queue`` — a fresh in-memory :class:`~ferroq.Queue`, also the
  default queue (where module-level ``@task`` functions send) for the
  test; on a manual clock when the test also asks for ``ferroq_clock``;
  closed after.
* ``ferroq_eager`` — eager mode for every queue during the test
  (:func:`ferroq.testing.eager`); yields the :class:`~ferroq.testing.EagerMode`.
* ``ferroq_scheduler`` — a started :class:`~ferroq.QueueScheduler` on
  ``ferroq_queue``, stopped after the test (an idle scheduler stops in
  about a millisecond).
* ``ferroq_clock`` — a :class:`~ferroq.testing.ManualClock` reading the
  real time at the start of the test, moved only by ``advance(seconds)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ferroq import Queue, QueueScheduler
    from ferroq.testing import EagerMode, ManualClock

__all__ = ["ferroq_clock", "ferroq_eager", "ferroq_queue", "ferroq_scheduler"]


@pytest.fixture
def ferroq_clock() -> ManualClock:
    """A manual clock; ``ferroq_queue`` uses it when both are requested."""
    from ferroq.testing import ManualClock

    return ManualClock()


@pytest.fixture
def ferroq_queue(request: pytest.FixtureRequest) -> Iterator[Queue]:
    """A fresh in-memory queue, the default queue during the test."""
    from ferroq import Queue, _default

    clock = None
    if "ferroq_clock" in request.fixturenames:
        clock = request.getfixturevalue("ferroq_clock")
    queue = Queue("memory://", clock=clock)
    before = _default.peek()
    _default.set_default(queue)
    try:
        yield queue
    finally:
        queue.close()
        _default.set_default(before)


@pytest.fixture
def ferroq_eager() -> Iterator[EagerMode]:
    """Eager mode for every queue during the test."""
    from ferroq.testing import eager

    with eager() as mode:
        yield mode


@pytest.fixture
def ferroq_scheduler(ferroq_queue: Queue) -> Iterator[QueueScheduler]:
    """A started scheduler on ``ferroq_queue``, stopped after the test."""
    from ferroq import QueueScheduler

    scheduler = QueueScheduler(ferroq_queue, concurrency=2, lease=5.0).start()
    try:
        yield scheduler
    finally:
        scheduler.stop(grace=5.0)
