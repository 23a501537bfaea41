"""Serving the receiver over HTTP with uvicorn: in a background thread (the demo, tests) or in the foreground
(``wxrecon receiver``)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class ReceiverServer:
    """The receiver app under uvicorn on ``host:port`` (port 0: any free one); ``url`` is where it listens.

    :meth:`start` serves from a daemon thread (stop with :meth:`stop`), :meth:`run` in the foreground.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, lifespan="auto", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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


def serve_receiver(app: Any, host: str = "127.0.0.1", port: int = 0) -> ReceiverServer:
    """Serve the receiver with uvicorn in a background thread; stop with ``.stop()``."""
    return ReceiverServer(app, host, port).start()
