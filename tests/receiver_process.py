"""``wxrecon receiver`` as a separate process, for the fault tests: started from a settings file, stopped or
killed by its pid, optionally with a lower open-file limit or on a tiny filesystem of its own; and genuine
callbacks to send it.

A process runs on the real clock (tests.clock moves only this one), so callbacks are signed with the real
time (time-machine's escape hatch).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from copy import copy
from dataclasses import dataclass
from pathlib import Path

import httpx
import time_machine

import wxpay
from tests.conftest import INITIATOR, START, NotifyTransport, combine_request
from wxpay.sim import SimOptions, Simulator, VirtualClock

REPO = Path(__file__).resolve().parent.parent


def real_time() -> float:
    """The wall clock, whether or not time-machine moved this process's."""
    hatch = time_machine.escape_hatch
    return hatch.time.time() if hatch.is_travelling() else time.time()


class Callbacks:
    """Genuine callbacks for the initiator (one paid combine order, each copy with an id of its own), signed
    with the real time as WeChat Pay would send them; and forged ones."""

    def __init__(self, merchant_pool):
        self.sim = Simulator(
            [copy(m) for m in merchant_pool],
            options=SimOptions(seed=5),
            clock=VirtualClock(START),
            wall_clock=real_time,
            notify_transport=NotifyTransport(),
        )
        self.initiator = self.sim.merchants[INITIATOR]
        kwargs = {**self.initiator.client_kwargs(), "verifier": self.initiator.verifier(clock=real_time)}
        with wxpay.Client(transport=httpx.MockTransport(self.sim.handle), clock=real_time, **kwargs) as client:
            client.combine.create_native(combine_request("C20261126001"))
        self.sim.pay(INITIATOR, "C20261126001", openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", deliver=False)
        self.template = json.loads(self.sim.deliveries[0].body)

    def valid(self, index: int) -> tuple[str, dict[str, str], bytes]:
        """(notification id, headers, body) of the ``index``-th callback."""
        ident = f"{self.template['id'][:-8]}{index:08d}"
        body = json.dumps({**self.template, "id": ident}, separators=(",", ":")).encode()
        headers, sent = self.sim.signed_headers(self.initiator, body)
        return ident, {**headers, "Content-Type": "application/json"}, sent

    def forged(self, body: bytes) -> tuple[dict[str, str], bytes]:
        """``body`` signed with a key that is not WeChat Pay's."""
        headers, sent = self.sim.signed_headers(self.initiator, body, fault="wrong_key")
        return {**headers, "Content-Type": "application/json"}, sent

    def close(self) -> None:
        self.sim.close()


def settings_file(folder: Path, merchant, data_dir: Path, **receiver: object) -> Path:
    """A settings TOML for the initiator's receiver; ``receiver`` adds ``receiver_<name> = <value>`` lines."""
    merchant.export(folder)
    keys = folder / merchant.mchid
    lines = [f'data_dir = "{data_dir}"']
    for name, value in receiver.items():
        lines.append(f"receiver_{name} = {json.dumps(value)}")
    lines += [
        "[[merchants]]",
        f'mchid = "{merchant.mchid}"',
        f'appid = "{merchant.appid}"',
        f'merchant_serial_no = "{merchant.merchant_serial}"',
        f'private_key_file = "{keys / "apiclient_key.pem"}"',
        f'api_v3_key = "{merchant.api_v3_key}"',
        f'wechatpay_public_key_id = "{merchant.public_key_id}"',
        f'wechatpay_public_key_file = "{keys / "wechatpay_public_key.pem"}"',
        "receives_notifications = true",
    ]
    path = folder / "wxrecon.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tmpfs_available() -> str | None:
    """Why a private tmpfs cannot be mounted here (``unshare -rm``: no root needed), or None if it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || mount -t tmpfs tmpfs /tmp",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else f"user namespaces with tmpfs are not available: {probe.stderr.strip()}"


@dataclass
class ReceiverProcess:
    """``wxrecon receiver`` in a process of its own (see the module docstring)."""

    proc: subprocess.Popen
    url: str
    log_root: Path
    output: list[str]

    @classmethod
    def start(
        cls,
        config: Path,
        log_root: Path,
        *,
        open_files: int | None = None,
        tmpfs_bytes: int | None = None,
        timeout: float = 60.0,
    ) -> ReceiverProcess:
        """Start it and wait for the address it prints. ``open_files``: its RLIMIT_NOFILE, soft and hard (so it
        cannot raise it); ``tmpfs_bytes``: its log directory is a tmpfs of that size, private to it (a user
        and mount namespace of its own: read the files through :attr:`files_root` while it runs)."""
        command = [
            sys.executable,
            "-c",
            "from flows.cli import main; main()",
            "receiver",
            "-c",
            str(config),
            "--port",
            "0",
        ]
        if tmpfs_bytes is not None:
            log_root.mkdir(parents=True, exist_ok=True)
            mount = f"mount -t tmpfs -o size={tmpfs_bytes},mode=0755 tmpfs {log_root}"
            command = ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh", *command]

        def limits() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=limits,  # only setrlimit, before exec
        )
        output: list[str] = []
        found = threading.Event()
        url: list[str] = []

        def read() -> None:  # keep the pipe drained for the life of the process
            for line in proc.stdout:
                output.append(line)
                match = re.search(r"notify_url: (http://[0-9.:]+)/", line)
                if match and not url:
                    url.append(match[1])
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or not url:
            proc.kill()
            raise RuntimeError("the receiver did not start:\n" + "".join(output))
        return cls(proc, url[0], log_root, output)

    @property
    def notify_url(self) -> str:
        return f"{self.url}/wxpay/notify/{INITIATOR}"

    @property
    def files_root(self) -> Path:
        """The log directory as this process sees it (its own tmpfs, when it has one)."""
        return Path(f"/proc/{self.proc.pid}/root") / self.log_root.relative_to("/")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/wxpay/notify/_health", timeout=5).json()

    def kill(self) -> None:
        """``kill -9``, by pid."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def text(self) -> str:
        return "".join(self.output)
