"""The DuckLake's real parts for the tests: PostgreSQL as the catalog (tests/dbservers.py starts it) and an
S3-compatible object store for the data files: moto in server mode on loopback. A user runs MinIO, Ceph or
a cloud's object storage (Aliyun OSS, Tencent COS, AWS S3) instead; the settings are the same.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows.warehouse import Lake

BUCKET = "wxrecon-lake"
KEY_ID, SECRET = "test-key-id", "test-secret"  # moto accepts any; nothing real
_names = itertools.count(1)


@dataclass
class S3Server:
    endpoint: str  # host:port

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 on loopback, with the lake's bucket."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = S3Server(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(server.url, timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start (exit {proc.poll()})")
                time.sleep(0.1)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def lake(postgres_server, s3_server) -> Lake:
    """A new, empty DuckLake: its catalog a database of the test PostgreSQL, its data files on the S3 server."""
    name = f"lake{next(_names)}"
    db = postgres_server.create_database(name)
    return Lake(
        catalog=f"postgres:dbname={db.dbname} host={db.host} port={db.port} user={db.user}",
        data_path=f"s3://{BUCKET}/{name}/",
        s3_endpoint=s3_server.endpoint,
        s3_key_id=KEY_ID,
        s3_secret=SECRET,
        s3_use_ssl=False,
    )
