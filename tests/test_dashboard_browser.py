"""The dashboard and the inbox in a real browser: headless Chromium from
Debian's packages (``scripts/browser`` installs it and chromium-driver)
driven by selenium, against a real uvicorn server on a free 127.0.0.1 port.

Screenshots go to ``.test-artifacts/screenshots/`` (git-ignored). With
``FERROQ_DOCS_SCREENSHOTS=1`` the run also writes the documentation's
``docs/img/dashboard.png`` and ``docs/img/inbox.png``.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from dashboard_helpers import LiveServer  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from conftest import ROOT, spawn_worker  # noqa: E402
from ferroq import Queue  # noqa: E402
from ferroq.dashboard import create_app  # noqa: E402

CHROMIUM = os.environ.get("FERROQ_CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser"
)
DRIVER = os.environ.get("FERROQ_CHROMEDRIVER") or shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="chromium and chromedriver not found: run scripts/browser (scripts/test does)",
)
SHOTS = ROOT / ".test-artifacts" / "screenshots"
DOCS_SHOTS = os.environ.get("FERROQ_DOCS_SCREENSHOTS") == "1"
WAIT_S = 60


def new_browser() -> Any:
    """A headless Chromium session of its own (own profile, own cookies)."""
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


@pytest.fixture
def browser() -> Iterator[Any]:
    b = new_browser()
    try:
        yield b
    finally:
        b.quit()


def wait(b: Any, what: str, predicate: Callable[[Any], Any]) -> Any:
    # A page being replaced (after a form post) has no element to read yet.
    return WebDriverWait(
        b,
        WAIT_S,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(predicate, message=what)


def text_of(b: Any, css: str) -> str:
    return str(b.find_element(By.CSS_SELECTOR, css).text)


def shoot(b: Any, name: str, *, docs: bool = False) -> Path:
    """Saves a screenshot and checks it is a PNG with something in it;
    ``docs``: also the documentation's copy, when asked for."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    assert b.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, f"{path} is not a PNG"
    if docs and DOCS_SHOTS:
        folder = ROOT / "docs" / "img"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / f"{name}.png")
    return path


def test_counts_change_live_while_a_worker_drains(tmp_path: Path, browser: Any) -> None:
    url = f"sqlite://{tmp_path}/store?shards=2"
    n = 400
    with Queue(url) as q, LiveServer(create_app(q)) as srv:
        ids, _ = q._store.enqueue_many(
            "default", "app.tasks:slow", [q.encode([[i], {"seconds": 0.01}]) for i in range(n)]
        )
        browser.get(srv.url + "/")
        wait(browser, "queued shown", lambda b: text_of(b, '[data-total="queued"]') == f"{n:,}")
        assert text_of(browser, '[data-total="done"]') == "0"
        # A mark that a reload would wipe: the counts must change without one.
        browser.execute_script("window.__ferroqMark = 42;")
        wait(browser, "the stream to connect", lambda b: b.execute_script(
            "return document.body.dataset.live") == "1")
        worker = spawn_worker(url, "--concurrency", "4")
        # Its log (a line per task) is read as it comes: a full pipe would stall it.
        log: list[bytes] = []
        assert worker.stdout is not None
        reader = threading.Thread(target=lambda: log.extend(worker.stdout), daemon=True)
        reader.start()
        try:
            seen_done: set[str] = set()

            def drained(b: Any) -> bool:
                seen_done.add(text_of(b, '[data-total="done"]'))
                return text_of(b, '[data-total="done"]') == f"{n:,}"

            wait(browser, "every task shown done", drained)
            if DOCS_SHOTS:
                # More work for the charts of the documentation's screenshot.
                q._store.enqueue_many(
                    "default", "app.tasks:slow",
                    [q.encode([[i], {"seconds": 0.02}]) for i in range(600)],
                )
                wait(browser, "round 2", lambda b: text_of(b, '[data-total="done"]') == "1,000")
            # The worker is listed while it runs.
            wait(browser, "the worker listed", lambda b: text_of(b, "#workers-n") == "1")
            shoot(browser, "dashboard", docs=True)
        finally:
            worker.terminate()
            worker.wait(30)
            reader.join(30)
            worker.stdout.close()
        assert browser.execute_script("return window.__ferroqMark") == 42  # no reload
        assert len(seen_done) > 2, f"no intermediate counts seen: {seen_done}"
        assert text_of(browser, '[data-total="queued"]') == "0"
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="default"] [data-count="done"]')
        wait(browser, "the row updated", lambda b: row.text == str(q.stats()["default"]["done"]))
        # The chart has drawn something: some pixel of the canvas is not blank.
        painted = browser.execute_script(
            "const c = document.getElementById('chart-throughput');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
        )
        assert painted > 100


def test_cancel_and_retry_from_the_page(tmp_path: Path, browser: Any) -> None:
    with Queue(f"sqlite://{tmp_path}/store") as q, LiveServer(create_app(q)) as srv:
        h = q.put("jobs", {"n": 1})
        browser.get(f"{srv.url}/tasks?queue=jobs")
        browser.find_element(By.LINK_TEXT, str(h.id)).click()
        wait(browser, "the task page", lambda b: text_of(b, "#task-status") == "queued")
        browser.find_element(By.ID, "cancel").click()
        wait(browser, "cancelled shown", lambda b: text_of(b, "#task-status") == "cancelled")
        assert h.status() == "cancelled"
        assert "cancelled" in text_of(browser, "#flash")
        browser.find_element(By.ID, "retry").click()
        wait(browser, "queued again", lambda b: text_of(b, "#task-status") == "queued")
        assert h.status() == "queued"
        # Its priority, from the same page.
        field = browser.find_element(By.ID, "priority-input")
        field.clear()
        field.send_keys("9")
        browser.find_element(By.ID, "set-priority").click()
        wait(browser, "priority set", lambda b: "priority 9" in text_of(b, "#flash"))
        rec = q.get(h.id)
        assert rec is not None and rec.priority == 9
        shoot(browser, "task")


def test_two_people_answer_two_prompts_at_once(tmp_path: Path, browser: Any) -> None:
    with Queue(f"sqlite://{tmp_path}/store?shards=4") as q:
        q.set_queue_options("prompts", answer_timeout=120)
        asked = {
            q.put("prompts", {"prompt": "Deploy 1.4 to production?",
                              "options": ["yes", "no"]}, key="deploy").id: "yes",
            q.put("prompts", {"prompt": "Rotate the API keys tonight?",
                              "options": ["now", "tomorrow"]}, key="rotate").id: "tomorrow",
        }
        q.put("prompts", {"prompt": "Page the on-call engineer?"}, key="page")
        with LiveServer(create_app(q)) as srv:
            other = new_browser()
            try:
                for b in (browser, other):
                    b.get(f"{srv.url}/inbox/q?queue=prompts")
                got = []
                for b in (browser, other):
                    prompt = wait(b, "a prompt", lambda b: b.find_element(By.ID, "prompt"))
                    got.append(int(prompt.get_attribute("data-task-id")))
                    countdown = text_of(b, "#countdown")
                    assert countdown.endswith("s") and "time is up" not in countdown
                assert got[0] != got[1] and set(got) <= set(asked) | {
                    q.get_by_key("page", "prompts").id  # type: ignore[union-attr]
                }
                if DOCS_SHOTS:
                    shoot(browser, "inbox", docs=True)
                # Both answer at once: each clicks an option (or types) on their own task.
                answers = {}
                for b, task_id in zip((browser, other), got):
                    options = [e.text for e in b.find_elements(By.CSS_SELECTOR, "button.option")]
                    if options:
                        choice = asked.get(task_id, options[0])
                        b.find_element(By.XPATH, f"//button[@value='{choice}']").click()
                        answers[task_id] = {"choice": choice, "text": None}
                    else:
                        b.find_element(By.ID, "answer-text").send_keys("yes, page them")
                        b.find_element(By.ID, "send-answer").click()
                        answers[task_id] = {"choice": None, "text": "yes, page them"}
                for b in (browser, other):
                    wait(b, "answer taken", lambda b: "Answered task" in text_of(b, "#flash"))
                for task_id, want in answers.items():
                    rec = q.get(task_id)
                    assert rec is not None and rec.status == "done"
                    assert {k: rec.result[k] for k in want} == want
                # The next prompt is shown to whoever asks first; the other finds none left.
                remaining = [
                    b.find_elements(By.ID, "prompt") for b in (browser, other)
                ]
                shown = [int(r[0].get_attribute("data-task-id")) for r in remaining if r]
                assert len(shown) == 1 and shown[0] not in answers
                shoot(other, "inbox-after")
            finally:
                try:
                    other.quit()
                except WebDriverException:
                    pass
