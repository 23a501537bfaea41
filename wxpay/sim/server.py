"""Serve a request handler (the simulator, or any ASGI app) on a loopback port, in a thread.

:class:`HandlerApp` adapts ``handle(httpx.Request) -> httpx.Response`` to ASGI, keeping the
raw request target byte for byte (signatures cover it). :func:`serve` runs an ASGI app
under uvicorn in a background thread and returns once it accepts connections.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import httpx
import uvicorn


class HandlerApp:
    """ASGI wrapper around a synchronous ``handle(request) -> response`` callable."""

    def __init__(self, handle: Callable[[httpx.Request], httpx.Response]):
        self._handle = handle

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode("latin-1")
        url = httpx.URL(f"http://{host}{target.decode('ascii')}")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        request = httpx.Request(scope["method"], url, headers=headers, content=body)
        response = await anyio.to_thread.run_sync(self._handle, request)
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.multi_items()
            if k.lower() != "transfer-encoding"
        ]  # uvicorn chunks a body without Content-Length itself
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        # bytes bodies are already in memory; iterator bodies (large bill files) stay streamed
        chunks = iter([response.content]) if hasattr(response, "_content") else response.iter_raw()
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, None)
            if chunk is None:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class BackgroundServer:
    """A uvicorn server in a daemon thread; ``url`` is where it listens. Stop with :meth:`stop`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: uvicorn writes a response's head and body apart, and without it
        # the body waits for the client's delayed ACK of the head (40 ms a request on Linux)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, lifespan="auto", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start() if not self._thread.is_alive() else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(app_or_handler: Any, host: str = "127.0.0.1", port: int = 0) -> BackgroundServer:
    """Start serving; a :class:`~wxpay.sim.Simulator` (anything with ``handle``) is wrapped first."""
    app = HandlerApp(app_or_handler.handle) if hasattr(app_or_handler, "handle") else app_or_handler
    return BackgroundServer(app, host, port).start()
