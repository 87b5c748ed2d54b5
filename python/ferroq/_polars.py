"""Polars, imported when a frame method first needs it, so ``import
ferroq`` works without it; using a frame method without it says how to
install it. Type checkers see the real module."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["from_text", "pl", "read_as_text", "require_polars"]


def require_polars() -> ModuleType:
    """Imports Polars, or says how to install it."""
    try:
        import polars
    except ImportError as e:  # pragma: no cover - polars is in the test extra
        raise ImportError(
            "DataFrame support needs Polars: pip install 'ferroq[frames]'"
        ) from e
    return polars


class _LazyPolars:
    def __getattr__(self, name: str) -> Any:
        return getattr(require_polars(), name)


if TYPE_CHECKING:
    import polars as pl
else:
    pl = _LazyPolars()


def read_as_text(dtype: pl.DataType) -> bool:
    """Whether a column of this type is read from JSON as text and converted
    after (``from_text``): types JSON cannot name, and dates and times, which
    the JSON readers of Polars 1.x (the last Polars for Python 3.9) cannot
    parse from their ISO text, although 2.x can."""
    return (
        dtype == pl.Categorical
        or isinstance(dtype, pl.Enum)
        or dtype in (pl.Date, pl.Time)
        or isinstance(dtype, pl.Datetime)
    )


def from_text(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """The text column converted to ``dtype``: dates and times parsed (a
    cast from text to a date was removed in Polars 2), anything else cast."""
    if dtype == pl.Date:
        return column.str.to_date()
    if dtype == pl.Time:
        return column.str.to_time()
    if isinstance(dtype, pl.Datetime):
        return column.str.to_datetime(time_unit=dtype.time_unit, time_zone=dtype.time_zone)
    return column.cast(dtype)
