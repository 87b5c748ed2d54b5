"""A periodic task for the CLI tests (imported only by the processes they start)."""

from __future__ import annotations

from ferroq import periodic, task


@periodic(cron="0 3 * * *", tz="Europe/Paris", catch_up="skip")
@task(queue="nightly")
def nightly_report() -> str:
    """Runs every night at 03:00 Paris time."""
    return "reported"
