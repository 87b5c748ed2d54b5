"""The documentation runs as written: every Python code block in README.md
and docs/**/*.md, and examples/quickstart.py, each as a script of its own in
a fresh temp directory (so stores it creates there go away with it).

A block is marked by an HTML comment on the line before its fence:

* ``<!-- no-run: why -->``: not run (the reason is required);
* ``<!-- postgresql -->``: run with ``FERROQ_URL`` naming a fresh schema of
  the test database ($FERROQ_TEST_PG_URL), skipped without one.

The API reference page must name exactly what ``ferroq.__all__`` exports.
The site itself is built by ``mkdocs build --strict`` in scripts/test."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent

import pytest

import ferroq
from conftest import PG_URL, ROOT, pg_url, python_env

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^( *)```([\w+-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!--\s*(no-run|postgresql)\b:?\s*(.*?)\s*-->\s*\Z", re.S)


@dataclass
class Block:
    """One Python code block: where it is, its code, and its mark if any."""

    where: str
    code: str
    mark: str = ""
    reason: str = ""


def python_blocks(page: Path) -> list[Block]:
    """The page's Python code blocks, with the mark on the line before each."""
    text = page.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(2) not in PYTHON:
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip()
        last = before.rsplit("\n", 1)[-1]
        mark = MARK.search(last)
        blocks.append(
            Block(
                where=f"{page.relative_to(ROOT)}:{line}",
                code=dedent(m.group(3)),
                mark=mark.group(1) if mark else "",
                reason=mark.group(2) if mark else "",
            )
        )
    return blocks


BLOCKS = [b for page in PAGES for b in python_blocks(page)]


def test_every_page_with_code_is_collected() -> None:
    assert len(PAGES) >= 9 and len(BLOCKS) >= 10
    assert {b.where.split(":")[0] for b in BLOCKS} >= {"README.md", "docs/guide.md"}


def test_no_run_blocks_say_why() -> None:
    for block in BLOCKS:
        if block.mark == "no-run":
            assert block.reason, f"{block.where}: <!-- no-run: ... --> needs a reason"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_doc_example_runs(block: Block, tmp_path: Path) -> None:
    if block.mark == "no-run":
        pytest.skip(f"marked no-run: {block.reason}")
    env = python_env()
    if block.mark == "postgresql":
        if not PG_URL:
            pytest.skip("FERROQ_TEST_PG_URL is not set: scripts/test starts PostgreSQL")
        env["FERROQ_URL"] = pg_url()
    script = tmp_path / "example.py"
    script.write_text(block.code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"{block.where}\n{done.stdout}{done.stderr}"


def test_quickstart_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path,
        env=python_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2000 tasks sent, run and checked" in done.stdout


def test_api_reference_names_every_public_name() -> None:
    named = re.findall(r"^::: ferroq\.(\w+)\s*$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert len(named) == len(set(named)), "a name is documented twice"
    assert set(named) == set(ferroq.__all__)


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into docs/"
    for target in local:
        assert (ROOT / target).exists(), f"README links to missing {target}"
