"""Rate limits and in-place retries for the calls a task makes.

:class:`RateLimit` paces every thread and coroutine that calls through it;
:func:`with_resilience` wraps a function (sync or ``async def``) so each
call waits its turn under that limit and is retried in place, with
exponential backoff and jitter computed by the core, when it fails in a way
worth retrying (:func:`is_retryable`).

Why the limit is a schedule and not a polled bucket: a bucket of one token
polled from an event loop loses, on every call, the time between the token
being ready and the loop getting round to looking (a busy loop answering
HTTP responses looks late by milliseconds); at 190 calls/s that lost 20-30%
of the rate. Here each caller reserves the next free slot at once and
sleeps until it, so a late wake-up delays that one call, never the slots
after it.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import inspect
import math
import threading
import time
from typing import (
    Any,
    Awaitable,
    Callable,
    Optional,
    TypeVar,
    Union,
    cast,
    overload,
)

from ._errors import InvalidArgumentError
from .backoff import Backoff

__all__ = [
    "DEFAULT_RETRY_ON",
    "RateLimit",
    "RetryPolicy",
    "backing_off",
    "is_retryable",
    "is_transient",
    "retry_after",
    "with_resilience",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Only the errors of a connection that failed or a call that took too
#: long (builtin classes): ``retry_on=DEFAULT_RETRY_ON`` is the narrow
#: policy :func:`with_resilience` had by default before it retried any
#: exception but the hopeless ones (:func:`is_retryable`).
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)

#: A retry policy: exception classes, or a predicate on the exception.
RetryPolicy = Union[tuple[type[BaseException], ...], Callable[[BaseException], bool]]

# HTTP statuses worth asking again: the server is busy, overloaded or had a
# passing fault. 501 (not implemented), 505 (version) and 511 (network
# login) will answer the same way every time.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522,
                               523, 524, 529, 598, 599})

# Transport errors of the common HTTP clients, by module and class name, so
# none of them is imported to be recognised (a class matches when it or a
# base class has one of these names).
_TRANSIENT_CLASSES = frozenset({
    # httpx: TransportError covers ConnectError, timeouts, protocol errors.
    "httpx.TransportError",
    "httpx.TimeoutException",
    # aiohttp
    "aiohttp.client_exceptions.ClientConnectionError",
    "aiohttp.client_exceptions.ClientPayloadError",
    "aiohttp.client_exceptions.ServerTimeoutError",
    # requests / urllib3
    "requests.exceptions.ConnectionError",
    "requests.exceptions.Timeout",
    "requests.exceptions.ChunkedEncodingError",
    "urllib3.exceptions.ProtocolError",
    "urllib3.exceptions.TimeoutError",
    "urllib3.exceptions.NewConnectionError",
    # the standard library
    "http.client.IncompleteRead",
    "http.client.RemoteDisconnected",
    "urllib.error.URLError",
})

# Programming errors: retrying them only delays the traceback.
_PERMANENT = (TypeError, AttributeError, NameError, ImportError, NotImplementedError,
              AssertionError, SyntaxError, RecursionError)


def _class_names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status an exception reports, if any: httpx's and requests'
    ``exc.response.status_code``, aiohttp's ``exc.status``, urllib's
    ``exc.code``, and SDK errors with a ``status_code`` (OpenAI, ...)."""
    for holder in (exc, getattr(exc, "response", None)):
        if holder is None:
            continue
        for attr in ("status_code", "status", "code"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors that say "try again later": connection failures and
    timeouts (builtin, httpx, aiohttp, requests, urllib3, urllib, http.client)
    and HTTP statuses 408, 425, 429 and 5xx other than 501/505/511, however
    the client reports them. None of those libraries is imported."""
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    status = http_status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    return not _TRANSIENT_CLASSES.isdisjoint(_class_names(exc))


def is_retryable(exc: BaseException) -> bool:
    """The default policy of :func:`with_resilience`: any ``Exception`` is
    retried (as a hand-written retry loop around an API call does: an HTTP
    503 raised as a plain exception is retried too), except those that
    cannot get better: an HTTP status that is not transient (400, 401, 404,
    422, ...: see :func:`is_transient`) and programming errors
    (``TypeError``, ``AttributeError``, ``NameError``, ``ImportError``,
    ``NotImplementedError``, ``AssertionError``)."""
    if not isinstance(exc, Exception):
        return False  # KeyboardInterrupt, cancellation, SystemExit
    if is_transient(exc):
        return True
    if http_status(exc) is not None:
        return False
    return not isinstance(exc, _PERMANENT)


def retry_after(exc: BaseException) -> Optional[float]:
    """Seconds the server asked to wait (a ``Retry-After`` header of delta
    seconds or an HTTP date on the exception's response or on the exception
    itself, as httpx, requests, aiohttp and urllib attach it), else None."""
    for holder in (getattr(exc, "response", None), exc):
        headers = getattr(holder, "headers", None)
        if headers is None:
            continue
        try:
            value = headers.get("Retry-After") or headers.get("retry-after")
        except Exception:
            continue
        if not isinstance(value, str) or not value.strip():
            continue
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - time.time())
    return None


class RateLimit:
    """At most ``qps`` calls per second, shared by every thread and
    coroutine that waits on it (bursts of up to ``burst`` calls, 1 by
    default, so no one-second window sees more than ``qps + burst``).

    Each caller reserves the next free slot (slots are ``1 / qps`` apart)
    and sleeps until it: the rate delivered is the rate asked, from threads
    and event loops alike, however late a sleeper wakes."""

    def __init__(self, qps: float, burst: Optional[float] = None) -> None:
        if not (isinstance(qps, (int, float)) and 0 < qps < math.inf):
            raise InvalidArgumentError(f"qps must be a finite number > 0, got {qps!r}")
        burst = 1.0 if burst is None else burst
        if not (isinstance(burst, (int, float)) and 1 <= burst < math.inf):
            raise InvalidArgumentError(f"burst must be a finite number >= 1, got {burst!r}")
        self.qps = float(qps)
        self.burst = float(burst)
        self._interval = 1.0 / self.qps
        # How far ahead of its slot a call may go: what lets a burst through.
        self._slack = (self.burst - 1.0) * self._interval
        self._next = -math.inf  # the next slot not yet taken (monotonic seconds)
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Takes the next free slot; returns the seconds to wait for it."""
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self._interval
            return max(0.0, slot - self._slack - now)

    def wait(self) -> None:
        """Blocks (sleeping without the GIL) until a call may go ahead."""
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)

    async def wait_async(self) -> None:
        """Waits on the running event loop until a call may go ahead."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    def wrap(self, fn: F) -> F:
        """``fn`` with every call waiting its turn under this limit. Inside
        the call the limit is *ambient*: retries made there by
        :func:`with_resilience` wait their turn under it too."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def limited_async(*args: Any, **kwargs: Any) -> Any:
                await self.wait_async()
                token = _ambient.set(self)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    _ambient.reset(token)

            return cast(F, limited_async)

        @functools.wraps(fn)
        def limited(*args: Any, **kwargs: Any) -> Any:
            self.wait()
            token = _ambient.set(self)
            try:
                return fn(*args, **kwargs)
            finally:
                _ambient.reset(token)

        return cast(F, limited)


# The limit of the call we are inside (``RateLimit.wrap``, and so
# ``Queue.process(qps=...)``), which in-place retries must respect.
_ambient: contextvars.ContextVar[Optional[RateLimit]] = contextvars.ContextVar(
    "ferroq_rate_limit", default=None
)


class _BackoffGauge:
    """How many calls are sleeping before a retry right now, process-wide."""

    def __init__(self) -> None:
        self.now = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.now += n


_gauge = _BackoffGauge()


def backing_off() -> int:
    """How many calls made through :func:`with_resilience` in this process
    are waiting before a retry at this moment (the progress bar of
    :meth:`Queue.process` shows them)."""
    return _gauge.now


def _check_policy(retry_on: RetryPolicy) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, tuple):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise InvalidArgumentError(
                f"retry_on must be a tuple of exception classes or a predicate, got {retry_on!r}"
            )
        kinds = retry_on
        return lambda e: isinstance(e, kinds)
    if callable(retry_on) and not isinstance(retry_on, type):
        return retry_on
    raise InvalidArgumentError(
        f"retry_on must be a tuple of exception classes or a predicate, got {retry_on!r}"
    )


@overload
def with_resilience(fn: F, /) -> F: ...


@overload
def with_resilience(
    *,
    qps: Optional[float] = None,
    burst: Optional[float] = None,
    max_retries: int = 5,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    jitter: float = 0.5,
    retry_on: RetryPolicy = is_retryable,
) -> Callable[[F], F]: ...


def with_resilience(
    fn: Optional[F] = None,
    /,
    *,
    qps: Optional[float] = None,
    burst: Optional[float] = None,
    max_retries: int = 5,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    jitter: float = 0.5,
    retry_on: RetryPolicy = is_retryable,
) -> Union[F, Callable[[F], F]]:
    """Decorates a call made inside a task (an API request, say), sync or
    ``async def``:

    * ``qps``: at most this many calls per second across every thread and
      coroutine of the process that use the decorated function (bursts of
      ``burst``, 1 by default);
    * ``max_retries`` (5): retries in place when ``retry_on`` says so. By
      default (:func:`is_retryable`) any ``Exception`` is retried except an
      HTTP status that will not change (4xx other than 408/425/429) and
      programming errors; transient errors of httpx, aiohttp, requests and
      urllib are recognised without importing them. ``retry_on`` also takes
      a tuple of exception classes, or a predicate (:func:`is_transient`
      retries only connection errors, timeouts, 429 and 5xx).
    * Before retry ``n`` it waits ``base_delay * 2 ** (n - 1)`` seconds
      (1 s, 2 s, 4 s, ...), capped at ``max_delay`` (60 s) and shortened by
      up to ``jitter`` (a fraction) at random; when the error carries a
      ``Retry-After`` (:func:`retry_after`) it waits that long instead (at
      most ``max_delay``). The last error is raised when retries run out;
      errors not retried are raised at once.
    * Every retry waits its turn under ``qps``, and under the limit of the
      call it is made inside (``Queue.process(qps=...)``), so retries never
      push an API over the rate it was given.
    """
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise InvalidArgumentError(f"max_retries must be an int >= 0, got {max_retries!r}")
    should_retry = _check_policy(retry_on)
    backoff = Backoff.exponential(base_delay, max=max_delay, jitter=jitter)
    limit = RateLimit(qps, burst) if qps is not None else None

    def pause(attempt: int, exc: BaseException) -> float:
        asked = retry_after(exc)
        if asked is not None:
            return min(asked, max_delay)
        return backoff.delay(attempt)

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
                    except Exception as e:
                        attempt += 1
                        if attempt > max_retries or not should_retry(e):
                            raise
                        delay = pause(attempt, e)
                    _gauge.add(1)
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        _gauge.add(-1)
                    ambient = _ambient.get()
                    if ambient is not None and ambient is not limit:
                        await ambient.wait_async()

            return cast(F, resilient_async)

        @functools.wraps(f)
        def resilient(*args: Any, **kwargs: Any) -> Any:
            attempt = 0
            while True:
                if limit is not None:
                    limit.wait()
                try:
                    return f(*args, **kwargs)
                except Exception as e:
                    attempt += 1
                    if attempt > max_retries or not should_retry(e):
                        raise
                    delay = pause(attempt, e)
                _gauge.add(1)
                try:
                    time.sleep(delay)
                finally:
                    _gauge.add(-1)
                ambient = _ambient.get()
                if ambient is not None and ambient is not limit:
                    ambient.wait()

        return cast(F, resilient)

    return decorate(fn) if fn is not None else decorate
