"""Polars, imported when a frame method first needs it, so ``import
ferroq`` works without it; using a frame method without it says how to
install it. Type checkers see the real module."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["pl", "require_polars"]


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
