"""``Queue.check`` / ``ferroq check`` and ``Queue.backup`` / ``ferroq
backup`` through the public API and the command line, on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ferroq
from conftest import python_env
from ferroq import Queue


def _ferroq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroq.cli", *args],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _fill(q: Queue, n: int, marker: str = "m") -> list[int]:
    @q.task(name="echo")
    def echo(text: str) -> str:
        return text

    return [echo.send(f"{marker}-{i:04d}").id for i in range(n)]


def test_a_sound_store_checks_ok(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s?shards=4"
    with Queue(url) as q:
        _fill(q, 10)
        report = q.check()
    assert len(report) == 4
    assert all(s.ok and s.messages == [] for s in report)
    assert all(Path(s.path).name.startswith("shard-") for s in report)
    out = _ferroq("check", "--url", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ok ") == 4


def test_a_flipped_bit_is_found_by_check_and_named(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with Queue(str(store)) as q:
        ids = _fill(q, 5, marker="needle")
    (shard,) = sorted(store.glob("shard-*.db"))
    data = bytearray(shard.read_bytes())
    at = data.index(b"needle-0003")
    data[at + 7] ^= 0x01  # '0' -> '1': still valid JSON, a different argument
    shard.write_bytes(bytes(data))
    with Queue(str(store)) as q:
        report = q.check()
        assert [s.ok for s in report] == [False]
        text = " ".join(report[0].messages)
        assert str(ids[3]) in text
        with pytest.raises(ferroq.CorruptStoreError) as info:
            q.get(ids[3])
        assert shard.name in str(info.value) and str(ids[3]) in str(info.value)
        assert q.get(ids[2]) is not None  # the others are untouched
    out = _ferroq("check", "--url", str(store))
    assert out.returncode == 1
    assert "DAMAGED" in out.stdout and shard.name in out.stdout


def test_backup_of_a_live_store_opens_with_every_task(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with Queue(f"sqlite://{src}?shards=2") as q:
        ids = _fill(q, 50)
        q.backup(tmp_path / "copy")
        with pytest.raises(ferroq.InvalidArgumentError):
            q.backup(tmp_path / "copy")  # not over an existing store
    with Queue(str(tmp_path / "copy")) as copy:
        assert sorted(t.id for t in copy.list(limit=1000)) == sorted(ids)
    out = _ferroq("backup", str(tmp_path / "copy2"), "--url", str(src))
    assert out.returncode == 0, out.stderr
    with Queue(str(tmp_path / "copy2")) as copy:
        assert len(copy.list(limit=1000)) == 50
    bad = _ferroq("backup", str(tmp_path / "copy2"), "--url", str(src))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
