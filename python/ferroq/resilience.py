"""Rate limits and in-place retries for the calls a task makes.

:class:`RateLimit` shares one of the core's token buckets between every
thread and coroutine that calls through it; :func:`with_resilience` wraps a
function (sync or ``async def``) so each call waits its turn under that
limit and is retried in place, with exponential backoff and jitter computed
by the core, when it raises one of the errors named.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, Optional, TypeVar, Union, cast, overload

from ._core import TokenBucket
from ._errors import InvalidArgumentError
from .backoff import Backoff

__all__ = ["DEFAULT_RETRY_ON", "RateLimit", "with_resilience"]

F = TypeVar("F", bound=Callable[..., Any])

#: What :func:`with_resilience` retries unless told otherwise: the errors of
#: a connection that failed or a call that took too long.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)


class RateLimit:
    """At most ``qps`` calls per second (bursts up to ``burst``, 1 by
    default, so no one-second window sees more than ``qps + burst``),
    shared by every thread and coroutine that waits on it."""

    def __init__(self, qps: float, burst: Optional[float] = None) -> None:
        if not qps > 0:
            raise InvalidArgumentError(f"qps must be > 0, got {qps!r}")
        self.qps = float(qps)
        self.bucket = TokenBucket(self.qps, burst if burst is not None else 1.0)
        # One waiter per event loop polls the bucket; the others queue on a
        # lock instead of all waking up every few milliseconds.
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._locks_guard = threading.Lock()

    def wait(self) -> None:
        """Blocks (without the GIL) until a call may go ahead."""
        self.bucket.acquire()

    async def wait_async(self) -> None:
        """Waits on the running event loop until a call may go ahead."""
        if self.bucket.try_acquire():
            return
        loop = asyncio.get_running_loop()
        with self._locks_guard:
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
        pause = min(0.05, max(0.001, 1.0 / self.qps / 4))
        async with lock:
            while not self.bucket.try_acquire():
                await asyncio.sleep(pause)

    def wrap(self, fn: F) -> F:
        """``fn`` with every call waiting its turn under this limit."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def limited_async(*args: Any, **kwargs: Any) -> Any:
                await self.wait_async()
                return await fn(*args, **kwargs)

            return cast(F, limited_async)

        @functools.wraps(fn)
        def limited(*args: Any, **kwargs: Any) -> Any:
            self.wait()
            return fn(*args, **kwargs)

        return cast(F, limited)


@overload
def with_resilience(fn: F, /) -> F: ...


@overload
def with_resilience(
    *,
    qps: Optional[float] = None,
    burst: Optional[float] = None,
    max_retries: int = 3,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    jitter: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
) -> Callable[[F], F]: ...


def with_resilience(
    fn: Optional[F] = None,
    /,
    *,
    qps: Optional[float] = None,
    burst: Optional[float] = None,
    max_retries: int = 3,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    jitter: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
) -> Union[F, Callable[[F], F]]:
    """Decorates a call made inside a task (an API request, say), sync or
    ``async def``:

    * ``qps``: at most this many calls per second across every thread and
      coroutine of the process that use the decorated function (bursts of
      ``burst``, 1 by default);
    * ``max_retries``: retries in place when the call raises one of
      ``retry_on`` (connection errors and timeouts by default), waiting
      ``base_delay * 2 ** (n - 1)`` seconds before retry ``n``, capped at
      ``max_delay`` and shortened by up to ``jitter`` (a fraction) at
      random; the last error is raised when they run out. Other errors are
      raised at once. Each retry waits its turn under ``qps`` again.
    """
    if not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidArgumentError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if not (isinstance(retry_on, tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
    )):
        raise InvalidArgumentError(
            f"retry_on must be a tuple of exception classes, got {retry_on!r}"
        )
    backoff = Backoff.exponential(base_delay, max=max_delay, jitter=jitter)
    limit = RateLimit(qps, burst) if qps is not None else None

    def decorate(f: F) -> F:
        if inspect.iscoroutinefunction(f):
            coro = cast(Callable[..., Awaitable[Any]], f)

            @functools.wraps(f)
            async def resilient_async(*args: Any, **kwargs: Any) -> Any:
                attempt = 0
                while True:
                    if limit is not None:
                        await limit.wait_async()
                    try:
                        return await coro(*args, **kwargs)
                    except retry_on:
                        attempt += 1
                        if attempt > max_retries:
                            raise
                    await asyncio.sleep(backoff.delay(attempt))

            return cast(F, resilient_async)

        @functools.wraps(f)
        def resilient(*args: Any, **kwargs: Any) -> Any:
            attempt = 0
            while True:
                if limit is not None:
                    limit.wait()
                try:
                    return f(*args, **kwargs)
                except retry_on:
                    attempt += 1
                    if attempt > max_retries:
                        raise
                time.sleep(backoff.delay(attempt))

        return cast(F, resilient)

    return decorate(fn) if fn is not None else decorate
