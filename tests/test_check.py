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


def test_a_backup_inside_the_store_is_refused(tmp_path: Path) -> None:
    with Queue(str(tmp_path / "s")) as q:
        _fill(q, 3)
        for dest in (tmp_path / "s" / "copy", tmp_path / "s" / ".." / "s" / "x" / "y"):
            with pytest.raises(ferroq.InvalidArgumentError, match="inside the store"):
                q.backup(dest)
        assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == []


def test_a_damaged_row_does_not_condemn_its_shard(tmp_path: Path) -> None:
    """A worker row with bad JSON (written by something else) is one bad
    row: reading it fails, naming the file, but sends go on and the shard
    is not marked damaged (it was, for good, before)."""
    import sqlite3

    store = tmp_path / "s"
    with Queue(str(store)) as q:
        q._store.register_worker("w1", "h", 1, ["default"])
        shard = next(store.glob("shard-*.db"))
        other = sqlite3.connect(shard)
        other.execute("UPDATE worker SET queues = '{not json' WHERE id = 'w1'")
        other.commit()
        with pytest.raises(ferroq.CorruptStoreError):
            q._store.workers()
        _fill(q, 2)  # sends still go in
        other.execute("DELETE FROM worker WHERE id = 'w1'")
        other.commit()
        other.close()
        assert q._store.workers() == []
        assert all(s.ok for s in q.check())


@pytest.mark.parametrize("command", [["stats"], ["check"], ["backup", "dest"]])
def test_read_only_commands_refuse_a_path_with_no_store(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "stroe"
    args = [c if c != "dest" else str(tmp_path / "copy") for c in command]
    out = _ferroq(*args, "--url", str(typo))
    assert out.returncode == 1
    assert out.stderr.startswith("ferroq: no ferroq store at") and "Traceback" not in out.stderr
    assert not typo.exists()  # nothing created


def test_version_is_one_figure_everywhere() -> None:
    from ferroq import _core

    out = _ferroq("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"ferroq {ferroq.__version__}"
    assert ferroq.__version__ == _core.__version__
