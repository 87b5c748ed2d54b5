"""OpenTelemetry tracing: a span around each send and each execution, with
the sender's trace context carried inside the task so one trace crosses
from the process that sent a task into the worker that ran it.

Needs ``opentelemetry-api`` (the ``otel`` extra) and a tracer provider set
by the application (the OpenTelemetry SDK, or ``opentelemetry-instrument``).
Without the package, or before a provider is set, every function here does
nothing and costs one check per task.

The carrier: the propagator's headers (W3C ``traceparent`` and
``tracestate``, plus whatever else the application's propagator writes)
travel in a small header ahead of the payload bytes
(:func:`ferroq.serialization.with_context`) — not in the arguments and not
in the task's metadata, so they can never collide with the user's own, and
every backend stores them as it stores the payload. Readers of the payload
(``Queue.get(id).args``, workers of this version) skip the header.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional

from ._core import __version__
from ._errors import SerializationError
from .serialization import split_context, with_context

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # the ``otel`` extra is not installed: tracing is off
    _trace = None  # type: ignore[assignment]

__all__ = ["active", "carried_context", "carry", "execute_span", "send_span", "set_outcome"]

# The instrumentation scope spans are recorded under.
SCOPE = "ferroq"
_tracer: Optional[Tracer] = None
# Where the API keeps the global provider (None until one is set; peeked at
# only while the API still has it), and whether the environment names one
# for the API to load (read once: it is set before a process starts).
_PEEK = _trace is not None and hasattr(_trace, "_TRACER_PROVIDER")
_ENV_SET = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def active() -> bool:
    """True when spans are recorded: OpenTelemetry is installed and the
    application set a tracer provider (checked per call until one is set,
    which cannot be undone, then remembered)."""
    global _tracer
    if _tracer is not None:
        return True
    if _trace is None:
        return False
    if _PEEK and _trace._TRACER_PROVIDER is None and not _ENV_SET:
        # No provider yet: answered without get_tracer_provider(), which
        # reads the environment (microseconds, on every send and task).
        return False
    provider = _trace.get_tracer_provider()
    if isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)):
        return False
    _tracer = provider.get_tracer(SCOPE, __version__)
    return True


@contextmanager
def send_span(task_name: str, queue: str) -> Iterator[Span]:
    """A producer span ``send <task name>`` around one send, made current so
    :func:`carry` puts it into the payload. Only call when :func:`active`."""
    assert _tracer is not None
    with _tracer.start_as_current_span(
        f"send {task_name}",
        kind=_trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "ferroq",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "ferroq.task.name": task_name,
        },
    ) as span:
        yield span


def carry(payload: bytes) -> bytes:
    """``payload`` with the current trace context carried ahead of it
    (unchanged when tracing is off)."""
    if _tracer is None:
        return payload
    headers: dict[str, str] = {}
    _propagate.inject(headers)
    return with_context(payload, headers)


def carried_context(payload: bytes) -> Optional[dict[str, str]]:
    """The trace context headers a payload carries (None when none)."""
    try:
        return split_context(payload)[0]
    except SerializationError:
        return None  # a damaged header: the task still runs, untraced


@contextmanager
def execute_span(
    task_name: str, queue: str, task_id: int, attempt: int, payload: bytes
) -> Iterator[Span]:
    """A consumer span ``process <task name>`` around one execution, a child
    of the send span the payload carries (a root span when it carries
    none). Made current, so spans the task function opens nest inside it.
    Only call when :func:`active`."""
    assert _tracer is not None
    headers = carried_context(payload)
    parent = _propagate.extract(headers) if headers else None
    token = _otel_context.attach(parent) if parent is not None else None
    try:
        with _tracer.start_as_current_span(
            f"process {task_name}",
            kind=_trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "ferroq",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": str(task_id),
                "ferroq.task.name": task_name,
                "ferroq.task.attempt": attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span
    finally:
        if token is not None:
            _otel_context.detach(token)


def set_outcome(span: Span, *, error: Optional[str] = None, cancelled: bool = False) -> None:
    """Marks how the attempt ended: ``ferroq.outcome`` (``done``,
    ``error``, ``cancelled``), and for an error the span's status and an
    ``exception`` event with the type, message and traceback."""
    if cancelled:
        span.set_attribute("ferroq.outcome", "cancelled")
        return
    if error is None:
        span.set_attribute("ferroq.outcome", "done")
        return
    span.set_attribute("ferroq.outcome", "error")
    try:
        doc = json.loads(error)
    except ValueError:
        doc = {"message": error}
    attrs = {
        "exception.type": str(doc.get("type") or "error"),
        "exception.message": str(doc.get("message") or ""),
    }
    if doc.get("traceback"):
        attrs["exception.stacktrace"] = str(doc["traceback"])
    span.add_event("exception", attrs)
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, attrs["exception.message"]))
