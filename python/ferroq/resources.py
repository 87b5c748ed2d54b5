"""What a worker host offers, for tasks that declare ``requires={...}``.

A probe is a function returning a dict of numbers. The default probe
reports CPUs and, when the NVIDIA management library (``pynvml``) is
installed and finds a GPU, the free GPU memory (GB) and utilisation (%) of
the freest GPU; otherwise it reports no GPU at all.
"""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["ResourceProbe", "default_probe", "gpu_probe"]

ResourceProbe = Callable[[], dict[str, float]]


def gpu_probe() -> dict[str, float]:
    """Free memory and utilisation of the freest NVIDIA GPU, or {} without one."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        best: dict[str, float] = {}
        count = pynvml.nvmlDeviceGetCount()
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            free_gb = pynvml.nvmlDeviceGetMemoryInfo(handle).free / 2**30
            util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            if free_gb > best.get("gpu_memory_gb", -1.0):
                best = {"gpu_memory_gb": free_gb, "gpu_utilization": util}
        if best:
            best["gpus"] = float(count)
        return best
    except Exception:
        return {}


def default_probe() -> dict[str, float]:
    """CPUs of this host plus whatever :func:`gpu_probe` finds."""
    return {"cpus": float(os.cpu_count() or 1), **gpu_probe()}
