"""The package's import layers: each module imports only modules below it.

Every import counts — module level, inside functions, and under
``if TYPE_CHECKING:`` — because an upward import anywhere is how the old
import cycle grew unnoticed (``from __future__ import annotations`` made it
free at run time). Inside a layer, modules are ordered too: one may import
only those listed before it, so there is no cycle at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "ferroq"

# Lowest first. Within a layer a module may import the ones listed before it.
LAYERS: list[list[str]] = [
    # L0: no imports from the package.
    ["ferroq._core", "ferroq._errors", "ferroq._checks", "ferroq._polars", "ferroq._types"],
    # L1: building blocks that know nothing of queues.
    [
        "ferroq._loops",
        "ferroq.backoff",
        "ferroq.serialization",
        "ferroq.logs",
        "ferroq.tracing",
        "ferroq.context",
        "ferroq.resources",
        "ferroq.options",
        "ferroq.resilience",
        "ferroq.receive",
        "ferroq.events",
        "ferroq.progress",
        "ferroq._watch",
        # Worker processes under a supervisor; it runs a child target given by reference.
        "ferroq.supervisor",
        "ferroq.reshard",
    ],
    # L2: the connection lower layers take instead of a Queue, and what hangs off it.
    ["ferroq._connection", "ferroq._default", "ferroq.listen"],
    # L3: tasks and what is sent or read back in bulk.
    [
        "ferroq.records",
        "ferroq.handle",
        "ferroq.waiting",
        "ferroq.steer",
        "ferroq.flow",
        "ferroq.task_function",
        "ferroq.registry",
        "ferroq.periodic",
        "ferroq.task",
        "ferroq.frame_models",
        "ferroq.frames",
    ],
    # L4: the scheduler; loops share scheduler._state, never the package __init__.
    [
        "ferroq.scheduler.inflight",
        "ferroq.scheduler.retrying",
        "ferroq.scheduler._state",
        "ferroq.scheduler.execute",
        "ferroq.scheduler.task_loop",
        "ferroq.scheduler.eager",
        "ferroq.scheduler.async_loop",
        "ferroq.scheduler.process_loop",
        "ferroq.scheduler.monitor",
        "ferroq.scheduler.cleanup",
        "ferroq.scheduler.listen_loop",
        "ferroq.scheduler.periodic_loop",
        "ferroq.scheduler",
    ],
    # L5
    ["ferroq.process"],
    # L6: the facade, and what reads a Queue from outside it.
    ["ferroq.queue", "ferroq.metrics"],
    # L7: entry points.
    [
        "ferroq",
        # The web dashboard (an optional extra), below the CLI that serves it.
        "ferroq.dashboard.views",
        "ferroq.dashboard.security",
        "ferroq.dashboard.monitor",
        "ferroq.dashboard.inbox",
        "ferroq.dashboard.app",
        "ferroq.dashboard.server",
        "ferroq.dashboard",
        "ferroq.cli._common",
        "ferroq.cli.stats",
        "ferroq.cli.store",
        "ferroq.cli.tasks",
        "ferroq.cli.queues",
        "ferroq.cli.schedules",
        "ferroq.cli.worker",
        "ferroq.cli.dashboard",
        "ferroq.cli",
        "ferroq.cli.__main__",
        "ferroq.__main__",
        "ferroq.qt",
    ],
    # L8: for testing code that uses ferroq (the pytest plugin on top).
    ["ferroq.testing", "ferroq.testing.plugin"],
]

RANK = {m: (layer, pos) for layer, mods in enumerate(LAYERS) for pos, m in enumerate(mods)}


def module_name(path: Path) -> str:
    """``ferroq.scheduler.task_loop`` for ``.../ferroq/scheduler/task_loop.py``."""
    parts = ["ferroq", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package (``.py`` files, and ``_core`` by its stub)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py*")):
        if path.suffix in (".py", ".pyi"):
            found.setdefault(module_name(path), path)
    return found


def imported(name: str, source: str, is_package: bool = False) -> set[str]:
    """The package modules ``name`` imports anywhere in ``source``.

    ``from X import y`` counts as an import of ``X.y`` when that is a module
    of the package, else of ``X`` (``from . import QueueScheduler`` inside
    the scheduler is an import of ``ferroq.scheduler``)."""
    here = name if is_package else name.rpartition(".")[0]
    known = set(RANK) | set(package_modules())
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                if node.module:
                    base += node.module.split(".")
                pkg = ".".join(base)
            else:
                pkg = node.module or ""
            targets = [
                f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in known else pkg for a in node.names
            ]
        else:
            continue
        for target in targets:
            # ``import ferroq.x.y`` needs ferroq.x.y; stop at the longest known prefix.
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and parts[0] == "ferroq" and ".".join(parts) != name:
                out.add(".".join(parts))
    return out


def violations(name: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``name`` that goes up a layer, or to a module listed
    after it in its own layer (modules missing from ``LAYERS`` are reported
    by :func:`test_every_module_has_a_layer`)."""
    layer, pos = RANK[name]
    bad = []
    for target in sorted(imported(name, source, is_package)):
        if target not in RANK:
            continue
        t_layer, t_pos = RANK[target]
        if t_layer > layer:
            bad.append(f"{name} -> {target} (L{layer} -> L{t_layer})")
        elif t_layer == layer and t_pos > pos:
            bad.append(
                f"{name} -> {target} (L{layer} -> L{t_layer}: {target} is listed after {name})"
            )
    return bad


def test_every_module_has_a_layer() -> None:
    modules = set(package_modules())
    missing = sorted(modules - set(RANK))
    assert not missing, f"modules with no layer in tests/test_layers.py: {missing}"
    stale = sorted(set(RANK) - modules)
    assert not stale, f"layers name modules that do not exist: {stale}"


def test_imports_only_go_down() -> None:
    bad = []
    for name, path in package_modules().items():
        if name not in RANK:
            continue
        bad += violations(name, path.read_text(), path.stem == "__init__")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("name", "source", "edge"),
    [
        (
            "ferroq.task",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .queue import Queue\n",
            "ferroq.task -> ferroq.queue (L3 -> L6)",
        ),
        (
            "ferroq.scheduler.monitor",
            "def f():\n    from . import QueueScheduler\n",
            "ferroq.scheduler.monitor -> ferroq.scheduler (L4 -> L4: "
            "ferroq.scheduler is listed after ferroq.scheduler.monitor)",
        ),
        (
            "ferroq.handle",
            "import ferroq.task\n",
            "ferroq.handle -> ferroq.task (L3 -> L3: "
            "ferroq.task is listed after ferroq.handle)",
        ),
        (
            "ferroq.scheduler.execute",
            "from ..process import process\n",
            "ferroq.scheduler.execute -> ferroq.process (L4 -> L5)",
        ),
    ],
)
def test_the_checker_reports_an_upward_import(name: str, source: str, edge: str) -> None:
    assert violations(name, source) == [edge]


def test_the_checker_allows_imports_down() -> None:
    source = "from .. import _core\nfrom ..registry import find\nfrom .inflight import InFlight\n"
    assert imported("ferroq.scheduler.task_loop", source) == {
        "ferroq._core",
        "ferroq.registry",
        "ferroq.scheduler.inflight",
    }
    assert violations("ferroq.scheduler.task_loop", source) == []
