"""The settings and the clock a run uses, when its caller gives them instead of the environment.

The demo and the tests run flows with settings they built and on the simulated world's clock
(:func:`using`); a run started any other way reads its settings (``--config``, ``WXRECON_CONFIG``,
``wxrecon.toml``) and runs on the wall clock. Flows read both through the functions here, never a
context variable directly: Prefect pickles a served flow's function by value, and a ``ContextVar`` it
named directly would not pickle.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from flows.clock import Clock, wall_clock
from flows.settings import Settings, load_settings

_settings: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("wxrecon_settings", default=None)
_clock: contextvars.ContextVar[Clock] = contextvars.ContextVar("wxrecon_clock", default=wall_clock)


@contextmanager
def using(settings: Settings, *, clock: Clock | None = None) -> Iterator[Settings]:
    """Run flows with these settings instead of reading them, and on ``clock`` instead of the wall clock."""
    token = _settings.set(settings)
    clock_token = _clock.set(clock) if clock is not None else None
    try:
        yield settings
    finally:
        if clock_token is not None:
            _clock.reset(clock_token)
        _settings.reset(token)


def run_clock() -> Clock:
    """The clock of runs started here: the wall clock, or the one :func:`using` gave."""
    return _clock.get()


def settings_in_use() -> Settings | None:
    """The settings :func:`using` gave, if any."""
    return _settings.get()


def settings_for(config: str | None) -> Settings:
    """The settings a run uses: those given by :func:`using` (unless ``config`` names a file), else read."""
    given = _settings.get()
    return given if given is not None and config is None else load_settings(config)
