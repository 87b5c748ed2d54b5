"""Checked by mypy (see scripts/test): the typed API says what it returns."""

from __future__ import annotations

from pydantic import BaseModel
from typing_extensions import assert_type

import ferroq
from ferroq import Queue, TaskHandle, task


class Out(BaseModel):
    value: int


@task
def double(x: int) -> int:
    return x * 2


@task(retries=2)
def wrap(x: int) -> Out:
    return Out(value=x)


def check_types(queue: Queue) -> None:
    assert_type(double.send(2), TaskHandle[int])
    assert_type(double.options(priority=3, key="k").send(2), TaskHandle[int])
    assert_type(wrap.send(1), TaskHandle[Out])
    assert_type(wrap.send(1).result(timeout=1), Out)
    assert_type(double(3), int)

    @queue.task
    def shout(s: str) -> str:
        return s.upper()

    assert_type(shout.send("a"), TaskHandle[str])


@task
async def fetch(url: str) -> bytes:
    return url.encode()


async def check_bulk_and_async_types(queue: Queue) -> None:
    # An async def task's handles carry the value it returns when awaited.
    assert_type(fetch.send("u"), TaskHandle[bytes])
    assert_type(fetch.options(priority=1).send("u"), TaskHandle[bytes])
    assert_type(fetch.send("u").result(), bytes)
    assert_type(await fetch.send("u"), bytes)
    assert_type(await fetch.asend("u"), TaskHandle[bytes])
    assert_type(await double.asend(1), TaskHandle[int])
    assert_type(fetch.map([("a",), {"url": "b"}]), list[TaskHandle[bytes]])
    assert_type(double.map([(1,), (2,)], key=lambda item: str(item)), list[TaskHandle[int]])
    assert_type(double.options(batch="b").map([(1,)]), list[TaskHandle[int]])
    assert_type(queue.send_many(double, [(1,)]), list[TaskHandle[int]])
    assert_type(queue.send_many(fetch, [("a",)]), list[TaskHandle[bytes]])
    assert_type(await double.send(1), int)
    assert_type(await double.send(1).aresult(timeout=1), int)
    result = ferroq.wait(double.map([(1,)]), timeout=1, return_when=ferroq.FIRST_COMPLETED)
    assert_type(result, ferroq.WaitResult[int])
    done, pending = result
    assert_type(done, list[TaskHandle[int]])
    assert_type(result.pending[0].result(), int)
    for h in ferroq.as_completed(fetch.map([("a",)])):
        assert_type(h, TaskHandle[bytes])
