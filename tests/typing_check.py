"""Checked by mypy (see scripts/test): the typed API says what it returns."""

from __future__ import annotations

from pydantic import BaseModel
from typing_extensions import assert_type

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
