"""The DataFrame batch runner's main job, measured for real: 5,000 prompts
against a local LLM-style HTTP server that allows 200 requests/s (beyond
that it answers 429 with ``Retry-After: 1``) and fails 2% of requests at
random with a 500. Physical limit: 5,000 / 200 = 25 s.

In the same run, against the same server (counters reset in between):

* ferroq, written the way the docs show: an ``async def`` row function
  calling httpx through ``@with_resilience()`` (its defaults), run by
  ``queue.process(call, df, qps=190, concurrency=50)`` on a SQLite store;
* a plain asyncio script with a simple pacer (the next call no earlier than
  ``1/190`` s after the last one) and a retry loop honouring Retry-After.

Each prints wall time, rows done and failed, the achieved rate against the
server's limit (target >= 95%), the client's CPU time, the server's own
counts (200s, 429s, 500s) and the busiest second it saw; every answer is
checked against its prompt. On a loaded machine the wall times say more
about the machine than the clients: compare the CPU times, and the load
average printed with them.

    python benches/python/llm_job.py [--rows 5000] [--qps 190] [--limit 200]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# -- the server: asyncio streams, HTTP/1.1 keep-alive, in its own process ------


class Server:
    """Allows ``limit`` requests in any sliding second; 2% of those fail."""

    def __init__(self, limit: int, fail: float, latency: float) -> None:
        self.limit = limit
        self.fail = fail
        self.latency = latency
        self.reset()

    def reset(self) -> None:
        self.accepted: collections.deque[float] = collections.deque()
        self.counts = collections.Counter[str]()
        self.per_second = collections.Counter[int]()
        self.started = time.monotonic()

    def admit(self) -> bool:
        now = time.monotonic()
        while self.accepted and self.accepted[0] <= now - 1.0:
            self.accepted.popleft()
        if len(self.accepted) >= self.limit:
            return False
        self.accepted.append(now)
        self.per_second[int(now - self.started)] += 1
        return True

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                status, headers, payload = await self.answer(method, path, body)
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode() + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if path == "/stats":
            busiest = max(self.per_second.values(), default=0)
            return 200, {}, json.dumps({**self.counts, "busiest_second": busiest}).encode()
        if path == "/reset":
            self.reset()
            return 200, {}, b"{}"
        if not self.admit():
            self.counts["429"] += 1
            return 429, {"Retry-After": "1"}, b'{"error": "rate limited"}'
        await asyncio.sleep(self.latency * (0.5 + random.random()))
        if random.random() < self.fail:
            self.counts["500"] += 1
            return 500, {}, b'{"error": "internal"}'
        self.counts["200"] += 1
        prompt = json.loads(body)["prompt"]
        return 200, {}, json.dumps({"text": prompt[::-1]}).encode()


def serve(port_file: str, limit: int, fail: float, latency: float) -> None:
    async def main() -> None:
        app = Server(limit, fail, latency)
        srv = await asyncio.start_server(app.handle, "127.0.0.1", 0, backlog=1024)
        Path(port_file).write_text(str(srv.sockets[0].getsockname()[1]))
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())


# -- ferroq, the way the docs write it ---------------------------------------------

URL = ""
_clients: dict[int, Any] = {}


def client() -> Any:
    """One httpx client per event loop (the scheduler runs its own)."""
    import httpx

    loop = id(asyncio.get_running_loop())
    if loop not in _clients:
        _clients[loop] = httpx.AsyncClient(
            base_url=URL, timeout=30, limits=httpx.Limits(max_connections=100)
        )
    return _clients[loop]


def ferroq_run(rows: int, qps: float, store: str) -> dict[str, Any]:
    import polars as pl

    from ferroq import Queue, with_resilience

    @with_resilience()  # 5 retries, 1 s doubling to 60 s, Retry-After honoured
    async def complete(prompt: str) -> str:
        r = await client().post("/v1/complete", json={"prompt": prompt})
        r.raise_for_status()
        return str(r.json()["text"])

    async def call(prompt: str) -> str:
        return await complete(prompt)

    df = pl.DataFrame({"prompt": [f"prompt number {i}" for i in range(rows)]})
    queue = Queue(store)
    t0, cpu0 = time.monotonic(), time.process_time()
    out = queue.process(call, df, qps=qps, concurrency=50, progress=False)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    queue.close()
    done = out.filter(pl.col("status") == "done")
    expected = {f"prompt number {i}"[::-1] for i in range(rows)}
    correct = set(done["result"].to_list()) == expected and done.height == rows
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "done": done.height,
        "failed": out.height - done.height,
        "checked": correct,
    }


# -- a plain asyncio script with a simple pacer ------------------------------------


def plain_run(rows: int, qps: float) -> dict[str, Any]:
    import httpx

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        interval = 1.0 / qps
        next_at = loop.time()
        sem = asyncio.Semaphore(50)
        results: dict[int, str] = {}
        failed = 0

        async def pace() -> None:
            nonlocal next_at
            now = loop.time()
            at = max(next_at, now)
            next_at = at + interval
            await asyncio.sleep(at - now)

        async with httpx.AsyncClient(base_url=URL, timeout=30,
                                     limits=httpx.Limits(max_connections=100)) as c:

            async def one(i: int) -> None:
                nonlocal failed
                prompt = f"prompt number {i}"
                for attempt in range(6):
                    async with sem:
                        await pace()
                        r = await c.post("/v1/complete", json={"prompt": prompt})
                    if r.status_code == 200:
                        results[i] = r.json()["text"]
                        return
                    wait = float(r.headers.get("Retry-After", 2 ** attempt))
                    await asyncio.sleep(wait)
                failed += 1

            t0, cpu0 = time.monotonic(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(rows)))
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        correct = all(results[i] == f"prompt number {i}"[::-1] for i in results)
        return {"wall_s": wall, "cpu_s": cpu, "done": len(results), "failed": failed,
                "checked": correct}

    return asyncio.run(main())


def server_stats(reset: bool = False) -> dict[str, int]:
    import httpx

    stats: dict[str, int] = httpx.get(URL + "/stats").json()
    if reset:
        httpx.get(URL + "/reset")
    return stats


def report(name: str, r: dict[str, Any], s: dict[str, int], limit: int) -> str:
    rate = r["done"] / r["wall_s"]
    return (
        f"{name:<28} {r['wall_s']:6.1f} s  {rate:6.1f} rows/s = {rate / limit:5.1%} of {limit}/s"
        f"  done {r['done']:,}  failed {r['failed']}  client CPU {r['cpu_s']:.1f} s  "
        f"server 200/429/500: {s.get('200', 0)}/{s.get('429', 0)}/{s.get('500', 0)}"
        f"  busiest second {s.get('busiest_second', 0)}"
        f"  {'checked' if r['checked'] else 'WRONG RESULTS'}"
    )


def main() -> None:
    global URL
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--qps", type=float, default=190)
    ap.add_argument("--limit", type=int, default=200, help="the server's requests per second")
    ap.add_argument("--fail", type=float, default=0.02, help="share of requests failing (500)")
    ap.add_argument("--latency", type=float, default=0.1, help="mean answer time (s)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.limit, args.fail, args.latency)
        return
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        server = subprocess.Popen([
            sys.executable, __file__, "--serve", port_file, "--limit", str(args.limit),
            "--fail", str(args.fail), "--latency", str(args.latency),
        ])
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
            URL = f"http://127.0.0.1:{Path(port_file).read_text()}"
            floor = args.rows / args.limit
            print(f"{args.rows:,} prompts, server limit {args.limit}/s (physical limit "
                  f"{floor:.1f} s), {args.fail:.0%} random 500s, qps={args.qps:g}, "
                  "concurrency=50")
            results: list[tuple[str, dict[str, Any], dict[str, int]]] = []
            r = ferroq_run(args.rows, args.qps, os.path.join(tmp, "store"))
            results.append(("ferroq process(qps=...)", r, server_stats(reset=True)))
            time.sleep(1.5)  # let the server's window empty
            r = plain_run(args.rows, args.qps)
            results.append(("plain asyncio + pacer", r, server_stats(reset=True)))
            for name, r, s in results:
                print(report(name, r, s, args.limit))
            print("load average (1, 5, 15 min): " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
            ok = all(r["checked"] and r["failed"] == 0 for _, r, _ in results)
            if not ok:
                raise SystemExit("FAILED: rows failed or results wrong")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
