"""Every bound of the receiver and its server in one value, with the defaults production runs with.

``wxrecon receiver`` builds it from the ``receiver_*`` settings (:meth:`flows.settings.Settings.receiver_limits`);
tests and the demo pass their own. What each bound protects is in the README ("The receiver under attack").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class ReceiverLimits:
    """The receiver's bounds (times in seconds, sizes in bytes; ``0`` turns a rate or threshold off)."""

    max_body: int = MIB
    """A body longer than this is refused 413 (a combine notification with 10 sub orders is a few KB)."""
    body_timeout: float = 10.0
    """The whole body must arrive within this many seconds of the request head, else 408."""
    head_timeout: float = 10.0
    """A connection must send a complete request head within this many seconds of opening (or of its
    previous answer), else it is closed."""
    keep_alive: float = 5.0
    """An idle keep-alive connection is closed after this many seconds."""
    max_connections: int = 1000
    """Open connections at most (lowered to fit the process's file-descriptor limit); a new one past it
    closes the oldest connection that is idle or still sending its request."""
    backlog: int = 2048
    """Connections the kernel queues before the server accepts them."""
    refused_per_minute: float = 60.0
    """Refusals (4xx) a peer may cause per minute, in a bucket of ``refused_burst``; past it: 429 before the
    request is read. 0: no limit."""
    refused_burst: int = 30
    rate_limit_loopback: bool = False
    """Whether loopback peers are limited too (off: tests, the simulator and a local proxy are exempt)."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks whose ``X-Forwarded-For`` names the peer (a TLS-terminating proxy); none by default."""
    rejected_day_bytes: int = 64 * MIB
    """Records of refused requests per day file, at most."""
    rejected_total_bytes: int = GIB
    """Records of refused requests in all, at most (the oldest day files are removed first)."""
    min_free_bytes: int = GIB
    """Below this much free space on the log's filesystem, every callback is answered 503 (WeChat retries)."""
    min_free_ratio: float = 0.0
    """The same as a share of the filesystem (0.05 = 5 %); the larger of the two thresholds applies."""
    disk_check_interval: float = 1.0
    """Seconds between two looks at the free space (``statvfs``)."""

    def __post_init__(self) -> None:
        for name in ("max_body", "max_connections", "backlog", "refused_burst", "rejected_day_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("body_timeout", "head_timeout", "keep_alive"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.refused_per_minute < 0 or self.min_free_bytes < 0 or not 0 <= self.min_free_ratio < 1:
            raise ValueError("rates and free-space thresholds cannot be negative (a ratio is below 1)")
        if self.rejected_day_bytes > self.rejected_total_bytes:
            raise ValueError("rejected_day_bytes cannot exceed rejected_total_bytes")
        for proxy in self.trusted_proxies:
            ipaddress.ip_network(proxy, strict=False)  # ValueError naming it
