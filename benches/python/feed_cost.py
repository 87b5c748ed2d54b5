"""What the event feed costs the drain (W2): the same no-op drain by a
scheduler in this process (c=4), on stores with the feed on and off
(``?events=off``), alternated in one run; every result is checked.

    python benches/python/feed_cost.py [--tasks 20000] [--rounds 3] [--shards 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path

from basics import drain_rate  # the same drain as W2's; registers bench.noop


def drain(url: str, n: int) -> float:
    rate, ok = drain_rate(n, url)
    if not ok:
        raise SystemExit(f"drain of {url} FAILED its check")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(a.rounds):
            for mode in ("on", "off"):
                url = f"sqlite://{Path(d) / uuid.uuid4().hex}?shards={a.shards}&events={mode}"
                rates[mode].append(drain(url, a.tasks))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(f"drain {a.tasks} no-op tasks, c=4, {a.shards} shard(s), {a.rounds} rounds alternated")
    print(f"  feed on : {on:>9,.0f} tasks/s  {[round(r) for r in rates['on']]}")
    print(f"  feed off: {off:>9,.0f} tasks/s  {[round(r) for r in rates['off']]}")
    print(f"  cost of the feed: {100 * (1 - on / off):.1f}%   check=ok")


if __name__ == "__main__":
    main()
