"""The dashboard's ASGI app (Starlette): pages rendered on the server from
Jinja2 templates, a small script and stylesheet shipped in the package, a
Server-Sent Events stream for live counts and charts, and POST actions.

Every link is relative to where the app is mounted (``root_path``), so the
app works at ``/`` under ``ferroq dashboard`` and under any prefix of a
user's own Starlette or FastAPI app (``Mount("/ops", app=create_app(q))``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Sequence, Union
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import FerroqError, InvalidArgumentError
from .._types import STATUSES
from ..queue import Queue
from .inbox import Inbox
from .monitor import Monitor, Snapshot
from .security import COOKIE, AccessGuard, mask_url
from .views import age, decoded, ms_ago, pretty, prompt_of, when

__all__ = ["PAGE_SIZE", "create_app"]

_HERE = Path(__file__).resolve().parent
#: Tasks per page of the task list.
PAGE_SIZE = 50
# The inbox's session cookie (a random id: the session's worker name).
_INBOX_COOKIE = "ferroq_inbox"
# How often the stream looks for news, and sends a comment to keep proxies open.
_STREAM_TICK_S = 0.5
_STREAM_KEEPALIVE_S = 15.0
_FINISHED = ("done", "failed", "cancelled", "expired")

Handler = Callable[[Request], Awaitable[Response]]


class _Dashboard:
    """The state the routes share: the queue, the monitor, the guard."""

    def __init__(
        self,
        queue: Queue,
        guard: AccessGuard,
        *,
        inbox_queues: Sequence[str],
        inbox_lease: float,
        title: str,
    ) -> None:
        self.queue = queue
        self.guard = guard
        self.monitor = Monitor(queue)
        self.inbox = Inbox(queue, lease=inbox_lease)
        self.inbox_queues = list(inbox_queues)
        self.title = title
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined,
        )
        env.filters.update(pretty=pretty, when=when, age=age, ms_ago=ms_ago)
        self.templates = Jinja2Templates(env=env)
        self._closing = threading.Event()

    def close_streams(self) -> None:
        """Ends every open SSE stream within a tick (a server shutting down
        waits for open responses; browsers reconnect to the next server)."""
        self._closing.set()

    @property
    def closing(self) -> bool:
        """True once :meth:`close_streams` was called."""
        return self._closing.is_set() or self.monitor.stopped

    # -- helpers -------------------------------------------------------------

    def page(self, request: Request, template: str, **context: Any) -> Response:
        """Renders ``template`` with what every page needs."""
        base = request.scope.get("root_path", "")
        context.update(
            base=base,
            title=self.title,
            store=mask_url(self.queue.url),
            csrf=self.guard.csrf_token,
            msg=request.query_params.get("msg"),
            error=request.query_params.get("error"),
            can_pause=hasattr(self.queue, "pause"),
            has_metrics=_metrics_available(),
        )
        return self.templates.TemplateResponse(request, template, context)

    @staticmethod
    def back(request: Request, to: str, **params: Optional[str]) -> RedirectResponse:
        """A 303 to ``to`` (relative to the mount point) with a message."""
        # A message quoting a huge input (a 100 KB queue name) is cut short:
        # clients and proxies refuse long Location headers.
        query = urlencode({k: _clip(v) for k, v in params.items() if v})
        base = request.scope.get("root_path", "")
        sep = "&" if "?" in to else "?"
        return RedirectResponse(f"{base}{to}{sep + query if query else ''}", status_code=303)

    async def form(self, request: Request) -> dict[str, str]:
        """The POSTed form, once its CSRF token is checked."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        given = request.headers.get("x-csrf-token") or fields.get("csrf")
        if not self.guard.csrf_ok(given):
            raise _Forbidden("missing or wrong CSRF token (reload the page)")
        origin, host = request.headers.get("origin"), request.headers.get("host", "")
        if not AccessGuard.same_origin(origin, host):
            raise _Forbidden("cross-site request refused")
        return fields

    def snapshot_json(self, snap: Snapshot) -> dict[str, Any]:
        """What the stream pushes and ``/api/snapshot`` returns."""
        totals = dict.fromkeys(STATUSES, 0)
        for counts in snap.counts.values():
            for status, n in counts.items():
                totals[status] += n
        return {
            "counts": snap.counts,
            "totals": totals,
            "read_at": snap.read_at,
            "took_s": round(snap.took_s, 4),
            "error": snap.error,
            "workers": len(snap.workers),
            "series": self.monitor.series(120),
            "recent": [
                {
                    "at": e.at_ms,
                    "task_id": e.task_id,
                    "queue": e.queue,
                    "name": e.name,
                    "kind": e.kind,
                    "new": e.new,
                }
                for e in self.monitor.recent(15)
            ],
        }


class _Forbidden(FerroqError):
    """A request refused by the CSRF or origin check."""


def _metrics_available() -> bool:
    try:
        import prometheus_client  # noqa: F401

        from .. import metrics  # noqa: F401
    except ImportError:
        return False
    return True


def _int(value: Optional[str], what: str) -> Optional[int]:
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(f"{what} must be a whole number, got {value!r}") from None


def _clip(text: str, most: int = 500) -> str:
    """``text``, or its first ``most`` characters and an ellipsis."""
    return text if len(text) <= most else text[:most] + "…"


def _task_id(value: object) -> Optional[int]:
    """A task id from a URL: the int itself when a store can hold it (a
    64-bit integer), else None: no task has it. Bad hints and ids a URL can
    carry are then "no such task", not a server error."""
    if isinstance(value, str):
        try:
            value = int(value) if value.strip().isascii() else None
        except ValueError:
            return None
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return None


def _session(request: Request) -> tuple[str, bool]:
    """The inbox session id of the request, and whether it is new."""
    sid = request.cookies.get(_INBOX_COOKIE)
    if sid and 8 <= len(sid) <= 64 and sid.replace("-", "").replace("_", "").isalnum():
        return sid, False
    return secrets.token_urlsafe(12), True


def _routes(d: _Dashboard) -> list[Any]:  # noqa: C901 - one closure per route
    async def overview(request: Request) -> Response:
        snap = await run_in_threadpool(d.monitor.snapshot)
        queues = sorted(set(snap.counts) | set(snap.options))
        return d.page(
            request,
            "overview.html",
            snap=snap,
            queues=queues,
            statuses=STATUSES,
            # Inside <script>: no "</script>" can come from a queue name.
            data=json.dumps(d.snapshot_json(snap)).replace("<", "\\u003c"),
            recent=d.monitor.recent(15),
            paused={n: bool(getattr(snap.options.get(n), "paused", False)) for n in queues},
            now_ms=d.queue._store.now_ms(),
        )

    async def stream(request: Request) -> Response:
        d.monitor.start()

        async def events() -> AsyncIterator[str]:
            sent = -1
            idle = 0.0
            yield "retry: 2000\n\n"
            while not d.closing:
                if d.monitor.version != sent:
                    snap = await run_in_threadpool(d.monitor.snapshot)
                    sent = d.monitor.version
                    yield f"event: snapshot\ndata: {json.dumps(d.snapshot_json(snap))}\n\n"
                    idle = 0.0
                elif idle >= _STREAM_KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    idle = 0.0
                await asyncio.sleep(_STREAM_TICK_S)
                idle += _STREAM_TICK_S
                if await request.is_disconnected():
                    return

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def api_snapshot(request: Request) -> Response:
        snap = await run_in_threadpool(d.monitor.snapshot)
        return JSONResponse(d.snapshot_json(snap))

    async def tasks(request: Request) -> Response:
        q = request.query_params
        filters = {
            k: (q.get(k) or "").strip() or None for k in ("queue", "status", "name", "key", "batch")
        }
        try:
            after = _int(q.get("after"), "after")
            if filters["status"] is not None and filters["status"] not in STATUSES:
                raise InvalidArgumentError(f"unknown status {filters['status']!r}")
            rows = await run_in_threadpool(
                lambda: d.queue.list(**filters, after_id=after, limit=PAGE_SIZE + 1)
            )
            problem = None
        except FerroqError as e:
            rows, after, problem = [], None, str(e)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        next_query = urlencode(
            {**{k: v for k, v in filters.items() if v}, "after": rows[-1].id if rows else ""}
        )
        return d.page(
            request,
            "tasks.html",
            rows=rows,
            filters=filters,
            statuses=STATUSES,
            after=after,
            next_query=next_query if more else None,
            first_query=urlencode({k: v for k, v in filters.items() if v}),
            problem=problem,
        )

    async def task_detail(request: Request) -> Response:
        task_id = request.path_params["id"]
        record = None
        if _task_id(task_id) is not None:
            record = await run_in_threadpool(d.queue.get, task_id)
        if record is None:
            return d.page(request, "missing.html", task_id=task_id)
        fields = {
            f: decoded(record, f) for f in ("payload", "args", "kwargs", "result", "metadata")
        }
        return d.page(
            request,
            "task.html",
            t=record,
            fields=fields,
            history=d.monitor.history(task_id),
            finished=record.status in _FINISHED,
        )

    async def api_task(request: Request) -> Response:
        task_id = _task_id(request.path_params["id"])
        record = None if task_id is None else await run_in_threadpool(d.queue.get, task_id)
        if record is None:
            return JSONResponse({"error": "no such task"}, status_code=404)
        return JSONResponse(
            {
                "id": record.id,
                "status": record.status,
                "progress": record.progress,
                "attempts": record.attempts,
                "finished": record.status in _FINISHED,
            }
        )

    def task_action(verb: str) -> Handler:
        async def act(request: Request) -> Response:
            task_id = request.path_params["id"]
            try:
                form = await d.form(request)
            except _Forbidden as e:
                return PlainTextResponse(str(e), status_code=403)
            to = f"/tasks/{task_id}"
            try:
                msg = await run_in_threadpool(_task_verb, d.queue, verb, task_id, form)
            except FerroqError as e:
                return d.back(request, to, error=f"{verb}: {e}")
            if verb == "delete":
                to = "/tasks"
            return d.back(request, to, msg=msg)

        return act

    async def queue_action(request: Request) -> Response:
        try:
            form = await d.form(request)
        except _Forbidden as e:
            return PlainTextResponse(str(e), status_code=403)
        verb = request.path_params["verb"]
        name = form.get("queue", "")
        try:
            if not name:
                raise InvalidArgumentError("no queue named")
            msg = await run_in_threadpool(_queue_verb, d.queue, verb, name)
        except FerroqError as e:
            return d.back(request, "/", error=f"{verb} {name}: {e}")
        d.monitor.refresh_soon()
        return d.back(request, "/", msg=msg)

    async def listen(request: Request) -> Response:
        values = await run_in_threadpool(d.queue.listen_data_all)
        return d.page(request, "listen.html", values=sorted(values.items()))

    async def inbox_index(request: Request) -> Response:
        snap = await run_in_threadpool(d.monitor.snapshot)
        names = sorted(set(d.inbox_queues) | set(snap.options))
        return d.page(request, "inbox_index.html", names=names, snap=snap)

    async def inbox(request: Request) -> Response:
        name = request.query_params.get("queue", "")
        if not name:
            return d.back(request, "/inbox")
        sid, new = _session(request)
        # The id this session last held, from the page: only a hint, so a bad one is none.
        hint = _task_id(request.query_params.get("held"))
        take = request.query_params.get("take", "1") != "0"
        hand = await run_in_threadpool(lambda: d.inbox.hand(name, sid, hint=hint, take=take))
        waiting = await run_in_threadpool(
            lambda: d.queue.list(queue=name, status="queued", limit=25)
        )
        response = d.page(
            request,
            "inbox.html",
            name=name,
            hand=hand,
            prompt=None if hand.task is None else prompt_of(hand.task),
            waiting=[
                (t, prompt_of(t)) for t in waiting if hand.task is None or t.id != hand.task.id
            ],
            me=sid[:6],
        )
        if new:
            response.set_cookie(
                _INBOX_COOKIE,
                sid,
                httponly=True,
                samesite="strict",
                path=request.scope.get("root_path", "") or "/",
            )
        return response

    def inbox_action(verb: str) -> Handler:
        async def act(request: Request) -> Response:
            try:
                form = await d.form(request)
            except _Forbidden as e:
                return PlainTextResponse(str(e), status_code=403)
            name = form.get("queue", "")
            sid, new = _session(request)
            if new:
                return d.back(request, "/inbox", error="your inbox session ended; start again")
            try:
                task_id = _int(form.get("task_id"), "task_id")
                if task_id is None:
                    raise InvalidArgumentError("no task named")
                if verb == "answer":
                    await run_in_threadpool(
                        lambda: d.inbox.answer(
                            task_id,
                            sid,
                            choice=form.get("choice"),
                            text=form.get("text"),
                            by=f"dashboard:{sid[:6]}",
                        )
                    )
                    msg = f"Answered task {task_id}."
                    params = {"queue": name}
                elif verb == "switch":
                    await run_in_threadpool(lambda: d.inbox.switch(name, task_id, sid))
                    msg, params = f"Switched to task {task_id}.", {"queue": name}
                else:
                    await run_in_threadpool(lambda: d.inbox.give_back(task_id, sid))
                    msg, params = f"Gave task {task_id} back.", {"queue": name, "take": "0"}
            except FerroqError as e:
                return d.back(request, f"/inbox/q?{urlencode({'queue': name})}", error=str(e))
            return d.back(request, f"/inbox/q?{urlencode(params)}", msg=msg)

        return act

    async def metrics(request: Request) -> Response:
        try:
            from .. import metrics as ferroq_metrics
        except ImportError:
            return PlainTextResponse(
                "metrics need prometheus-client: pip install 'ferroq[metrics]'", status_code=404
            )
        try:
            body, content_type = await run_in_threadpool(ferroq_metrics.render, d.queue)
        except ImportError:
            return PlainTextResponse(
                "metrics need prometheus-client: pip install 'ferroq[metrics]'", status_code=404
            )
        return Response(body, media_type=content_type)

    return [
        Route("/", overview),
        Route("/stream", stream),
        Route("/api/snapshot", api_snapshot),
        Route("/api/tasks/{id:int}", api_task),
        Route("/tasks", tasks),
        Route("/tasks/{id:int}", task_detail),
        *[
            Route(f"/tasks/{{id:int}}/{verb}", task_action(verb), methods=["POST"])
            for verb in ("cancel", "retry", "priority", "delete")
        ],
        Route("/queues/{verb}", queue_action, methods=["POST"]),
        Route("/listen", listen),
        Route("/inbox", inbox_index),
        Route("/inbox/q", inbox),
        *[
            Route(f"/inbox/{verb}", inbox_action(verb), methods=["POST"])
            for verb in ("answer", "switch", "give-back")
        ],
        Route("/metrics", metrics),
        Mount("/static", app=StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]


def _task_verb(queue: Queue, verb: str, task_id: int, form: dict[str, str]) -> str:
    """Runs one action on one task; the message to show."""
    if verb == "cancel":
        status = queue.cancel(task_id, force=form.get("force") == "1")
        return f"Task {task_id}: {status}."
    if verb == "retry":
        record = queue.get(task_id)
        if record is not None and record.status == "done":
            queue.requeue(task_id)
        else:
            queue.retry(task_id)
        return f"Task {task_id} is queued again."
    if verb == "priority":
        priority = _int(form.get("priority"), "priority")
        if priority is None:
            raise InvalidArgumentError("give a priority")
        queue.set_priority(task_id, priority)
        return f"Task {task_id} now has priority {priority}."
    if verb == "delete":
        queue.delete(task_id)
        return f"Task {task_id} deleted."
    raise InvalidArgumentError(f"unknown action {verb!r}")


def _queue_verb(queue: Queue, verb: str, name: str) -> str:
    """Runs one action on a queue; the message to show."""
    if verb == "retry-failed":
        n = queue.retry_failed(queue=name)
        return f"{n} failed task{'s' if n != 1 else ''} of {name!r} queued again."
    if verb in ("pause", "resume"):
        act = getattr(queue, verb, None)
        if act is None:
            raise InvalidArgumentError(f"this ferroq cannot {verb} queues yet")
        act(name)
        return f"Queue {name!r} {verb}d."
    raise InvalidArgumentError(f"unknown action {verb!r}")


class _GuardMiddleware:
    """The ASGI middleware applying :class:`AccessGuard` to every request."""

    def __init__(self, app: ASGIApp, guard: AccessGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not self.guard.host_ok(request.headers.get("host", "")):
            await PlainTextResponse("unknown Host", status_code=400)(scope, receive, send)
            return
        query_token = request.query_params.get("token")
        if not self.guard.authorized(request.headers, dict(request.cookies), query_token):
            refused = PlainTextResponse(
                "this dashboard needs its token: open it once as ...?token=<token>, "
                "or send 'Authorization: Bearer <token>'",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="ferroq"'},
            )
            await refused(scope, receive, _with_headers(send))
            return
        if query_token is not None and self.guard.token is not None and scope["type"] == "http":
            # Keep the token in an HttpOnly cookie, out of the address bar and history.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                COOKIE,
                self.guard.token,
                httponly=True,
                samesite="strict",
                path=scope.get("root_path", "") or "/",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, _with_headers(send))


# Sent with every response: scripts and styles only from the app itself
# (no inline script can run, whatever a task's data holds), no framing.
_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" makes forms send Origin: null
    (b"x-frame-options", b"DENY"),
]


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
        await send(message)

    return wrapped


def create_app(
    queue: Union[Queue, str],
    *,
    token: Optional[str] = None,
    allowed_hosts: Optional[Sequence[str]] = None,
    inbox: Sequence[str] = (),
    inbox_lease: float = 300.0,
    title: str = "ferroq",
) -> Starlette:
    """The dashboard as an ASGI app, to serve (:func:`serve`) or mount in
    your own Starlette or FastAPI app under any prefix.

    ``queue`` is a :class:`~ferroq.Queue` or a store URL (opened here and
    closed when the app shuts down). With ``token``, every request needs
    it (see :mod:`ferroq.dashboard.security`); without one, put the app
    behind your own authentication or on a loopback address.
    ``allowed_hosts`` limits the ``Host`` names served (``serve`` sets the
    loopback names on a loopback bind). ``inbox`` names queues whose tasks
    people answer (queues with options set, such as ``serial`` or
    ``answer_timeout``, are listed too); ``inbox_lease`` is how long a
    person holds a task of a queue without an answer timeout.
    """
    owned = isinstance(queue, str)
    q = Queue(queue) if isinstance(queue, str) else queue
    if not isinstance(q, Queue):
        raise InvalidArgumentError(f"create_app() needs a ferroq.Queue or a URL, got {queue!r}")
    guard = AccessGuard(token, allowed_hosts=allowed_hosts)
    d = _Dashboard(q, guard, inbox_queues=inbox, inbox_lease=inbox_lease, title=title)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        d.monitor.start()
        try:
            yield
        finally:
            d.monitor.stop()
            if owned:
                q.close()

    app = Starlette(routes=_routes(d), lifespan=lifespan)
    app.state.dashboard = d
    app.add_middleware(_GuardMiddleware, guard=guard)
    return app

