"""What the scale-out benchmarks read from /proc (Linux): process trees,
their CPU time, and the load average printed beside each figure. Shared by
``scale.py`` and ``web_deploy.py``."""

from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def load() -> str:
    """The load averages, to print beside a figure."""
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and the processes below it, now."""
    total = 0.0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total
