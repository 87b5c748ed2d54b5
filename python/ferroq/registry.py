"""The registry: the process-wide table of task functions by name, which
``@task`` adds to and workers look stored task names up in."""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Mapping
from typing import Any, Optional

from ._errors import UnknownTaskError
from .task_function import TaskFunction

__all__ = ["Overlay", "discover", "find", "lookup", "register", "registered"]

_registry: dict[str, TaskFunction[Any, Any]] = {}
_registry_lock = threading.Lock()


def register(fn: TaskFunction[Any, Any]) -> None:
    """Adds a task function to the process-wide registry under its name."""
    with _registry_lock:
        _registry[fn.name] = fn


def lookup(name: str) -> TaskFunction[Any, Any]:
    """The task registered under ``name``; :class:`UnknownTaskError` if none."""
    try:
        return _registry[name]
    except KeyError:
        raise UnknownTaskError(
            f"no task named {name!r} is registered in this process "
            "(import its module, or use ferroq.discover(...))"
        ) from None


def registered() -> dict[str, TaskFunction[Any, Any]]:
    """A snapshot of every registered task, by name."""
    with _registry_lock:
        return dict(_registry)


def find(name: str) -> Optional[TaskFunction[Any, Any]]:
    """The registered function for a stored task name, or None.

    Besides the exact name: a task sent from a script's ``__main__`` is
    found under ``__mp_main__`` in spawned children; and a module imported
    under a longer or shorter dotted path than the sender's (``jobs`` from
    the script's directory, ``app.jobs`` from the project's) matches when
    exactly one registered task has the same function name and a module
    path that ends the other's."""
    fn = _registry.get(name)
    if fn is None and name.startswith("__main__:"):
        fn = _registry.get("__mp_main__:" + name[len("__main__:") :])
    if fn is None and ":" in name:
        fn = _by_module_suffix(name)
    return fn


def _by_module_suffix(name: str) -> Optional[TaskFunction[Any, Any]]:
    module, _, qualname = name.partition(":")
    with _registry_lock:
        found = [
            fn
            for other, fn in _registry.items()
            if other.endswith(":" + qualname)
            and _dotted_suffix(module, other.partition(":")[0])
        ]
    return found[0] if len(found) == 1 else None


def _dotted_suffix(a: str, b: str) -> bool:
    """True when one dotted module path ends the other (``jobs``, ``app.jobs``)."""
    return a != b and (a.endswith("." + b) or b.endswith("." + a))


class Overlay:
    """The registry as one user (a scheduler) sees it: some names run
    another function there, and nowhere else. The registry itself is never
    changed, so other schedulers in the process are not affected."""

    def __init__(self, replacements: Mapping[str, TaskFunction[Any, Any]] = {}) -> None:
        self._replacements = dict(replacements)

    def find(self, name: str) -> Optional[TaskFunction[Any, Any]]:
        """The function run for a stored task name, or None (see :func:`find`)."""
        return self._replacements.get(name) or find(name)


def discover(package: str) -> list[TaskFunction[Any, Any]]:
    """Imports a module or package (every submodule, recursively) and
    returns the tasks registered from it."""
    module = importlib.import_module(package)
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            importlib.import_module(info.name)
    prefix = package + "."
    return [
        t
        for t in registered().values()
        if t.__module__ == package or t.__module__.startswith(prefix)
    ]
