"""Connections that cannot starve WeChat Pay's deliveries: uvicorn's HTTP/1.1 (h11) with a deadline for each
request head and a cap on open connections that makes room by closing the connection that has waited longest.

uvicorn times out idle keep-alive connections but not a connection that never finishes its request head,
and it accepts connections until the process runs out of file descriptors ("Too many open files": then
nothing is served, valid callbacks included). Here (:class:`GuardedH11Protocol`, sharing one
:class:`ConnectionGuard` per server):

* a connection must deliver a complete request head within ``head_timeout`` of opening, or of its previous
  answer, else it is closed (``head_timeouts``); the body's own deadline is the app's (``body_timeout``, 408);
* at most ``max_connections`` are open (:func:`connection_cap` keeps it under the process's descriptor
  limit); a new connection past the cap closes the open connection that has waited longest without a
  request in progress: idle, still sending its head, or still sending its body (``connections_evicted``).
  A slow attacker's connections are always older than a delivery that arrived just now, so the delivery
  is served. Only when every connection has a request in progress is the new one closed instead
  (``connections_refused``).

:func:`raise_fd_limit` lifts the soft descriptor limit to the hard one at start.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("flows.notifications.receiver")

FD_RESERVE = 256
"""Descriptors kept for what is not an admitted client connection: connections accepted but not yet admitted
(a few accept batches, :data:`flows.notifications.server.ACCEPT_BATCH`), the log and lock files the worker
threads hold while writing, the listening socket, the event loop's own."""


def raise_fd_limit(target: int = 1 << 20) -> int:
    """Raise the soft limit of open files towards the hard one (at most ``target``); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(target, hard) if hard != resource.RLIM_INFINITY else target
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:  # e.g. above fs.nr_open: keep what we have, and say so
        logger.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
        return soft
    return wanted


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to leave :data:`FD_RESERVE` descriptors under the soft limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FD_RESERVE))


class ConnectionGuard:
    """The open connections of one server, oldest-waiting first, and the cap on them."""

    def __init__(self, max_connections: int, head_timeout: float, counters: Any = None):
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.counters = counters
        self.open: dict[GuardedH11Protocol, None] = {}  # insertion order: since when each has been waiting

    def count(self, name: str) -> None:
        if self.counters is not None:
            self.counters.add(name)

    def opened(self, connection: GuardedH11Protocol) -> bool:
        """Admit a new connection, closing the longest-waiting idle or slow one past the cap; ``False`` when
        every open connection has a request in progress (the new one is then closed by the caller)."""
        self.open[connection] = None
        if len(self.open) <= self.max_connections:
            return True
        victim = next((c for c in self.open if c is not connection and c.evictable), None)
        if victim is None:
            del self.open[connection]
            self.count("connections_refused")
            return False
        del self.open[victim]
        victim.close()
        self.count("connections_evicted")
        return True

    def waiting(self, connection: GuardedH11Protocol) -> None:
        """The connection starts waiting again (its answer was sent): it goes to the back of the line."""
        if connection in self.open:
            del self.open[connection]
            self.open[connection] = None

    def closed(self, connection: GuardedH11Protocol) -> None:
        self.open.pop(connection, None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline and a place in a :class:`ConnectionGuard`.

    Passed to uvicorn as ``http=functools.partial(GuardedH11Protocol, guard=guard)``.
    """

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.head_timer: asyncio.TimerHandle | None = None

    @property
    def evictable(self) -> bool:
        """No request in progress: idle, still sending the head, or still sending a body not answered yet."""
        if self.transport is None or self.transport.is_closing():
            return False
        if self.conn.their_state is h11.IDLE:
            return True
        return self.conn.their_state is h11.SEND_BODY and not (self.cycle and self.cycle.response_started)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.opened(self):
            self.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.head_timer is not None and self.conn.their_state is not h11.IDLE:
            self.head_timer.cancel()  # the head is complete: the app's body deadline takes over
            self.head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.guard.waiting(self)
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.guard.closed(self)
        super().connection_lost(exc)

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _arm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(self.guard.head_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.guard.count("head_timeouts")
            self.close()
