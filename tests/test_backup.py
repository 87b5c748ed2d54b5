"""Durability of a store's files (issue 13): a closed store is complete in
its ``.db`` files, and ``Store.backup`` copies a live store consistently.

Written against the native ``Store`` (``ferroq._core``) directly; the
public ``Queue.backup`` and the CLI command build on it."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from conftest import needs_pg, pg_url, store_url
from ferroq import InvalidArgumentError
from ferroq._core import Store


def snapshot(store: Store) -> list[tuple[int, str, str, bytes | None]]:
    """Every task as (id, queue, status, result), in id order."""
    return [(t.id, t.queue, t.status, t.result) for t in store.list_tasks(limit=100_000)]


def fill(store: Store) -> None:
    store.enqueue_many("q", "job", [b"p%d" % i for i in range(30)])
    claimed = store.claim("q", "w", limit=10)
    for t in claimed[:5]:
        store.complete(t.id, "w", b"r%d" % t.id)


@pytest.mark.parametrize("kind", ["sqlite-1", "sqlite-4"])
def test_a_closed_store_is_complete_in_its_db_files(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    store = Store(url)
    fill(store)
    # What a scheduler does between claims: wait for changes.
    store.wait_for_change(store.change_token(), 0.01)
    before = snapshot(store)
    store.close()
    # A backup by copying the shard files only, without -wal / -shm.
    copy = tmp_path / "copy"
    copy.mkdir()
    for db in (tmp_path / "store").glob("*.db"):
        shutil.copy(db, copy / db.name)
    assert snapshot(Store(str(copy))) == before


@pytest.mark.parametrize("kind", ["memory", "sqlite-1", "sqlite-4"])
def test_a_backup_made_while_sending_holds_every_acknowledged_task(
    kind: str, tmp_path: Path
) -> None:
    store = Store(store_url(kind, tmp_path))
    fill(store)
    acked: list[int] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            acked.append(store.enqueue("sent", "job", b"x")[0])

    sender = threading.Thread(target=send)
    sender.start()
    try:
        while len(acked) < 20:
            stop.wait(0.001)
        before = snapshot(store)
        acked_before = list(acked)
        store.backup(tmp_path / "backup")
        n = len(acked)
        while len(acked) < n + 20:
            stop.wait(0.001)
    finally:
        stop.set()
        sender.join()
    names = sorted(p.name for p in (tmp_path / "backup").iterdir())
    shards = 4 if kind.endswith("4") else 1
    assert names == [f"shard-{i:03d}.db" for i in range(shards)]
    copy = Store(str(tmp_path / "backup"))
    copied = {row[0]: row for row in snapshot(copy)}
    assert all(copied.get(row[0]) == row for row in before)
    assert all(i in copied for i in acked_before)
    assert len(copied) < len(snapshot(store))
    assert repr(copy).endswith(f"({shards} shard(s))>")
    store.close()
    copy.close()


def test_a_backup_goes_into_a_new_or_empty_directory(tmp_path: Path) -> None:
    store = Store(store_url("sqlite-1", tmp_path))
    store.enqueue("q", "job", b"p")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    with pytest.raises(InvalidArgumentError, match="not empty"):
        store.backup(str(full))
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    store.backup(empty)
    assert len(snapshot(Store(str(empty)))) == 1
    store.close()
    with pytest.raises(Exception, match="closed"):
        store.backup(tmp_path / "after-close")


@needs_pg
def test_a_postgresql_store_points_to_pg_dump(tmp_path: Path) -> None:
    store = Store(pg_url())
    with pytest.raises(InvalidArgumentError, match="pg_dump"):
        store.backup(tmp_path / "backup")
    assert not (tmp_path / "backup").exists()
    store.close()
