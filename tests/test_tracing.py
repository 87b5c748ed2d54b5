"""OpenTelemetry tracing: one trace from the sender's span into the worker's
execute span, in one process and across a worker in another process,
recorded by the SDK's in-memory exporter.

A tracer provider can be set once per process and turns tracing on for
everything after it, so every traced run here is a subprocess of its own
(this pytest process stays untraced, which the first test checks)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import ferroq
from conftest import PG_URL, needs_pg, pg_url, python_env
from ferroq import SerializationError, tracing
from ferroq.serialization import decode, encode, split_context, with_context

# Sets up the SDK with an in-memory exporter, defines the tasks, and runs
# one role: "send" (inside a span "request"), "work" (a scheduler until the
# sent tasks finished) or "both". Prints the finished spans as JSON.
SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    from ferroq import Backoff, Queue, QueueScheduler, current_task

    url, role, mode = sys.argv[1:4]
    q = Queue(url)
    seen = {}


    @q.task(name="traced.work", queue="traced")
    def work(x, traceparent="none"):
        with trace.get_tracer("user").start_as_current_span("inside"):
            seen[current_task().id] = traceparent
            return [x * 2, traceparent]


    @q.task(name="traced.awork", queue="traced")
    async def awork(x, traceparent="none"):
        with trace.get_tracer("user").start_as_current_span("inside"):
            return [x * 2, traceparent]


    @q.task(name="traced.boom", queue="traced", retries=0)
    def boom():
        raise ValueError("no luck")


    ids = []
    if role in ("send", "both"):
        fn = awork if mode == "asyncio" else work
        with trace.get_tracer("app").start_as_current_span("request"):
            # The user's own metadata and an argument named like the carrier's
            # header travel untouched beside the trace context.
            h = fn.options(metadata={"traceparent": "user's own"}).send(21, traceparent="arg")
            ids.append(h.id)
            ids.append(boom.send().id)
    if role in ("work", "both"):
        if role == "work":
            ids = [int(i) for i in sys.argv[4].split(",")]
        with QueueScheduler(q, concurrency=2, queues=["traced"], mode=mode):
            while any(q.get(i).status in ("queued", "running") for i in ids):
                time.sleep(0.01)
    records = [q.get(i) for i in ids]
    out = {
        "ids": ids,
        "statuses": [r.status for r in records],
        "result": q.get(ids[0]).result if role != "send" else None,
        "metadata": records[0].metadata,
        "args": [list(records[0].args), records[0].kwargs],
        "spans": [
            {
                "name": s.name,
                "trace": format(s.context.trace_id, "032x"),
                "span": format(s.context.span_id, "016x"),
                "parent": format(s.parent.span_id, "016x") if s.parent else None,
                "kind": s.kind.name,
                "status": s.status.status_code.name,
                "attributes": dict(s.attributes),
                "events": [e.name for e in s.events],
            }
            for s in exporter.get_finished_spans()
        ],
    }
    q.close()
    print(json.dumps(out))
    """
)


def run_role(tmp_path: Path, url: str, role: str, mode: str = "thread", *extra: str) -> Any:
    script = tmp_path / "traced.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, role, mode, *extra],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def by_name(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


@pytest.fixture(params=["sqlite-1", "sqlite-4", pytest.param("postgres", marks=needs_pg)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store two processes can open."""
    if request.param == "postgres":
        assert PG_URL
        return pg_url()
    return f"sqlite://{tmp_path}/store?shards={request.param.split('-')[1]}"


def test_this_process_is_untraced_and_payloads_stay_plain(tmp_path: Path) -> None:
    # No tracer provider here: tracing is off, and a send stores the bare payload.
    assert not tracing.active()
    with ferroq.Queue(f"sqlite://{tmp_path}/plain") as q:

        @q.task(name="plain.echo")
        def echo(x: int) -> int:
            return x

        h = echo.send(1)
        record = q.get(h.id)
        assert record is not None
        assert record.raw.payload == encode([[1], {}])


def test_the_carrier_is_a_header_every_reader_skips() -> None:
    payload = encode([[1, "a"], {"traceparent": "mine"}])
    carried = with_context(payload, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert carried[:1] == b"C" and carried.endswith(payload)
    context, rest = split_context(carried)
    assert context == {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert rest == payload
    assert decode(carried, allow_pickle=False) == [[1, "a"], {"traceparent": "mine"}]
    assert split_context(payload) == (None, payload)
    # An empty context is not carried; a cut-off header is an error, not garbage.
    assert with_context(payload, {}) == payload
    with pytest.raises(SerializationError):
        decode(carried[:5], allow_pickle=False)
    assert tracing.carried_context(carried[:5]) is None


@pytest.mark.parametrize("mode", ["thread", "asyncio"])
def test_one_trace_from_the_send_into_the_execution(tmp_path: Path, mode: str) -> None:
    out = run_role(tmp_path, f"sqlite://{tmp_path}/store", "both", mode)
    assert out["statuses"] == ["done", "failed"]
    # The arguments and metadata arrive as sent: the carrier is beside them.
    assert out["result"] == [42, "arg"]
    assert out["metadata"] == {"traceparent": "user's own"}
    assert out["args"] == [[21], {"traceparent": "arg"}]
    spans = out["spans"]
    request = by_name(spans, "request")
    name = "traced.awork" if mode == "asyncio" else "traced.work"
    send, process, inside = (
        by_name(spans, f"send {name}"),
        by_name(spans, f"process {name}"),
        by_name(spans, "inside"),
    )
    assert {s["trace"] for s in (request, send, process, inside)} == {request["trace"]}
    assert request["parent"] is None
    assert send["parent"] == request["span"]
    assert process["parent"] == send["span"]
    assert inside["parent"] == process["span"]
    assert send["kind"] == "PRODUCER" and process["kind"] == "CONSUMER"
    assert send["attributes"]["messaging.message.id"] == str(out["ids"][0])
    assert process["attributes"]["messaging.destination.name"] == "traced"
    assert process["attributes"]["ferroq.task.attempt"] == 1
    assert process["attributes"]["ferroq.outcome"] == "done"
    # A failed attempt: an error status and the exception as an event.
    failed = by_name(spans, "process traced.boom")
    assert failed["status"] == "ERROR" and failed["events"] == ["exception"]
    assert failed["parent"] == by_name(spans, "send traced.boom")["span"]


def test_a_trace_crosses_into_a_worker_in_another_process(
    tmp_path: Path, shared_url: str
) -> None:
    sent = run_role(tmp_path, shared_url, "send")
    assert sent["statuses"] == ["queued", "queued"]
    assert sent["args"] == [[21], {"traceparent": "arg"}]
    ran = run_role(tmp_path, shared_url, "work", "thread", ",".join(map(str, sent["ids"])))
    assert ran["statuses"] == ["done", "failed"]
    assert ran["result"] == [42, "arg"]
    assert ran["metadata"] == {"traceparent": "user's own"}
    send = by_name(sent["spans"], "send traced.work")
    process = by_name(ran["spans"], "process traced.work")
    inside = by_name(ran["spans"], "inside")
    # The worker's span continues the sender's trace, as a child of its send span.
    assert process["trace"] == send["trace"] == by_name(sent["spans"], "request")["trace"]
    assert process["parent"] == send["span"]
    assert inside["parent"] == process["span"]
    # No span of the sender's process was made by the worker, nor the reverse.
    assert not [s for s in sent["spans"] if s["name"].startswith("process")]
    assert not [s for s in ran["spans"] if s["name"].startswith("send")]
