"""Retry delay policies, computed by the Rust core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import _core
from ._checks import seconds

__all__ = ["Backoff"]

Strategy = Literal["fixed", "linear", "exponential"]


@dataclass(frozen=True)
class Backoff:
    """How long to wait before retry ``n`` of a failed task.

    * ``fixed``: ``base`` every time;
    * ``linear``: ``base * n``;
    * ``exponential``: ``base * multiplier ** (n - 1)``;

    each capped at ``max`` seconds, then shortened by up to ``jitter`` (a
    fraction, 0..1) at random so retries of many tasks spread out.
    """

    strategy: Strategy = "exponential"
    base: float = 1.0
    multiplier: float = 2.0
    max: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        # Validate in the core now, so a bad policy fails at decoration time
        # (spans first: a non-finite one has no millisecond form at all).
        seconds(self.base, "backoff base")
        seconds(self.max, "backoff max")
        self.delay(1)

    @classmethod
    def fixed(cls, delay: float, *, jitter: float = 0.0) -> Backoff:
        """The same delay before every retry."""
        return cls("fixed", base=delay, multiplier=1.0, max=delay, jitter=jitter)

    @classmethod
    def linear(cls, base: float, *, max: float = 3600.0, jitter: float = 0.0) -> Backoff:
        """``base * n`` before retry ``n``."""
        return cls("linear", base=base, multiplier=1.0, max=max, jitter=jitter)

    @classmethod
    def exponential(
        cls, base: float = 1.0, *, multiplier: float = 2.0, max: float = 3600.0, jitter: float = 0.1
    ) -> Backoff:
        """``base * multiplier ** (n - 1)`` before retry ``n``."""
        return cls("exponential", base=base, multiplier=multiplier, max=max, jitter=jitter)

    def delay(self, attempt: int) -> float:
        """A delay (seconds, jitter applied) before retry number ``attempt``."""
        ms, _ = _core.backoff_delay_ms(
            self.strategy,
            round(self.base * 1000),
            float(self.multiplier),
            round(self.max * 1000),
            float(self.jitter),
            attempt,
        )
        return ms / 1000.0

    def encode(self) -> str:
        """The text form stored with each task."""
        _, text = _core.backoff_delay_ms(
            self.strategy,
            round(self.base * 1000),
            float(self.multiplier),
            round(self.max * 1000),
            float(self.jitter),
            1,
        )
        return text
