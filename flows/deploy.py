"""The nightly deployment: ``reconcile_day`` every evening at 22:30 Beijing time.

WeChat Pay publishes day D's bill after 10:00 on D+1; the run at 22:30 on D+1 reconciles D
("yesterday"), leaving a wide margin for late bills. Two equivalent ways to deploy:

* ``wxrecon deploy`` → :func:`serve_nightly`: a long-running process that holds the schedule
  (``Flow.serve``); simplest on one machine.
* ``prefect deploy --all`` with ``prefect.yaml`` (same schedule) and a process work pool
  (``prefect work-pool create wxrecon-local --type process``; ``prefect worker start --pool wxrecon-local``).
"""

from __future__ import annotations

from pathlib import Path

from prefect.schedules import Cron

from flows.settings import Settings

DEPLOYMENT = "wxrecon-nightly"


def nightly_schedule(settings: Settings) -> Cron:
    """The cron schedule in its time zone (Prefect's ``cron=`` alone would mean UTC)."""
    return Cron(settings.schedule_cron, timezone=settings.schedule_timezone)


def serve_nightly(settings: Settings, config: Path | None = None) -> None:
    from flows.nightly import reconcile_day

    reconcile_day.serve(
        name=DEPLOYMENT,
        schedules=[nightly_schedule(settings)],
        parameters={"config": str(config)} if config else {},
        description="Reconcile yesterday's WeChat Pay bills (Beijing time) against the merchant's records",
    )
