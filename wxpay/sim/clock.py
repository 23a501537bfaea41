"""The simulator's business clock.

Two clocks, never mixed (spec §9): the *business* clock below decides order times,
``success_time``, which bill days exist and when notification retries fall due, and a test
or the demo moves it by days; the *signature* window (±300 s) compares wall-clock times of
the two parties and is not affected by it.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from wxpay.models import BEIJING


class VirtualClock:
    """An aware Beijing-time clock that only moves when told to."""

    def __init__(self, start: datetime | None = None):
        moment = start or datetime.now(BEIJING)
        if moment.tzinfo is None:
            raise ValueError("VirtualClock needs an aware start time")
        self._now = moment.astimezone(BEIJING).replace(microsecond=0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("VirtualClock.set needs an aware time")
        with self._lock:
            self._now = moment.astimezone(BEIJING)

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("the business clock never goes back")
        with self._lock:
            self._now = self._now + step
            return self._now
