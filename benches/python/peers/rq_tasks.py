"""The task functions RQ workers import (RQ stores a function's import
path with each job)."""

from __future__ import annotations

from typing import Any

from peers import sleeplog


def echo(p: dict[str, Any]) -> dict[str, Any]:
    """Returns its payload."""
    return p


def sleeplog_task(p: dict[str, Any]) -> dict[str, Any]:
    """Logs start and end around a short sleep (the crash workload)."""
    return sleeplog(p)
