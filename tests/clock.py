"""Every test run happens on a day chosen for it, so a time bomb shows up in CI, not a week later.

At start the process clock (``datetime.now``, ``date.today``, ``time.time``; not the monotonic clocks) is
moved with time-machine to a moment chosen per run: ``WXRECON_TEST_NOW`` (an ISO date or date-time, Beijing
time when it has no offset) when set, else a random moment within two years either side of the real date. It
keeps ticking. The moment is printed at the top of the run with the line that reproduces it, and exported so
that the run's pytest-xdist workers share it. Subprocesses and servers started by the tests run on the real
clock: a test that crosses a process boundary passes explicit dates.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import time_machine

ENV = "WXRECON_TEST_NOW"
BEIJING = ZoneInfo("Asia/Shanghai")
_traveller: time_machine.travel | None = None
_moment: datetime | None = None


def chosen_moment() -> datetime:
    """The moment this run happens at (see the module docstring)."""
    given = os.environ.get(ENV, "").strip()
    if given:
        moment = datetime.fromisoformat(given)
        return moment if moment.tzinfo else moment.replace(tzinfo=BEIJING)
    real = datetime.now(BEIJING).replace(microsecond=0)
    rng = random.SystemRandom()
    return real + timedelta(days=rng.randint(-730, 730), seconds=rng.randint(0, 86399))


def moment_of_this_run() -> datetime:
    """Where this run's clock was moved to (the clock has ticked on since)."""
    assert _moment is not None, "tests.clock is not active"
    return _moment


def pytest_configure(config):
    global _traveller, _moment
    _moment = chosen_moment()
    os.environ.setdefault(ENV, _moment.isoformat())  # pytest-xdist's workers, started after this, share it
    _traveller = time_machine.travel(_moment, tick=True)
    _traveller.start()


def pytest_unconfigure(config):
    if _traveller is not None:
        _traveller.stop()


def pytest_sessionstart(session):
    """Say the moment at the top of the run, ``-q`` or not."""
    assert _moment is not None
    line = f"clock moved to {_moment.isoformat()} (reproduce with {ENV}={_moment.isoformat()})"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
