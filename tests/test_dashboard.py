"""The dashboard over HTTP: a real uvicorn server on a free 127.0.0.1 port,
driven with the standard library's HTTP client (one cookie jar per
session). Pages, decoding, pagination, the actions and their CSRF check,
the token on every request (SSE and actions included), the Host check,
masked secrets, mounting under a prefix, the SSE stream, and the inbox
handing different tasks to different people on every backend."""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from dashboard_helpers import Client, LiveServer, csrf_of  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402

from conftest import PG_URL, needs_pg, pg_url, wait_for  # noqa: E402
from ferroq import InvalidArgumentError, Queue  # noqa: E402
from ferroq._core import ManualClock  # noqa: E402
from ferroq.dashboard import create_app, serve  # noqa: E402
from ferroq.dashboard.security import mask_url  # noqa: E402


@pytest.fixture
def served(queue: Queue) -> Iterator[tuple[Queue, Client]]:
    with LiveServer(create_app(queue, inbox=["prompts"])) as server:
        yield queue, Client(server.url)


def finish(q: Queue, queue: str, result: object = None, error: str | None = None) -> int:
    """Claims the next task of ``queue`` and completes (or fails) it."""
    t = q.claim(queue, worker="w")
    assert t is not None
    if error is None:
        t.complete(result)
    else:
        t.fail(error)
    return t.id


def test_pages_show_decoded_tasks(served: tuple[Queue, Client]) -> None:
    q, c = served

    @q.task(queue="jobs")
    def resize(path: str, width: int = 10) -> dict:
        return {}

    done = resize.send("cat.png", width=640)
    t = q.claim("jobs", worker="w")
    assert t is not None and t.id == done.id
    q.progress(t.id, 0.25, worker="w")
    t.complete({"thumb": "cat-640.png"})
    bad = resize.send("<script>alert(1)</script>", width=1)
    q._store.claim("jobs", "w", 1, 30_000)
    q._store.fail(
        bad.id, "w", json.dumps({"type": "builtins.ValueError", "message": "too small",
                                 "traceback": "Traceback ...\nValueError: too small"}),
    )
    page = c.get(f"/tasks/{done.id}")
    assert page.status == 200
    assert "cat.png" in page.text and "640" in page.text and "cat-640.png" in page.text
    assert "25.0%" in page.text
    failed = c.get(f"/tasks/{bad.id}").text
    assert "builtins.ValueError: too small" in failed and "Traceback ..." in failed
    # Task data is escaped, and the page forbids inline scripts anyway.
    assert "<script>alert(1)</script>" not in failed and "&lt;script&gt;" in failed
    assert "script-src 'self'" in c.get(f"/tasks/{bad.id}").headers["content-security-policy"]
    assert c.get("/tasks/999999").status == 200 and "No task 999999" in c.get("/tasks/999999").text
    listing = c.get("/tasks?status=failed&queue=jobs").text
    assert f'data-id="{bad.id}"' in listing and f'data-id="{done.id}"' not in listing
    overview = c.get("/").text
    assert 'data-queue="jobs"' in overview


def test_task_list_pages_by_id(served: tuple[Queue, Client]) -> None:
    q, c = served
    ids = [q.put("bulk", {"i": i}).id for i in range(120)]
    seen: list[int] = []
    path = "/tasks?queue=bulk"
    while True:
        page = c.get(path).text
        seen += [int(x) for x in re.findall(r'<tr data-id="(\d+)"', page)]
        m = re.search(r'id="next-page" href="[^"?]*\?([^"]+)"', page)
        if not m:
            break
        path = "/tasks?" + m[1].replace("&amp;", "&")
    assert seen == sorted(ids)
    assert "unknown status" in c.get("/tasks?status=bogus").text


def test_actions_need_the_csrf_token(served: tuple[Queue, Client]) -> None:
    q, c = served
    h = q.put("jobs", {"n": 1})
    token = csrf_of(c.get(f"/tasks/{h.id}").text)
    assert c.post(f"/tasks/{h.id}/cancel", {}).status == 403
    assert c.post(f"/tasks/{h.id}/cancel", {"csrf": "forged"}).status == 403
    cross = c.post(f"/tasks/{h.id}/cancel", {"csrf": token},
                   headers={"Origin": "https://evil.example"})
    assert cross.status == 403
    assert h.status() == "queued"
    r = c.post(f"/tasks/{h.id}/cancel", {"csrf": token})
    assert r.status == 303 and h.status() == "cancelled"
    page = c.post(f"/tasks/{h.id}/retry", {"csrf": token}, follow=True)
    assert "is queued again" in page.text and h.status() == "queued"


def test_actions_move_tasks(served: tuple[Queue, Client]) -> None:
    q, c = served
    token = csrf_of(c.get("/").text)
    queued = q.put("jobs", {"n": 1})
    assert c.post(f"/tasks/{queued.id}/priority", {"csrf": token, "priority": "7"}).status == 303
    rec = q.get(queued.id)
    assert rec is not None and rec.priority == 7
    bad = c.post(f"/tasks/{queued.id}/priority", {"csrf": token, "priority": "x"}, follow=True)
    assert "whole number" in bad.text
    failed = [q.put("dead", {"i": i}).id for i in range(3)]
    for _ in failed:
        finish(q, "dead", error="boom")
    done = finish(q, "jobs", result="ok")
    assert {q.get(i).status for i in failed} == {"failed"}  # type: ignore[union-attr]
    # Retry one from its page, then the rest in bulk from the overview.
    assert c.post(f"/tasks/{failed[0]}/retry", {"csrf": token}).status == 303
    assert q.get(failed[0]).status == "queued"  # type: ignore[union-attr]
    r = c.post("/queues/retry-failed", {"csrf": token, "queue": "dead"}, follow=True)
    assert "2 failed tasks of &#39;dead&#39; queued again" in r.text
    assert {q.get(i).status for i in failed} == {"queued"}  # type: ignore[union-attr]
    # A done task runs again; deleting works on finished tasks only.
    assert c.post(f"/tasks/{done}/retry", {"csrf": token}).status == 303
    assert q.get(done).status == "queued"  # type: ignore[union-attr]
    r = c.post(f"/tasks/{done}/delete", {"csrf": token}, follow=True)
    assert "delete:" in r.text and q.get(done) is not None
    q.cancel(done)
    assert c.post(f"/tasks/{done}/delete", {"csrf": token}).status == 303
    assert q.get(done) is None


@pytest.mark.skipif(not hasattr(Queue, "pause"), reason="pause lands with the queues worktree")
def test_pause_and_resume_from_the_overview(served: tuple[Queue, Client]) -> None:
    q, c = served
    q.put("jobs", {"n": 1})
    token = csrf_of(c.get("/").text)
    assert c.post("/queues/pause", {"csrf": token, "queue": "jobs"}).status == 303
    assert q.queue_options("jobs").paused  # type: ignore[attr-defined]
    assert c.post("/queues/resume", {"csrf": token, "queue": "jobs"}).status == 303
    assert not q.queue_options("jobs").paused  # type: ignore[attr-defined]


def test_a_token_guards_every_request(tmp_path: Path) -> None:
    token = "s3cret-token-value"
    with Queue(f"sqlite://{tmp_path}/s") as q, LiveServer(create_app(q, token=token)) as srv:
        h = q.put("jobs", {"n": 1})
        anon = Client(srv.url)
        for path in ("/", "/tasks", f"/tasks/{h.id}", "/stream", "/static/dashboard.js",
                     "/api/snapshot", "/inbox", "/listen", "/metrics"):
            assert anon.get(path).status == 401, path
        assert anon.post(f"/tasks/{h.id}/cancel", {"csrf": "x"}).status == 401
        wrong = Client(srv.url, headers={"Authorization": "Bearer wrong-token"})
        assert wrong.get("/").status == 401
        assert Client(srv.url, headers={"Authorization": f"Bearer {token}"}).get("/").status == 200
        import base64

        basic = base64.b64encode(f"ops:{token}".encode()).decode()
        assert Client(srv.url, headers={"Authorization": f"Basic {basic}"}).get("/").status == 200
        # A browser opens it once with ?token=: a cookie, and the token leaves the URL.
        browser = Client(srv.url)
        r = browser.get("/tasks?queue=jobs&token=" + token)
        assert r.status == 303 and r.headers["location"] == "/tasks?queue=jobs"
        assert "httponly" in r.headers["set-cookie"].lower()
        assert "samesite=strict" in r.headers["set-cookie"].lower()
        page = browser.get("/tasks?queue=jobs")
        assert page.status == 200 and token not in page.text
        first = _first_sse_event(srv.port, browser.cookies)
        assert first["totals"]["queued"] == 1
        csrf = csrf_of(page.text)
        assert browser.post(f"/tasks/{h.id}/cancel", {"csrf": csrf}).status == 303
        assert h.status() == "cancelled"


def test_serve_refuses_a_public_bind_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERROQ_DASHBOARD_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.168.1.10", "example.com"):
        with pytest.raises(InvalidArgumentError, match="without a token"):
            serve("memory://", host=host, port=0)
    with pytest.raises(InvalidArgumentError, match="at least 8"):
        create_app("memory://", token="short")


def test_loopback_dashboard_answers_loopback_hosts_only(tmp_path: Path) -> None:
    with Queue(f"sqlite://{tmp_path}/s") as q:
        app = create_app(q, allowed_hosts=["127.0.0.1", "localhost"])
        with LiveServer(app) as srv:
            c = Client(srv.url)
            assert c.get("/").status == 200
            assert c.get("/", headers={"Host": f"localhost:{srv.port}"}).status == 200
            rebound = c.get("/", headers={"Host": f"attacker.example:{srv.port}"})
            assert rebound.status == 400


def test_secrets_are_never_shown() -> None:
    assert mask_url("postgresql://app:hunter2@db/q") == "postgresql://app:***@db/q"
    masked = mask_url("postgresql://db/q?user=app&password=hunter2&schema=x")
    assert "hunter2" not in masked and "schema=x" in masked and "password=***" in masked
    assert mask_url("sqlite:///srv/tasks?shards=4") == "sqlite:///srv/tasks?shards=4"


@needs_pg
def test_a_postgres_password_is_masked_on_every_page() -> None:
    # The test server trusts 127.0.0.1, so a password in the URL is accepted and ignored.
    url = pg_url().replace("://ferroq@", "://ferroq:hunter2-pw@", 1)
    assert "hunter2-pw" in url, PG_URL
    with Queue(url) as q, LiveServer(create_app(q)) as srv:
        h = q.put("jobs", {"n": 1})
        c = Client(srv.url)
        for path in ("/", "/tasks", f"/tasks/{h.id}", "/inbox", "/listen"):
            page = c.get(path)
            assert page.status == 200 and "hunter2-pw" not in page.text, path
        assert "ferroq:***@" in c.get("/").text


def test_mounted_under_a_prefix(tmp_path: Path) -> None:
    with Queue(f"sqlite://{tmp_path}/s") as q:
        h = q.put("jobs", {"n": 1})
        outer = Starlette(routes=[Mount("/ops/ferroq", app=create_app(q))])
        with LiveServer(outer) as srv:
            c = Client(srv.url)
            page = c.get("/ops/ferroq/").text
            hrefs = re.findall(r'(?:href|src|action)="([^"]+)"', page)
            assert hrefs and all(h.startswith("/ops/ferroq/") for h in hrefs), hrefs
            assert c.get("/ops/ferroq/static/dashboard.css").status == 200
            token = csrf_of(page)
            r = c.post(f"/ops/ferroq/tasks/{h.id}/cancel", {"csrf": token})
            assert r.status == 303 and r.headers["location"].startswith(f"/ops/ferroq/tasks/{h.id}")
            assert h.status() == "cancelled"


def _first_sse_event(port: int, cookies: dict[str, str], *, after: int = 0) -> dict:
    """The data of the ``after``-th (0: first) snapshot the stream sends."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    conn.request("GET", "/stream", headers={"Cookie": cookie} if cookie else {})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
    seen = 0
    try:
        event = None
        while True:
            line = r.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "snapshot":
                if seen == after:
                    return json.loads(line[6:])
                seen += 1
    finally:
        conn.close()


def test_the_stream_pushes_new_counts(tmp_path: Path) -> None:
    with Queue(f"sqlite://{tmp_path}/s?shards=2") as q, LiveServer(create_app(q)) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("GET", "/stream")
        r = conn.getresponse()
        snapshots: list[dict] = []

        def read() -> None:
            event = None
            while True:
                try:
                    line = r.fp.readline().decode()
                except (OSError, ValueError, AttributeError):  # closed by the test's end
                    return
                if not line:
                    return
                line = line.rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "snapshot":
                    snapshots.append(json.loads(line[6:]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: bool(snapshots), 30, "the first snapshot")
        assert snapshots[0]["totals"]["done"] == 0
        for i in range(5):
            q.put("jobs", {"i": i})
        for _ in range(5):
            finish(q, "jobs", result="ok")
        wait_for(lambda: snapshots[-1]["totals"]["done"] == 5, 30, "done=5 pushed")
        # The feed's throughput: five finished in the last two minutes.
        wait_for(lambda: sum(s["done"] for s in snapshots[-1]["series"]) == 5, 30, "throughput")
        assert {e["kind"] for e in snapshots[-1]["recent"]} >= {"completed", "claimed", "sent"}
        conn.close()


# -- the inbox ----------------------------------------------------------------


def _held(c: Client, queue: str = "prompts") -> tuple[int | None, str]:
    page = c.get(f"/inbox/q?queue={queue}").text
    m = re.search(r'id="prompt" data-task-id="(\d+)"', page)
    return (int(m[1]) if m else None), page


def test_inbox_hands_each_person_a_different_task(served: tuple[Queue, Client]) -> None:
    q, _ = served
    base = _.base
    prompts = [
        q.put("prompts", {"prompt": f"Deploy build {i}?", "options": ["yes", "no"]}).id
        for i in range(3)
    ]
    people = [Client(base) for _ in range(3)]
    held: list[int | None] = [None] * 3

    def look(i: int) -> None:
        held[i], _page = _held(people[i])

    threads = [threading.Thread(target=look, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(h for h in held if h is not None) == prompts  # three people, three tasks
    # Each keeps their own task on reload.
    assert [_held(p)[0] for p in people] == held
    # A fourth person finds nothing waiting.
    late_id, late = _held(Client(base))
    assert late_id is None and "Nothing is waiting" in late
    # Answers: an option, and free text.
    a, b, _c = people
    page_a = _held(a)[1]
    assert "Deploy build" in page_a and 'value="yes"' in page_a
    r = a.post("/inbox/answer", {"csrf": csrf_of(page_a), "queue": "prompts",
                                 "task_id": held[0], "choice": "yes"}, follow=True)
    assert "Answered task" in r.text
    r = b.post("/inbox/answer", {"csrf": csrf_of(page_a), "queue": "prompts",
                                 "task_id": held[1], "text": "  not today  "}, follow=True)
    assert "Answered task" in r.text
    ra, rb = q.get(held[0]), q.get(held[1])  # type: ignore[arg-type]
    assert ra is not None and ra.status == "done" and ra.result["choice"] == "yes"
    assert rb is not None and rb.result["text"] == "not today" and rb.result["choice"] is None
    # Nobody answers someone else's task, nor an option the prompt lacks.
    r = a.post("/inbox/answer", {"csrf": csrf_of(page_a), "queue": "prompts",
                                 "task_id": held[2], "choice": "yes"}, follow=True)
    assert "flash bad" in r.text and q.get(held[2]).status == "running"  # type: ignore[union-attr]
    r = _c.post("/inbox/answer", {"csrf": csrf_of(page_a), "queue": "prompts",
                                  "task_id": held[2], "choice": "maybe"}, follow=True)
    assert "not one of this prompt" in r.text and q.get(held[2]).status == "running"  # type: ignore[union-attr]


def test_inbox_switch_give_back_and_serial_queues(served: tuple[Queue, Client]) -> None:
    q, c0 = served
    q.set_queue_options("prompts", serial=True)
    first = q.put("prompts", {"text": "First?"}, priority=5).id
    second = q.put("prompts", {"text": "Second?", "options": ["a", "b"]}).id
    alice, bob = Client(c0.base), Client(c0.base)
    got, page = _held(alice)
    assert got == first and "First?" in page and f"#{second}" in page
    # Serial: one task handed out at a time, store-wide.
    none, page_b = _held(bob)
    assert none is None and "Someone else is answering" in page_b
    r = bob.post("/inbox/switch", {"csrf": csrf_of(page_b), "queue": "prompts",
                                   "task_id": second}, follow=True)
    assert "Someone else is answering" in r.text or "someone else" in r.text
    rec = q.get(first)
    assert rec is not None and rec.status == "running" and rec.worker is not None
    # Alice switches to the second prompt: the first goes back.
    r = alice.post("/inbox/switch", {"csrf": csrf_of(page), "queue": "prompts",
                                     "task_id": second}, follow=True)
    assert f'data-task-id="{second}"' in r.text
    assert q.get(first).status == "queued"  # type: ignore[union-attr]
    # She gives it back and holds nothing until she asks for the next.
    r = alice.post("/inbox/give-back", {"csrf": csrf_of(page), "queue": "prompts",
                                        "task_id": second}, follow=True)
    assert 'id="no-task"' in r.text and q.get(second).status == "queued"  # type: ignore[union-attr]
    # Bob now gets the queue's next task (priority order).
    assert _held(bob)[0] == first


def test_inbox_answer_after_the_deadline_is_refused(tmp_path: Path) -> None:
    clock = ManualClock()
    with Queue(f"sqlite://{tmp_path}/s", clock=clock) as q:
        q.set_queue_options("prompts", answer_timeout=60)
        task = q.put("prompts", {"prompt": "Still there?", "options": ["yes"]}).id
        with LiveServer(create_app(q)) as srv:
            slow, quick = Client(srv.url), Client(srv.url)
            held, page = _held(slow)
            assert held == task
            m = re.search(r'data-remaining-ms="(\d+)"', page)
            assert m and 59_000 <= int(m[1]) <= 60_000
            clock.advance(61)
            # The deadline passed: the next person gets the task back...
            assert _held(quick)[0] == task
            # ...and the late answer is refused, the task left to its new holder.
            r = slow.post("/inbox/answer", {"csrf": csrf_of(page), "queue": "prompts",
                                            "task_id": task, "choice": "yes"}, follow=True)
            assert "flash bad" in r.text
            rec = q.get(task)
            assert rec is not None and rec.status == "running" and rec.result is None


def test_metrics_endpoint(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    metrics = pytest.importorskip("ferroq.metrics")
    assert metrics is not None
    with Queue(f"sqlite://{tmp_path}/s") as q, LiveServer(create_app(q)) as srv:
        q.put("jobs", {"n": 1})
        r = Client(srv.url).get("/metrics")
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        assert "ferroq" in r.text


def test_templates_and_assets_ship_in_the_package() -> None:
    from importlib.resources import files

    pkg = files("ferroq.dashboard")
    for name in ("templates/base.html", "templates/inbox.html", "static/dashboard.js",
                 "static/dashboard.css"):
        assert pkg.joinpath(name).is_file(), name
    js = pkg.joinpath("static/dashboard.js").read_text()
    assert "http://" not in js and "https://" not in js  # nothing fetched from a CDN


def test_out_of_range_ids_and_bad_hints_are_answered_not_crashed(
    served: tuple[Queue, Client],
) -> None:
    q, c = served
    h = q.put("prompts", {"prompt": "Ship it?", "options": ["yes", "no"]})
    huge = "9" * 25  # matches the {id:int} route, but no task id is that large
    page = c.get(f"/tasks/{huge}")
    assert page.status == 200 and f"No task {huge}" in page.text
    assert c.get(f"/api/tasks/{huge}").status == 404
    for held in ("abc", huge, "1.5"):
        r = c.get(f"/inbox/q?queue=prompts&held={held}")
        assert r.status == 200, (held, r.status)
    # A bad hint is ignored, not taken for a task: the prompt is still handed out once.
    held_id, _ = _held(c)
    assert held_id == h.id
    t = q.get(h.id)
    assert t is not None and t.status == "running"
    # A huge queue name is not echoed whole into the redirect (a header
    # clients and proxies refuse past 64 KiB or less).
    token = csrf_of(c.get("/").text)
    r = c.post("/queues/retry-failed", {"csrf": token, "queue": "q" * 100_000})
    assert r.status == 303 and len(r.headers["location"]) < 2000
