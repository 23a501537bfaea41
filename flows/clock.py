"""Business time: which day it is for a run, read from the run's clock, never from the wall clock directly.

A business fact — "yesterday", the end of the notification window, an exception's age, a deadline — is
decided from the run's clock, read once when the run starts (``as_of`` is then passed on). The clock
is the wall clock in Beijing time unless a caller injects another (the demo's simulated world, tests).
Wall-clock stamps (``loaded_at``, ``first_seen_at``, ``event_at``...) are audit columns only: no figure
is computed from them. WeChat Pay's days are Beijing (Asia/Shanghai, UTC+8, no DST) calendar days.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

from wxpay.models import BEIJING

Clock = Callable[[], datetime]
"""Returns the current moment, timezone-aware."""


def wall_clock() -> datetime:
    """The system clock, in Beijing time."""
    return datetime.now(BEIJING)


def beijing_date(moment: datetime) -> date:
    """The Beijing calendar day of an aware moment."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone")
    return moment.astimezone(BEIJING).date()


def yesterday(clock: Clock = wall_clock) -> date:
    """The Beijing day before the clock's: the day whose bill the nightly run reconciles."""
    return beijing_date(clock()) - timedelta(days=1)
