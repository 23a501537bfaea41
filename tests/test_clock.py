"""Business time: the day a run reconciles comes from the run's clock, in Beijing time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from flows.clock import beijing_date, wall_clock, yesterday
from tests.clock import chosen_moment, moment_of_this_run


def test_yesterday_is_the_beijing_day_before_the_clocks():
    # 2026-11-27 00:30 in Beijing is still 2026-11-26 in UTC: the bill day is the 26th either way
    assert yesterday(lambda: datetime(2026, 11, 26, 16, 30, tzinfo=UTC)) == date(2026, 11, 26)
    assert yesterday(lambda: datetime(2026, 11, 26, 15, 59, tzinfo=UTC)) == date(2026, 11, 25)
    assert yesterday(lambda: datetime(2027, 1, 1, 0, 0, tzinfo=UTC)) == date(2026, 12, 31)


def test_a_naive_moment_is_refused():
    with pytest.raises(ValueError, match="no time zone"):
        beijing_date(datetime(2026, 11, 27, 9, 0))


def test_the_suite_runs_on_the_day_chosen_for_it(monkeypatch):
    # the process clock was moved at start (tests/clock.py) and ticks on: the wall clock reads the moved time
    assert timedelta(0) <= wall_clock() - moment_of_this_run() < timedelta(hours=2)
    monkeypatch.setenv("WXRECON_TEST_NOW", "2031-02-03T04:05:06")
    assert chosen_moment().isoformat() == "2031-02-03T04:05:06+08:00"
    monkeypatch.setenv("WXRECON_TEST_NOW", "2031-02-03T04:05:06+00:00")
    assert chosen_moment().isoformat() == "2031-02-03T04:05:06+00:00"
