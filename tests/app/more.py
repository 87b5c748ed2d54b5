"""A second module of the test package, found by discover()."""

from ferroq import task


@task(name="app.more.echo")
def echo(x: object) -> object:
    """Returns its argument."""
    return x
