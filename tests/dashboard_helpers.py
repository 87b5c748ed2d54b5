"""A real uvicorn server on a free 127.0.0.1 port, in a thread, and a small
HTTP client with its own cookie jar (one per browser-like session), for the
dashboard's tests and its benchmark. Standard library only on the client
side, so nothing here depends on which HTTP client a Starlette release
pairs its TestClient with."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit

import uvicorn


class LiveServer:
    """Serves an ASGI app until :meth:`stop` (a context manager)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        # h11 and no websockets: nothing optional imported in the server thread.
        config = uvicorn.Config(
            app,
            log_level="warning",
            http="h11",
            ws="none",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        dashboard = getattr(getattr(self.app, "state", None), "dashboard", None)
        if dashboard is not None:
            dashboard.close_streams()  # open SSE streams would hold the shutdown
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    """One session: keeps the cookies the server sets, follows no redirect
    unless asked."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        *,
        form: Optional[dict[str, Any]] = None,
        headers: Optional[dict[str, str]] = None,
        follow: bool = False,
    ) -> Reply:
        parts = urlsplit(self.base)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        sent = {**self.headers, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, parts.path + path, body=body, headers=sent)
            r = conn.getresponse()
            reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
            for value in r.headers.get_all("set-cookie") or []:
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        finally:
            conn.close()
        if follow and reply.status in (301, 302, 303, 307):
            location = urlsplit(reply.headers["location"])
            target = location.path
            if location.query:
                target += "?" + location.query
            return self.request("GET", target, follow=True)
        return reply

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, Any], **kw: Any) -> Reply:
        return self.request("POST", path, form=form, **kw)


def csrf_of(page: str) -> str:
    """The CSRF token a page carries."""
    m = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert m, "the page has no CSRF token"
    return m[1]
