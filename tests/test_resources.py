"""Resource requirements: floors and ceilings (skip busy GPUs), matched by
the store against what each scheduler offers, and the GPU probe."""

from __future__ import annotations

import time

import pytest

import ferroq
from ferroq import Queue, QueueScheduler
from ferroq.resources import CEILING_BASE, offered, stored_requirements


def test_ceilings_are_stored_as_floors_on_a_derived_key() -> None:
    assert stored_requirements({"gpu_memory_gb": 8, "cpus": (">=", 2)}) == {
        "gpu_memory_gb": 8.0,
        "cpus": 2.0,
    }
    assert stored_requirements({"gpu_utilization": ("<=", 10)}) == {
        "gpu_utilization<=": CEILING_BASE - 10
    }
    assert offered({"gpu_utilization": 5.0}) == {
        "gpu_utilization": 5.0,
        "gpu_utilization<=": CEILING_BASE - 5.0,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"gpu": ("<", 3)},
        {"gpu": ("<=",)},
        {"gpu": ("<=", -1)},
        {"gpu": ("<=", float("nan"))},
        {"gpu": "8"},
        {"gpu<=": 3},
        {"gpu": True},
    ],
)
def test_bad_requirements_are_refused_when_declared(queue: Queue, bad: dict) -> None:  # type: ignore[type-arg]
    def job() -> None:
        return None

    with pytest.raises(ferroq.InvalidArgumentError, match="requires"):
        queue.task(requires=bad)(job)
    assert queue.list() == []


def test_a_ceiling_skips_busy_hosts(queue: Queue) -> None:
    @queue.task(requires={"gpu_utilization": ("<=", 10), "gpu_memory_gb": 4})
    def on_an_idle_gpu() -> str:
        return "ran"

    h = on_an_idle_gpu.send()
    # Busy (90%): never handed the task, however long it looks.
    with QueueScheduler(queue, resources={"gpu_utilization": 90, "gpu_memory_gb": 16}):
        time.sleep(0.5)
        assert h.status() == "queued"
    # Idle enough but short of memory: both requirements must hold.
    with QueueScheduler(queue, resources={"gpu_utilization": 5, "gpu_memory_gb": 2}):
        time.sleep(0.5)
        assert h.status() == "queued"
    with QueueScheduler(queue, resources=lambda: {"gpu_utilization": 10.0, "gpu_memory_gb": 8.0}):
        assert h.result(timeout=10) == "ran"


def test_a_host_that_reports_no_utilisation_never_meets_a_ceiling(queue: Queue) -> None:
    @queue.task(requires={"gpu_utilization": ("<=", 50)})
    def needs_a_gpu() -> str:
        return "ran"

    h = needs_a_gpu.send()
    with QueueScheduler(queue, resources={"cpus": 4}):
        time.sleep(0.5)
        assert h.status() == "queued"


def test_the_gpu_probe_without_a_gpu_reports_none() -> None:
    # nvidia-ml-py is installed by the test extra (ferroq[gpu]); this
    # machine has no NVIDIA driver, so NVML fails to start: no GPU offered.
    import pynvml  # noqa: F401

    assert ferroq.gpu_probe() == {}
    probe = ferroq.default_probe()
    assert probe["cpus"] >= 1 and "gpu_utilization" not in probe


def test_requires_that_is_not_a_mapping_is_an_invalid_argument(queue: ferroq.Queue) -> None:
    for bad in ([("gpu", 1)], "gpu", 3):
        with pytest.raises(ferroq.InvalidArgumentError, match="requires must be a mapping"):

            @queue.task(requires=bad)  # type: ignore[arg-type]
            def f() -> int:
                return 1
    assert queue.stats() == {}


@pytest.mark.parametrize("bad", [{"gpu": -1}, {"gpu": float("nan")}, {"gpu": "x"}, "gpu", {"": 1}])
def test_a_bad_fixed_offer_is_refused_when_the_scheduler_is_made(bad: object) -> None:
    with Queue() as q, pytest.raises(ferroq.InvalidArgumentError, match="resources"):
        QueueScheduler(q, resources=bad)  # type: ignore[arg-type]
