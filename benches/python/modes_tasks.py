"""No-op tasks for modes.py, in their own module so process-mode children
can import them."""

from ferroq import task


@task(name="bench.modes.noop")
def noop(i: int) -> int:
    """Returns its input."""
    return i


@task(name="bench.modes.anoop")
async def anoop(i: int) -> int:
    """Returns its input, as a coroutine."""
    return i
