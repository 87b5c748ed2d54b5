"""What a worker host offers, for tasks that declare ``requires={...}``.

A probe is a function returning a dict of numbers. The default probe
reports CPUs and, when the NVIDIA management library is installed
(``pip install ferroq[gpu]``, the ``nvidia-ml-py`` package) and finds a
GPU, the free memory (GB) and utilisation (%) of the least busy GPU (ties:
the one with most free memory) and the number of GPUs; otherwise it
reports no GPU at all.

A requirement is a floor (``{"gpu_memory_gb": 8}`` or
``{"gpu_memory_gb": (">=", 8)}``: the host must offer at least that) or a
ceiling (``{"gpu_utilization": ("<=", 10)}``: at most that, e.g. skip busy
GPUs). The store matches floors only, so a ceiling on ``k`` is stored as a
floor on the derived key ``k<=``, which every scheduler offers as
``CEILING_BASE - value`` beside each value it probes.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Mapping, Union

from ._errors import InvalidArgumentError

__all__ = [
    "CEILING_BASE",
    "Requirement",
    "ResourceProbe",
    "checked_offer",
    "default_probe",
    "gpu_probe",
    "offered",
    "stored_requirements",
]

ResourceProbe = Callable[[], dict[str, float]]

#: One requirement: a floor (a number, or ``(">=", n)``) or a ceiling (``("<=", n)``).
Requirement = Union[float, tuple[str, float]]

#: Ceilings are stored as floors on ``CEILING_BASE - value`` (values above it cannot be capped).
CEILING_BASE = 1e12


def _number(key: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
        raise InvalidArgumentError(f"requires[{key!r}] needs a number >= 0, got {v!r}")
    if v > CEILING_BASE:
        raise InvalidArgumentError(f"requires[{key!r}] is above {CEILING_BASE:g}")
    return float(v)


def stored_requirements(requires: Mapping[str, Requirement]) -> dict[str, float]:
    """``requires`` as the store matches it: floors only, each ceiling
    ``("<=", n)`` on ``k`` turned into the floor ``CEILING_BASE - n`` on
    ``k<=``. Raises :class:`InvalidArgumentError` for anything else."""
    if not isinstance(requires, Mapping):
        raise InvalidArgumentError(
            f"requires must be a mapping of resource names, got {requires!r}"
        )
    out: dict[str, float] = {}
    for key, req in requires.items():
        if not isinstance(key, str) or not key or key.endswith("<="):
            raise InvalidArgumentError(f"requires keys must be resource names, got {key!r}")
        if isinstance(req, tuple):
            if len(req) != 2 or req[0] not in (">=", "<="):
                raise InvalidArgumentError(
                    f"requires[{key!r}] must be a number, ('>=', n) or ('<=', n), got {req!r}"
                )
            op, n = req[0], _number(key, req[1])
            if op == "<=":
                out[key + "<="] = CEILING_BASE - n
            else:
                out[key] = n
        else:
            out[key] = _number(key, req)
    return out


def checked_offer(resources: object) -> dict[str, float]:
    """A fixed offer (``QueueScheduler(resources={...})``) as numbers,
    refused with :class:`InvalidArgumentError` unless it maps resource
    names to finite numbers >= 0."""
    if not isinstance(resources, Mapping):
        raise InvalidArgumentError(
            f"resources must be a dict of numbers or a probe function, got {resources!r}"
        )
    out: dict[str, float] = {}
    for key, value in resources.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"resources keys must be resource names, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < math.inf
        ):
            raise InvalidArgumentError(f"resources[{key!r}] needs a number >= 0, got {value!r}")
        out[key] = float(value)
    return out


def offered(resources: Mapping[str, float]) -> dict[str, float]:
    """What a scheduler offers the store: each probed value, and beside it
    the ``k<=`` key that ceilings on ``k`` are matched against."""
    out = dict(resources)
    for key, value in resources.items():
        if not key.endswith("<=") and 0 <= value <= CEILING_BASE:
            out[key + "<="] = CEILING_BASE - value
    return out


def gpu_probe() -> dict[str, float]:
    """Free memory (GB) and utilisation (%) of the least busy NVIDIA GPU
    (ties: most free memory) and the GPU count, or {} without one."""
    try:
        import pynvml  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        found: list[tuple[float, float]] = []
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            free_gb = pynvml.nvmlDeviceGetMemoryInfo(handle).free / 2**30
            util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            found.append((util, -free_gb))
        if not found:
            return {}
        util, neg_free = min(found)
        return {"gpu_memory_gb": -neg_free, "gpu_utilization": util, "gpus": float(count)}
    except Exception:
        return {}


def default_probe() -> dict[str, float]:
    """CPUs of this host plus whatever :func:`gpu_probe` finds."""
    return {"cpus": float(os.cpu_count() or 1), **gpu_probe()}
