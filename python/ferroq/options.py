"""Task options: the defaults a task is declared with (:class:`TaskOptions`),
the overrides of one send (:class:`SendOptions`), and their checks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Optional, Union

from ._checks import seconds
from ._errors import InvalidArgumentError
from .backoff import Backoff
from .resources import Requirement, stored_requirements
from .serialization import serializer_name

__all__ = [
    "NO_OVERRIDES",
    "SendOptions",
    "TaskOptions",
    "check_options",
    "check_retries",
    "check_send_options",
    "parse_rate",
]


@dataclass(frozen=True)
class TaskOptions:
    """A task's defaults, set by ``@task(...)`` and overridable per send."""

    queue: str = "default"
    priority: int = 0
    retries: int = 0
    backoff: Optional[Backoff] = None
    timeout: Optional[float] = None
    result_ttl: Optional[float] = None
    expires: Optional[float] = None
    serializer: str = "json"
    concurrency: Optional[int] = None
    rate_limit: Optional[float] = None
    requires: Optional[Mapping[str, Requirement]] = None


def parse_rate(rate: Union[str, float, None]) -> Optional[float]:
    """Parses a rate limit: ``"100/s"``, ``"30/m"``, ``"500/h"`` or a number
    per second."""
    if rate is None:
        return None
    if isinstance(rate, (int, float)):
        per_s = float(rate)
    else:
        count, _, unit = str(rate).partition("/")
        seconds = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
        try:
            per_s = float(count) / seconds[unit.strip() or "s"]
        except (KeyError, ValueError):
            raise InvalidArgumentError(
                f"rate_limit {rate!r} is not like '100/s', '30/m' or '500/h'"
            ) from None
    if not 0 < per_s < float("inf"):
        raise InvalidArgumentError(f"rate_limit must be a finite number > 0, got {rate!r}")
    return per_s


@dataclass(frozen=True)
class SendOptions:
    """Per-call overrides (see :meth:`TaskFunction.options`)."""

    queue: Optional[str] = None
    priority: Optional[int] = None
    delay: Optional[float] = None
    run_at: Optional[datetime] = None
    key: Optional[str] = None
    batch: Optional[str] = None
    retries: Optional[int] = None
    expires: Optional[float] = None
    metadata: Optional[dict[str, Any]] = None
    wait: Optional[float] = None
    callback: Optional[Callable[[Any], None]] = field(default=None, compare=False)


#: The overrides of a plain ``fn.send(...)``: none. Compared by identity on
#: the hot path, which then sends with the task's precomputed defaults.
NO_OVERRIDES = SendOptions()


def check_send_options(options: dict[str, Any]) -> dict[str, Any]:
    """Send options (``fn.options(...)``, ``queue.send``'s explicit form)
    with timedeltas as seconds and their types checked: a bad value raises
    :class:`InvalidArgumentError` where it is given, not later in a send."""
    out = dict(options)
    for name in ("delay", "expires"):
        value = out.get(name)
        if isinstance(value, timedelta):
            out[name] = value.total_seconds()
    priority = out.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise InvalidArgumentError(f"priority must be an int, got {priority!r}")
    for name in ("queue", "key", "batch"):
        value = out.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidArgumentError(f"{name} must be a non-empty str, got {value!r}")
    run_at = out.get("run_at")
    if run_at is not None and not isinstance(run_at, datetime):
        raise InvalidArgumentError(f"run_at must be a datetime, got {run_at!r}")
    metadata = out.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidArgumentError(f"metadata must be a dict, got {metadata!r}")
    callback = out.get("callback")
    if callback is not None and not callable(callback):
        raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
    after = out.get("after")
    if after is not None:
        if isinstance(after, (str, bytes)) or not isinstance(after, Iterable):
            raise InvalidArgumentError(f"after must be a list of task handles, got {after!r}")
        out["after"] = list(after)
    return out


def check_retries(retries: object) -> int:
    """``retries`` when it is an int within 0..999, else :class:`InvalidArgumentError`."""
    if not isinstance(retries, int) or not 0 <= retries <= 999:
        raise InvalidArgumentError(f"retries must be an int within 0..999, got {retries!r}")
    return retries


def check_options(options: TaskOptions) -> TaskOptions:
    """``options`` when every field is valid, else :class:`InvalidArgumentError`."""
    check_retries(options.retries)
    if options.timeout is not None:
        seconds(options.timeout, "timeout", strict=True)
    if options.result_ttl is not None:
        seconds(options.result_ttl, "result_ttl")
    if options.expires is not None:
        seconds(options.expires, "expires")
    if not options.queue:
        raise InvalidArgumentError("queue name must not be empty")
    if options.concurrency is not None and (
        not isinstance(options.concurrency, int) or options.concurrency < 1
    ):
        raise InvalidArgumentError(f"concurrency must be an int >= 1, got {options.concurrency!r}")
    if options.requires is not None:
        stored_requirements(options.requires)
    serializer_name(options.serializer)
    return options
