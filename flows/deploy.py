"""The nightly deployment: ``reconcile_day`` every evening at 22:30 Beijing time.

WeChat Pay publishes day D's bill after 10:00 on D+1; the run at 22:30 on D+1 reconciles D
("yesterday"), leaving a wide margin for late bills. Two ways to deploy, under distinct names so
neither overwrites the other:

* ``reconcile-day/nightly-serve`` — ``wxrecon deploy`` → :func:`serve_nightly`: a long-running process
  that holds the schedule and runs the flow itself (``Flow.serve``); simplest on one machine. The
  settings file it was given (``--config``, made absolute) is the deployment's ``config`` parameter.
* ``reconcile-day/nightly-worker`` — ``prefect deploy --all`` with ``prefect.yaml`` (same schedule) and a
  process work pool (``prefect work-pool create wxrecon-local --type process``; ``prefect worker start
  --pool wxrecon-local`` started from the project directory). The deployment's pull step sets the working
  directory to where the worker was started, and its job variables set ``WXRECON_CONFIG=wxrecon.toml``
  there (override it per worker machine in the work pool, or per run).
"""

from __future__ import annotations

from pathlib import Path

from prefect.schedules import Cron

from flows.settings import Settings

SERVED = "nightly-serve"
"""The deployment ``wxrecon deploy`` serves."""
WORKER = "nightly-worker"
"""The deployment ``prefect deploy`` makes from ``prefect.yaml``, run by a work pool's workers."""
DESCRIPTION = "Reconcile yesterday's WeChat Pay bills (Beijing time) against the merchant's records"


def nightly_schedule(settings: Settings) -> Cron:
    """The cron schedule in its time zone (Prefect's ``cron=`` alone would mean UTC)."""
    return Cron(settings.schedule_cron, timezone=settings.schedule_timezone)


def serve_nightly(settings: Settings, config: Path | None = None) -> None:
    from flows.nightly import reconcile_day

    reconcile_day.serve(
        name=SERVED,
        schedules=[nightly_schedule(settings)],
        parameters={"config": str(Path(config).resolve())} if config else {},
        description=DESCRIPTION,
    )
