"""Checks of the numbers users pass in, shared by every entry point: a
span of seconds must be a real, finite number (or infinity where "no
limit" means something), so that what reaches the store is an integer it
can hold, and a bad value is an :class:`InvalidArgumentError` at the call
that caused it."""

from __future__ import annotations

import math
from typing import Optional

from ._errors import InvalidArgumentError

__all__ = ["MAX_SECONDS", "optional_seconds", "seconds", "seconds_to_ms"]

# Longer than any span worth storing (about 292,000 years), and small
# enough that it fits a 64-bit count of milliseconds after adding "now".
MAX_SECONDS = 2**53 / 1000


def seconds(
    value: object, what: str, *, minimum: float = 0.0, strict: bool = False, inf_ok: bool = False
) -> float:
    """``value`` as a float of seconds: finite (or ``inf`` when ``inf_ok``),
    at least ``minimum`` (more than it when ``strict``), and no more than
    :data:`MAX_SECONDS`; else :class:`InvalidArgumentError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{what} must be a number of seconds, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise InvalidArgumentError(f"{what} is too large: {value!r}") from None
    if math.isnan(v):
        raise InvalidArgumentError(f"{what} must be a number of seconds, got nan")
    if v == math.inf and inf_ok:
        return v
    if math.isinf(v) or v > MAX_SECONDS:
        raise InvalidArgumentError(
            f"{what} must be at most {MAX_SECONDS:.0f} seconds, got {value!r}"
        )
    if v < minimum or (strict and v == minimum):
        op = ">" if strict else ">="
        raise InvalidArgumentError(f"{what} must be {op} {minimum:g} seconds, got {value!r}")
    return v


def seconds_to_ms(value: object, what: str, *, minimum: float = 0.0) -> int:
    """A checked span of seconds (see :func:`seconds`) in whole milliseconds."""
    return round(seconds(value, what, minimum=minimum) * 1000)


def optional_seconds(value: Optional[object], what: str, **kw: object) -> Optional[float]:
    """:func:`seconds` for an optional value (None passes through)."""
    if value is None:
        return None
    return seconds(value, what, **kw)  # type: ignore[arg-type]
