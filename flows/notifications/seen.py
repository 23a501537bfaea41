"""What a writer of the notification log knows of one merchant: the ids accepted (and duplicates logged) per
day file of the last days, read back from the files themselves.

Bounded: only the day files from ``today - remember_days`` to ``today + 1`` are held; a day that leaves that
window is forgotten, exactly as a restarted process would never read it. So a restart changes nothing about
which duplicates are caught: the log is the one source of truth, and memory holds what a fresh read of
the window would give.

Reading is incremental (each file from where the last look stopped) and cheap: a line is matched on the
bytes this module's writer puts there (``"outcome":"accepted","reason":…,"notification_id":"…"``), falling
back to a JSON parse only for a line that looks different; a line without its ``\\n`` (a write in progress,
or a crash fragment) is not consumed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

_ID = re.compile(
    rb'"outcome":"(accepted|duplicate)","reason":(?:null|"(?:[^"\\]|\\.)*"),"notification_id":"((?:[^"\\]|\\.)*)"'
)


@dataclass
class DaySeen:
    """One day file: ids accepted in it, duplicate lines per id, and how far it has been read."""

    accepted: set[str] = field(default_factory=set)
    duplicates: dict[str, int] = field(default_factory=dict)
    offset: int = 0

    def add(self, outcome: str, notification_id: str) -> None:
        if outcome == "accepted":
            self.accepted.add(notification_id)
        else:
            self.duplicates[notification_id] = self.duplicates.get(notification_id, 0) + 1


@dataclass
class MerchantSeen:
    """The days of one merchant directory within the window (see the module docstring)."""

    days: dict[date, DaySeen] = field(default_factory=dict)

    def is_accepted(self, notification_id: str) -> bool:
        return any(notification_id in day.accepted for day in self.days.values())

    def duplicates(self, notification_id: str) -> int:
        return sum(day.duplicates.get(notification_id, 0) for day in self.days.values())

    def ids(self) -> set[str]:
        found: set[str] = set()
        for day in self.days.values():
            found |= day.accepted
        return found

    def catch_up(self, path_of: Callable[[date], Path], today: date, remember_days: int) -> None:
        """Forget days outside the window around ``today``; read what was appended (by anyone) inside it."""
        first, last = today - timedelta(days=remember_days), today + timedelta(days=1)
        for old in [d for d in self.days if not first <= d <= last]:
            del self.days[old]
        day = first
        while day <= last:
            self._read(day, path_of(day))
            day += timedelta(days=1)

    def _read(self, day: date, path: Path) -> None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            self.days.pop(day, None)
            return
        seen = self.days.get(day)
        if seen is None or size < seen.offset:  # new, or replaced/truncated under us: read it all again
            seen = self.days[day] = DaySeen()
        if size == seen.offset:
            return
        with path.open("rb") as handle:
            handle.seek(seen.offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a line still being written, or a crash fragment: not consumed
                seen.offset += len(raw)
                found = read_outcome(raw)
                if found is not None:
                    seen.add(*found)


def read_outcome(raw: bytes) -> tuple[str, str] | None:
    """(outcome, notification_id) of an ``accepted`` or ``duplicate`` line; ``None`` for any other line."""
    match = _ID.search(raw)
    if match is not None:
        ident = match[2]
        text = ident.decode("ascii") if b"\\" not in ident else json.loads(b'"' + ident + b'"')
        return match[1].decode("ascii"), text
    if b'"accepted"' not in raw and b'"duplicate"' not in raw:
        return None
    try:  # written by someone else's serializer: judge it by its JSON
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("outcome") not in ("accepted", "duplicate"):
        return None
    ident = obj.get("notification_id")
    return (obj["outcome"], ident) if isinstance(ident, str) else None
