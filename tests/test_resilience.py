"""with_resilience and RateLimit: the retry policy (what a ported API worker
expects: any exception but the hopeless ones, 5 times from 1 s to 60 s),
transient errors of real HTTP clients against a real local server,
Retry-After, retries inside process(qps=...) and the limiter's schedule;
TokenBucket for users of a (capacity, fill_rate) bucket."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from conftest import python_env
from ferroq import InvalidArgumentError, Queue, RateLimit, TokenBucket, with_resilience
from ferroq.resilience import is_retryable, is_transient, retry_after


def max_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


# -- a real HTTP server ----------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """``/status/N`` answers N; ``/busy/K`` answers 429 with ``Retry-After:
    1`` to the first request for K and 200 after; ``/ok`` answers 200."""

    seen: dict[str, list[float]] = {}
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        with self.lock:
            self.seen.setdefault(self.path, []).append(time.monotonic())
            count = len(self.seen[self.path])
        status, headers = 200, {}
        if self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        elif self.path.startswith("/busy/") and count == 1:
            status, headers = 429, {"Retry-After": "1"}
        body = b"{}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.seen = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


# -- the policy ------------------------------------------------------------------


def test_defaults_are_those_of_a_hand_written_api_retry_loop() -> None:
    params = inspect.signature(with_resilience).parameters
    assert params["max_retries"].default == 5
    assert params["base_delay"].default == 1.0
    assert params["max_delay"].default == 60.0
    assert params["retry_on"].default is is_retryable


def test_any_exception_is_retried_but_hopeless_ones() -> None:
    seen: list[str] = []

    @with_resilience(base_delay=0.001, max_delay=0.01)
    def call(kind: str) -> str:
        seen.append(kind)
        if kind == "plain" and seen.count("plain") <= 5:
            raise Exception("HTTP 503 from the API")  # as a ported worker raises it
        if kind == "always":
            raise ValueError("bad answer")
        if kind == "bug":
            raise TypeError("wrong call")
        return "ok"

    assert call("plain") == "ok" and seen.count("plain") == 6  # 5 retries by default
    with pytest.raises(ValueError):
        call("always")
    assert seen.count("always") == 6
    with pytest.raises(TypeError):
        call("bug")
    assert seen.count("bug") == 1  # a programming error is not retried

    @with_resilience(max_retries=2, base_delay=0.001, retry_on=(KeyError,))
    def custom() -> None:
        seen.append("custom")
        raise KeyError("k")

    with pytest.raises(KeyError):
        custom()
    assert seen.count("custom") == 3

    @with_resilience(max_retries=3, base_delay=0.001, retry_on=is_transient)
    def strict() -> None:
        seen.append("strict")
        raise ValueError("not transient")

    with pytest.raises(ValueError):
        strict()
    assert seen.count("strict") == 1


def test_transient_errors_of_real_http_clients(server: str) -> None:
    import httpx
    import requests

    def httpx_error(url: str) -> BaseException:
        try:
            httpx.get(url, timeout=5).raise_for_status()
        except Exception as e:
            return e
        raise AssertionError("no error")

    def requests_error(url: str) -> BaseException:
        try:
            requests.get(url, timeout=5).raise_for_status()
        except Exception as e:
            return e
        raise AssertionError("no error")

    def urllib_error(url: str) -> BaseException:
        try:
            urllib.request.urlopen(url, timeout=5)
        except Exception as e:
            return e
        raise AssertionError("no error")

    refused = closed_port()
    for get in (httpx_error, requests_error, urllib_error):
        for status in (429, 500, 502, 503, 504):
            e = get(f"{server}/status/{status}")
            assert is_transient(e) and is_retryable(e), (get.__name__, status, e)
        for status in (400, 401, 404, 422):
            e = get(f"{server}/status/{status}")
            assert not is_transient(e) and not is_retryable(e), (get.__name__, status, e)
        e = get(refused)
        assert is_transient(e), (get.__name__, e)
    assert isinstance(urllib_error(f"{server}/status/503"), urllib.error.HTTPError)


def test_aiohttp_errors_are_transient(server: str) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def get(url: str) -> BaseException:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.get(url) as r:
                    r.raise_for_status()
            except Exception as e:
                return e
        raise AssertionError("no error")

    assert is_transient(asyncio.run(get(f"{server}/status/503")))
    assert not is_retryable(asyncio.run(get(f"{server}/status/404")))
    assert is_transient(asyncio.run(get(closed_port())))


def test_recognising_clients_imports_none_of_them() -> None:
    code = textwrap.dedent("""
        import sys
        from ferroq import with_resilience
        from ferroq.resilience import is_retryable

        @with_resilience(base_delay=0.001)
        def f():
            raise ConnectionResetError("x")

        try:
            f()
        except ConnectionResetError:
            pass
        assert is_retryable(ValueError("x"))
        print(sorted(m for m in ("httpx", "aiohttp", "requests") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_retry_after_is_honoured(server: str) -> None:
    import httpx

    @with_resilience(base_delay=0.001, max_delay=5)
    def call(path: str) -> int:
        r = httpx.get(server + path, timeout=5)
        r.raise_for_status()
        return r.status_code

    assert call("/busy/a") == 200
    first, second = Handler.seen["/busy/a"]
    # The server said 1 s; the backoff alone would have waited 1 ms.
    assert second - first >= 0.95
    e = httpx.HTTPStatusError(
        "busy", request=httpx.Request("GET", server),
        response=httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
    )
    assert retry_after(e) == 0.0  # a date in the past: go now


def test_retries_inside_process_go_through_its_qps() -> None:
    calls: list[float] = []
    failed: set[int] = set()
    lock = threading.Lock()

    @with_resilience(base_delay=0.001, max_delay=0.01)
    def call_api(n: int) -> int:
        with lock:
            calls.append(time.monotonic())
            first = n not in failed
            failed.add(n)
        if first:
            raise ConnectionError("reset")
        return n

    def row(n: int) -> int:
        return call_api(n)

    with Queue("memory://") as q:
        out = q.process(row, pl.DataFrame({"n": range(40)}), qps=20, concurrency=8,
                        progress=False)
    assert out["status"].unique().to_list() == ["done"]
    assert len(calls) == 80  # every row's call failed once and was retried
    # Rows and their retries share the limit: no second sees more than
    # qps + 1 calls (without it, retries went straight through: 56/s at qps=20).
    assert max_in_any_second(calls) <= 21, max_in_any_second(calls)


def test_async_retries_inside_process_go_through_its_qps() -> None:
    calls: list[float] = []
    failed: set[int] = set()

    @with_resilience(base_delay=0.001, max_delay=0.01)
    async def call_api(n: int) -> int:
        calls.append(time.monotonic())
        if n not in failed:
            failed.add(n)
            raise asyncio.TimeoutError()
        return n

    async def row(n: int) -> int:
        return await call_api(n)

    with Queue("memory://") as q:
        out = q.process(row, pl.DataFrame({"n": range(30)}), qps=15, concurrency=20,
                        progress=False)
    assert out["status"].unique().to_list() == ["done"] and len(calls) == 60
    assert max_in_any_second(calls) <= 16, max_in_any_second(calls)


# -- the limiter -------------------------------------------------------------------


def test_limiter_hands_out_slots_ahead_so_late_wakeups_cost_nothing() -> None:
    limit = RateLimit(100)
    waits = [limit.reserve() for _ in range(50)]
    # Each caller's slot is 10 ms after the one before, reserved at once:
    # however late the caller before it wakes, the next slot stays put.
    steps = [b - a for a, b in zip(waits, waits[1:])]
    assert waits[0] == 0.0
    assert all(0.009 < s < 0.011 for s in steps), steps
    burst = RateLimit(100, burst=5)
    assert [burst.reserve() for _ in range(5)] == [0.0] * 5
    assert burst.reserve() > 0


def test_limiter_shared_by_threads_and_an_event_loop() -> None:
    limit = RateLimit(40)
    times: list[float] = []
    lock = threading.Lock()

    def thread_calls() -> None:
        for _ in range(20):
            limit.wait()
            with lock:
                times.append(time.monotonic())

    async def loop_calls() -> None:
        async def one() -> None:
            await limit.wait_async()
            with lock:
                times.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(40)))

    t = threading.Thread(target=thread_calls)
    t.start()
    asyncio.run(loop_calls())
    t.join()
    assert len(times) == 60
    assert max_in_any_second(times) <= 41


def test_bad_options_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        with_resilience(max_retries=-1)
    with pytest.raises(InvalidArgumentError):
        with_resilience(retry_on=ValueError)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        with_resilience(qps=0)
    with pytest.raises(InvalidArgumentError):
        RateLimit(10, burst=0.5)


# -- TokenBucket(capacity, fill_rate) ---------------------------------------------


def test_a_capacity_and_fill_rate_bucket_by_keyword() -> None:
    capacity, fill_rate = 10, 2.0
    # A (capacity, fill_rate) bucket is TokenBucket(rate=fill_rate, burst=capacity):
    bucket = TokenBucket(rate=fill_rate, burst=capacity)
    assert (bucket.rate, bucket.burst) == (2.0, 10.0)
    assert all(bucket.try_acquire() for _ in range(capacity))  # a full bucket
    assert not bucket.try_acquire()  # then 2 a second
    assert bucket.acquire(timeout=5)  # consume(): wait for a token
