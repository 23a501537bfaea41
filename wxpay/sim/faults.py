"""Fault injection: what the simulator does wrong, on purpose, the next N times.

Each fault is queued with a count and consumed as it fires, so a test says exactly how
often WeChat Pay misbehaves. Kinds:

* API errors (:meth:`Faults.error`): answer a path prefix with a status and code
  (``429 FREQUENCY_LIMITED``, ``500 SYSTEM_ERROR``, ``400 STATEMENT_CREATING`` ...).
* Response signatures (``response``): ``signtest`` (a WECHATPAY/SIGNTEST/ probe),
  ``wrong_key``, ``unknown_serial``, ``tamper`` (body changed after signing), ``stale``
  (timestamp 10 minutes old).
* Notifications (``notify``): ``duplicate`` (delivered twice), ``drop`` (this attempt is
  lost; WeChat Pay retries on schedule), ``lose`` (every attempt of one notification lost),
  ``signtest``, ``wrong_key``, ``stale``, ``tamper``.
* Bill downloads (``download``): ``corrupt`` (hash mismatch), ``truncate`` (gzip cut
  short), ``slow`` (first byte after the URL lifetime), ``stall`` (half the file, then nothing more
  until :meth:`Faults.clear` or ``stall_seconds``: a link that hangs mid-download, for killing the
  downloader in the middle; :attr:`Faults.stalled` counts the downloads hanging right now).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

ResponseFault = Literal["signtest", "wrong_key", "unknown_serial", "tamper", "stale"]
NotifyFault = Literal["duplicate", "drop", "lose", "signtest", "wrong_key", "stale", "tamper"]
DownloadFault = Literal["corrupt", "truncate", "slow", "stall"]
_KINDS = {
    "response": set(ResponseFault.__args__),
    "notify": set(NotifyFault.__args__),
    "download": set(DownloadFault.__args__),
}


@dataclass
class InjectedError:
    path_prefix: str
    status: int
    code: str
    message: str
    times: int


@dataclass
class Faults:
    errors: list[InjectedError] = field(default_factory=list)
    queued: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in _KINDS})
    targeted: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (channel, mchid) -> kinds
    stalled: int = 0  # downloads hanging in a ``stall`` fault right now
    stall_seconds: float = 120.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _released: threading.Event = field(default_factory=threading.Event, repr=False)

    def error(self, path_prefix: str, status: int, code: str, message: str = "", *, times: int = 1) -> None:
        """Answer the next ``times`` requests under ``path_prefix`` with this error."""
        with self._lock:
            self.errors.append(InjectedError(path_prefix, status, code, message or code, times))

    def add(self, channel: str, kind: str, *, times: int = 1, mchid: str | None = None) -> None:
        """Queue a ``response`` / ``notify`` / ``download`` fault for the next ``times`` uses (with ``mchid``:
        the next ``times`` uses for that merchant, before any fault queued for everyone)."""
        if kind not in _KINDS.get(channel, ()):
            raise ValueError(f"unknown {channel} fault {kind!r}; known: {sorted(_KINDS.get(channel, ()))}")
        with self._lock:
            if mchid is None:
                self.queued[channel].extend([kind] * times)
            else:
                self.targeted.setdefault((channel, mchid), []).extend([kind] * times)

    def take_error(self, path: str) -> InjectedError | None:
        with self._lock:
            for injected in self.errors:
                if path.startswith(injected.path_prefix) and injected.times > 0:
                    injected.times -= 1
                    if injected.times == 0:
                        self.errors.remove(injected)
                    return injected
        return None

    def take(self, channel: str, mchid: str | None = None) -> str | None:
        with self._lock:
            queue = self.targeted.get((channel, mchid)) or self.queued[channel]
            return queue.pop(0) if queue else None

    def stall(self) -> None:
        """Hang (one download) until the faults are cleared or ``stall_seconds`` have passed."""
        with self._lock:
            self.stalled += 1
        try:
            self._released.wait(self.stall_seconds)
        finally:
            with self._lock:
                self.stalled -= 1

    def clear(self) -> None:
        with self._lock:
            self.errors.clear()
            for queue in self.queued.values():
                queue.clear()
            self.targeted.clear()
            self._released.set()  # hanging downloads go on; later stalls hang again
            self._released = threading.Event()

    def summary(self) -> dict[str, object]:
        with self._lock:
            targeted = {f"{channel}/{mchid}": list(v) for (channel, mchid), v in self.targeted.items() if v}
            queued = {k: list(v) for k, v in self.queued.items()}
            return {"queued": queued, "targeted": targeted, "stalled": self.stalled}
