"""How arguments and results become bytes.

JSON is the default: fast (``pydantic_core``), and it handles Pydantic
models, dataclasses, datetimes, UUIDs, enums and the builtin containers.
Values come back typed by the task function's annotations, so a function
annotated ``-> MyModel`` returns a ``MyModel`` from ``handle.result()``.
Pickle is available only when a task or queue opts in with
``serializer="pickle"``, because unpickling runs code chosen by whoever
wrote the payload.

Every payload starts with one byte naming its serializer (``J`` or ``P``),
so a worker never has to guess, and refuses pickle it did not opt into.
A payload sent inside a trace is wrapped once more (:func:`with_context`):
``C``, two bytes of length, the trace context as a JSON object, then the
payload itself. :func:`decode` skips that header, so every reader sees the
same ``[args, kwargs]`` whether or not a trace was carried.
"""

from __future__ import annotations

import inspect
import pickle
import typing
from functools import lru_cache
from typing import Any, Callable, Optional

import pydantic_core
from pydantic import TypeAdapter

from ._errors import SerializationError

__all__ = [
    "JSON",
    "PICKLE",
    "ArgBinder",
    "decode",
    "encode",
    "serializer_name",
    "split_context",
    "with_context",
]

JSON = "json"
PICKLE = "pickle"
_PREFIX = {JSON: b"J", PICKLE: b"P"}
_NAMES = {ord("J"): JSON, ord("P"): PICKLE}
# The tag of a payload carrying a trace context ahead of the payload proper.
_CONTEXT = ord("C")
_CONTEXT_MAX = 0xFFFF


def serializer_name(name: Optional[str]) -> str:
    """Validates a serializer name (None means JSON)."""
    if name is None:
        return JSON
    if name not in _PREFIX:
        raise SerializationError(f"unknown serializer {name!r}: use 'json' or 'pickle'")
    return name


def encode(value: Any, serializer: str = JSON) -> bytes:
    """Serialises ``value``; raises :class:`SerializationError` when it cannot."""
    if serializer == JSON:
        try:
            return b"J" + pydantic_core.to_json(value)
        except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as e:
            raise SerializationError(
                f"cannot serialise {type(value).__name__} as JSON ({e}); "
                "pass JSON-friendly values, Pydantic models or dataclasses, "
                "or opt into serializer='pickle'"
            ) from e
    if serializer == PICKLE:
        try:
            return b"P" + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            raise SerializationError(f"cannot pickle {type(value).__name__}: {e}") from e
    raise SerializationError(f"unknown serializer {serializer!r}")


def decode(data: bytes, *, allow_pickle: bool) -> Any:
    """Deserialises bytes written by :func:`encode` into plain values."""
    if not data:
        raise SerializationError("empty payload")
    if data[0] == _CONTEXT:
        data = split_context(data)[1]
        if not data:
            raise SerializationError("empty payload")
    kind = _NAMES.get(data[0])
    body = data[1:]
    if kind == JSON:
        try:
            return pydantic_core.from_json(body)
        except ValueError as e:
            raise SerializationError(f"payload is not valid JSON: {e}") from e
    if kind == PICKLE:
        if not allow_pickle:
            raise SerializationError(
                "payload is pickled but this task did not opt into serializer='pickle'"
            )
        return pickle.loads(body)
    raise SerializationError(f"payload has unknown serializer tag {data[:1]!r}")


def with_context(payload: bytes, context: dict[str, str]) -> bytes:
    """``payload`` with a trace context (W3C ``traceparent``/``tracestate``
    headers) carried ahead of it, outside the arguments. A context too large
    to carry is left out: tracing never makes a send fail."""
    header = pydantic_core.to_json(context)
    if not context or len(header) > _CONTEXT_MAX:
        return payload
    return b"C" + len(header).to_bytes(2, "big") + header + payload


def split_context(data: bytes) -> tuple[Optional[dict[str, str]], bytes]:
    """The trace context a payload carries (None when it carries none) and
    the payload without it."""
    if not data or data[0] != _CONTEXT:
        return None, data
    size = int.from_bytes(data[1:3], "big")
    if len(data) < 3 + size:
        raise SerializationError("payload has a truncated trace context header")
    try:
        context = pydantic_core.from_json(data[3 : 3 + size])
    except ValueError as e:
        raise SerializationError(f"payload has an unreadable trace context: {e}") from e
    if not isinstance(context, dict):
        context = None
    return context, data[3 + size :]


# Annotations whose JSON form is already the value: no validation needed.
_PLAIN = (inspect.Parameter.empty, Any, object, int, str, float, bool, list, dict, type(None))


@lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> Optional[TypeAdapter[Any]]:
    if annotation in _PLAIN:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:
        # An annotation Pydantic cannot build a validator for: pass values through.
        return None


class ArgBinder:
    """Turns decoded JSON arguments (and results) back into the types a
    function's annotations name."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        sig = inspect.signature(fn)
        self._positional: list[Optional[TypeAdapter[Any]]] = []
        self._by_name: dict[str, Optional[TypeAdapter[Any]]] = {}
        self._var_positional: Optional[TypeAdapter[Any]] = None
        for p in sig.parameters.values():
            adapter = _adapter(hints.get(p.name, inspect.Parameter.empty))
            if p.kind == p.VAR_POSITIONAL:
                self._var_positional = adapter
            elif p.kind == p.VAR_KEYWORD:
                continue
            else:
                if p.kind != p.KEYWORD_ONLY:
                    self._positional.append(adapter)
                self._by_name[p.name] = adapter
        self._result = _adapter(hints.get("return", inspect.Parameter.empty))
        self.needs_work = any(a is not None for a in self._positional) or any(
            a is not None for a in self._by_name.values()
        ) or self._var_positional is not None

    def args(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Validates decoded arguments into their annotated types."""
        if not self.needs_work:
            return args, kwargs
        out = []
        for i, v in enumerate(args):
            a = self._positional[i] if i < len(self._positional) else self._var_positional
            out.append(a.validate_python(v) if a is not None else v)
        kw = {}
        for k, v in kwargs.items():
            a = self._by_name.get(k)
            kw[k] = a.validate_python(v) if a is not None else v
        return out, kw

    def result(self, value: Any) -> Any:
        """Validates a decoded result into the annotated return type."""
        if self._result is None:
            return value
        return self._result.validate_python(value)
