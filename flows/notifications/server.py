"""Serving the receiver over HTTP with uvicorn: in a background thread (the demo, tests) or in the foreground
(``wxrecon receiver``), with the bounds of :class:`~flows.notifications.limits.ReceiverLimits`: a connection
cap and head deadline (:mod:`flows.notifications.connections`), uvicorn's keep-alive timeout, the kernel's
backlog and ``limit_concurrency`` (one above the cap: a backstop that answers 503 should the cap be passed).

asyncio accepts as many queued connections per wake-up as the backlog it was given, before any of them is
admitted (and the cap enforced); so uvicorn is given :data:`ACCEPT_BATCH` and the socket listens with the
full backlog again once it serves: a burst of connections overshoots the cap by a few batches at most,
which :data:`~flows.notifications.connections.FD_RESERVE` leaves room for."""

from __future__ import annotations

import functools
import socket
import threading
import time
from typing import Any

import uvicorn

from flows.notifications.connections import ConnectionGuard, GuardedH11Protocol, connection_cap
from flows.notifications.limits import ReceiverLimits

ACCEPT_BATCH = 32
"""Connections asyncio accepts per wake-up of the listening socket."""


class _Server(uvicorn.Server):
    """uvicorn's server, listening with the full backlog once it serves (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, backlog: int):
        super().__init__(config)
        self.kernel_backlog = backlog

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        for sock in sockets or ():
            sock.listen(self.kernel_backlog)


class ReceiverServer:
    """The receiver app under uvicorn on ``host:port`` (port 0: any free one); ``url`` is where it listens.

    :meth:`start` serves from a daemon thread (stop with :meth:`stop`), :meth:`run` in the foreground. The
    socket listens from construction on, so connections made before the server runs wait in the backlog.
    ``limits`` and ``counters`` default to the app's own (``app.state``); ``max_connections`` is the cap
    in force (the limit's, lowered to fit the open-file limit).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        limits: ReceiverLimits | None = None,
        counters: Any = None,
    ):
        state = getattr(app, "state", None)
        limits = limits or getattr(state, "limits", None) or ReceiverLimits()
        self.max_connections = connection_cap(limits.max_connections)
        self.guard = ConnectionGuard(
            self.max_connections, limits.head_timeout, counters or getattr(state, "counters", None)
        )
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # inherited by accepted connections: a response's head and body are written apart, and without it the
        # body would wait for the sender's delayed ACK of the head (40 ms an answer on Linux)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self._socket.listen(limits.backlog)
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            lifespan="auto",
            access_log=False,
            http=functools.partial(GuardedH11Protocol, guard=self.guard),  # type: ignore[arg-type]
            limit_concurrency=self.max_connections + 1,
            timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]
            backlog=min(ACCEPT_BATCH, limits.backlog),
            proxy_headers=False,  # the app decides whom to believe (ReceiverLimits.trusted_proxies)
        )
        self._server = _Server(config, limits.backlog)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in the foreground until interrupted."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def start(self, timeout: float = 10.0) -> ReceiverServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"receiver on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> ReceiverServer:
        return self.start() if not self._thread.is_alive() else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_receiver(app: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> ReceiverServer:
    """Serve the receiver with uvicorn in a background thread; stop with ``.stop()``."""
    return ReceiverServer(app, host, port, **options).start()
