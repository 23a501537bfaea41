"""What the receiver checks before it does any work for a request: who the peer is, whether that peer has been
refused too often (a token bucket per peer), whether the disk can still take evidence; and the counters
that say what happened, for ``GET /wxpay/notify/_health`` and whatever alerts read it.

Each guard is cheap (a dict look-up, a cached ``statvfs``) and thread-safe; time comes from an injected
monotonic clock, so tests move it instead of sleeping.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flows.storage import FreeSpace, free_space

logger = logging.getLogger("flows.notifications.receiver")

COUNTERS = (
    "accepted",  # 204, first time for the id
    "duplicate",  # 204, id already accepted (logged, or counted by the log beyond its duplicate cap)
    "refused",  # every 4xx answered after looking at the request (below, by status)
    "refused_400",
    "refused_401",
    "refused_404",
    "refused_408",  # the body did not arrive within the body timeout
    "refused_413",
    "records_written",  # records of refused requests written to _rejected/
    "records_dropped",  # ... not written: the day's or the total cap was reached (or the write failed)
    "record_files_removed",  # old _rejected/ day files removed to stay under the total cap
    "rate_limited",  # 429 before reading the body: the peer was refused too often
    "low_disk",  # 503 before reading the body: free space below the threshold
    "storage_faults",  # 500: the notification log could not be written (StorageError)
    "errors",  # 500: anything else (a configuration problem, a bug)
    "disconnected",  # the client went away before its body arrived
    "connections_evicted",  # idle or slow connections closed to make room for a new one
    "connections_refused",  # new connections closed at once: every slot busy with a request in progress
    "head_timeouts",  # connections closed because the request head did not arrive in time
)


class Counters:
    """Monotonic counts of what the receiver did since it started (names: :data:`COUNTERS`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, n: int = 1) -> None:
        if name not in self._counts:
            raise KeyError(f"unknown counter {name!r}")
        with self._lock:
            self._counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Peers:
    """Who sent a request: the TCP peer, or, when that peer is a trusted proxy, the address it forwarded.

    ``trusted_proxies``: addresses or networks (``10.0.0.0/8``, ``::1``) whose ``X-Forwarded-For`` is
    believed; empty (the default) believes none. The forwarded list is read from the right, skipping
    trusted proxies; the first other address is the peer (an entry that is not an address stops there:
    the last trusted hop is the peer). The bucket key of an IPv6 peer is its /64, where one host's
    addresses usually live.
    """

    def __init__(self, trusted_proxies: Iterable[str] = ()):
        self.trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)

    def _is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted)

    def peer(self, client: tuple[str, int] | None, headers: Mapping[str, str]) -> str:
        """The peer's address as text (``"unknown"`` when the server does not say)."""
        if client is None:
            return "unknown"
        host = client[0]
        if not self.trusted:
            return host
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host
        if not self._is_trusted(address):
            return host
        forwarded = headers.get("x-forwarded-for", "")
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                break
            if not self._is_trusted(address):
                return str(address)
        return str(address)

    @staticmethod
    def key(peer: str) -> str:
        """The rate-limit key of a peer: the address, or the /64 of an IPv6 address."""
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if address.version == 6:
            mapped = address.ipv4_mapped
            return str(mapped) if mapped is not None else str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    @staticmethod
    def is_loopback(peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        mapped = address.ipv4_mapped if address.version == 6 else None
        return address.is_loopback or (mapped is not None and mapped.is_loopback)


class RefusalLimiter:
    """A token bucket per peer, spent by refused requests only (a 204 costs nothing).

    ``per_minute`` refusals refill per minute up to ``burst``; a peer with an empty bucket is answered 429
    before anything else is done for it. ``0`` per minute turns the limiter off; loopback peers are exempt
    unless ``loopback`` (tests and the simulator run there). At most ``max_peers`` buckets are kept (the
    least recently used go first; a forgotten peer starts again with a full bucket).
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        loopback: bool = False,
        max_peers: int = 65536,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        if per_minute < 0 or burst < 1:
            raise ValueError("per_minute must be >= 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.loopback = loopback
        self.max_peers = max_peers
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, as of)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _applies(self, peer: str) -> bool:
        return self.enabled and (self.loopback or not Peers.is_loopback(peer))

    def _tokens(self, key: str, now: float) -> float:
        tokens, then = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate)

    def limited(self, peer: str) -> bool:
        """Whether ``peer`` has no refusal left (answer 429 without reading its request)."""
        if not self._applies(peer):
            return False
        key, now = Peers.key(peer), self.monotonic()
        with self._lock:
            return key in self._buckets and self._tokens(key, now) < 1.0

    def refused(self, peer: str) -> None:
        """Spend one token of ``peer``'s bucket (its request was refused)."""
        if not self._applies(peer):
            return
        key, now = Peers.key(peer), self.monotonic()
        with self._lock:
            self._buckets[key] = (max(0.0, self._tokens(key, now) - 1.0), now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)


@dataclass(frozen=True)
class DiskState:
    """The last look at the log's filesystem: ``ok`` when free space is at or above the threshold."""

    ok: bool
    space: FreeSpace | None
    threshold_bytes: int


class DiskGuard:
    """Free space on the log's filesystem against a threshold (bytes, and/or a share of the filesystem).

    ``statvfs`` runs at most once per ``interval`` seconds of the monotonic clock (it costs microseconds,
    but a flood makes many requests); a change between enough and too little space is logged once.
    """

    def __init__(
        self,
        root: Path,
        *,
        min_free_bytes: int = 0,
        min_free_ratio: float = 0.0,
        interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        statvfs: Callable[[Path], FreeSpace] = free_space,
    ):
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.min_free_ratio = min_free_ratio
        self.interval = interval
        self.monotonic = monotonic
        self.statvfs = statvfs
        self._lock = threading.Lock()
        self._state = DiskState(True, None, min_free_bytes)
        self._checked: float | None = None

    @property
    def enabled(self) -> bool:
        return self.min_free_bytes > 0 or self.min_free_ratio > 0

    def state(self) -> DiskState:
        if not self.enabled:
            return self._state
        now = self.monotonic()
        with self._lock:
            if self._checked is not None and now - self._checked < self.interval:
                return self._state
            self._checked = now
            previous = self._state
            try:
                space = self.statvfs(self.root)
            except OSError as exc:  # cannot even look: say so, and keep answering from the last look
                logger.error("free space of %s cannot be read: %s", self.root, exc)
                return previous
            threshold = max(self.min_free_bytes, int(self.min_free_ratio * space.total_bytes))
            self._state = DiskState(space.free_bytes >= threshold, space, threshold)
        if previous.ok and not self._state.ok:
            logger.error(
                "free space on %s is %d bytes, below the threshold of %d: answering 503 to every callback"
                " (WeChat Pay retries later) until space is freed",
                space.path,
                space.free_bytes,
                threshold,
            )
        elif not previous.ok and self._state.ok:
            logger.warning("free space on %s is back to %d bytes: accepting callbacks", space.path, space.free_bytes)
        return self._state
