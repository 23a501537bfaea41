"""A real Prefect server for the tests that deploy: ``prefect server start`` on loopback, SQLite, analytics off.

Started once per session, only by the tests that ask for it (``prefect_server``); it fails the test
(never skips) when it cannot start. Processes the tests start against it get :func:`PrefectServer.env`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

START_TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[1]


@dataclass
class PrefectServer:
    url: str  # the API: http://127.0.0.1:<port>/api
    home: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that talks to this server (quiet, offline, its own Prefect home)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WXRECON_"))}
        env.update(
            PREFECT_API_URL=self.url,
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        env.update(extra)
        return env

    def api(self, method: str, path: str, **kw: Any) -> Any:
        response = httpx.request(method, self.url + path, timeout=30, **kw)
        response.raise_for_status()
        return response.json() if response.content else None

    def prefect(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the ``prefect`` command line against this server, from the project directory."""
        command = [str(Path(sys.executable).with_name("prefect")), *args]
        return subprocess.run(
            command, cwd=REPO, env=self.env(**env), capture_output=True, text=True, timeout=timeout, check=False
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_prefect_server() -> Iterator[PrefectServer]:
    base = Path(tempfile.mkdtemp(prefix="wxrecon-prefect-server-"))
    port = _free_port()
    server = PrefectServer(f"http://127.0.0.1:{port}/api", base / "home", base / "server.log")
    server.home.mkdir()
    with server.log.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-ui",
            ],
            env=server.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{server.log.read_text()[-3000:]}")
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prefect server did not answer within {START_TIMEOUT_S} s:\n{server.log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    yield from run_prefect_server()
