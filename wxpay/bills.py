"""Bills (spec §5): apply for a trade or fund-flow bill, download it inside the URL lifetime,
verify the SHA1 of the decompressed file.

The download is streamed: each chunk is written to a temporary file as received (kept as
downloaded, gzip), decompressed and hashed in the same pass, so memory stays bounded
whatever the size of the bill. Only when the digest matches ``hash_value`` (compared in
constant time) is the file renamed into place; a truncated gzip stream is an error, never a
short bill. :func:`fetch_bill` applies, downloads, and applies again when the URL expired or
the download broke, a bounded number of times. A download hands on what it verified
(:class:`BillProof`), so a loader need not inflate and hash the file a second time, and can
``tee`` the decompressed bytes to a consumer (a loader working while the bill still arrives).

Outcomes of an application are distinct: a :class:`BillApplication`, or
:class:`~wxpay.errors.BillNotReadyError` (``STATEMENT_CREATING``: apply again later), or
:class:`~wxpay.errors.NoStatementError` (``NO_STATEMENT_EXIST``: no trades that day, a
legitimate empty day), or another error of the tree.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict

from wxpay._operation import Operation, error_from_response, parse_model
from wxpay.errors import (
    BillDownloadError,
    BillHashMismatchError,
    BillTruncatedError,
    InvalidRequestError,
    RequestValidationError,
    TransportError,
)

try:  # ISA-L inflate is ~2x zlib's speed (shared/notes/performance.md); zlib is the fallback
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a declared dependency
    import zlib as _zlib

TRADE_BILL_PATH = "/v3/bill/tradebill"
FUNDFLOW_BILL_PATH = "/v3/bill/fundflowbill"
DOWNLOAD_PATH = "/v3/billdownload/file"
DEFAULT_URL_LIFETIME = 30.0  # seconds: the strictest docs (current docs say 5 minutes)
CHUNK = 1 << 20

TradeBillType = Literal["ALL", "SUCCESS", "REFUND"]
AccountType = Literal["BASIC", "OPERATION", "FEES"]


class BillApplication(BaseModel):
    """The answer to a bill application: where to download it and its SHA1 (of the decompressed file)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    hash_type: Literal["SHA1"]
    hash_value: str
    download_url: str


@dataclass(frozen=True)
class BillRequest:
    """Which bill to apply for. ``kind`` is ``trade`` or ``fundflow``."""

    kind: Literal["trade", "fundflow"]
    bill_date: date
    bill_type: str = "ALL"  # trade: ALL/SUCCESS/REFUND; fund flow: BASIC/OPERATION/FEES
    gzip: bool = True

    @classmethod
    def trade(cls, bill_date: date, bill_type: TradeBillType = "ALL", *, gzip: bool = True) -> BillRequest:
        if bill_type not in ("ALL", "SUCCESS", "REFUND"):
            raise RequestValidationError(f"bill_type must be ALL, SUCCESS or REFUND, got {bill_type!r}")
        return cls("trade", bill_date, bill_type, gzip)

    @classmethod
    def fundflow(cls, bill_date: date, account_type: AccountType = "BASIC", *, gzip: bool = True) -> BillRequest:
        if account_type not in ("BASIC", "OPERATION", "FEES"):
            raise RequestValidationError(f"account_type must be BASIC, OPERATION or FEES, got {account_type!r}")
        return cls("fundflow", bill_date, account_type, gzip)

    @property
    def label(self) -> str:
        """``trade_all``, ``fundflow_basic``...: how the archive and the warehouse name the bill type."""
        return f"{self.kind}_{self.bill_type.lower()}"

    def operation(self) -> Operation[BillApplication]:
        if not isinstance(self.bill_date, date):
            raise RequestValidationError("bill_date must be a date")
        params = {"bill_date": self.bill_date.isoformat()}
        if self.kind == "trade":
            path = TRADE_BILL_PATH
            params["bill_type"] = self.bill_type
        else:
            path = FUNDFLOW_BILL_PATH
            params["account_type"] = self.bill_type
        if self.gzip:
            params["tar_type"] = "GZIP"
        return Operation("GET", path, parse_model(BillApplication), params=params)


@dataclass(frozen=True)
class BillProof:
    """What a download's single streaming pass established about a bill file.

    ``sha1`` is the digest of the decompressed bytes, already compared with ``hash_value``;
    ``size`` the number of decompressed bytes. A loader given a proof for the file it reads
    need not hash it again (gzip's own CRC-32 still guards the bytes it inflates).
    """

    sha1: str
    size: int


class BillSink:
    """Sans-I/O receiver of a bill download: write as received, inflate and hash in one pass.

    ``feed`` each chunk, then ``finish`` to get the SHA1 of the decompressed bytes; a gzip
    stream that stops before its end marker raises :class:`BillTruncatedError`. ``tee``, if
    given, is called with every decompressed piece, in order, right after it is hashed.
    """

    def __init__(self, file, *, gzip: bool, source: str = "", tee: Callable[[bytes], None] | None = None):
        self._file = file
        self._gzip = gzip
        self._source = source
        self._tee = tee
        self._sha1 = hashlib.sha1()  # noqa: S324 - the algorithm WeChat Pay publishes, for integrity
        self._inflate = _zlib.decompressobj(31) if gzip else None
        self.received = 0
        self.decompressed = 0

    def feed(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.received += len(chunk)
        if self._inflate is None:
            self._hash(chunk)
            return
        data = chunk
        while data:
            if self._inflate.eof:  # concatenated gzip members are one stream
                data = self._inflate.unused_data + data if self._inflate.unused_data else data
                self._inflate = _zlib.decompressobj(31)
            try:
                self._hash(self._inflate.decompress(data))
            except _zlib.error as exc:
                raise BillTruncatedError(f"{self._source}: gzip stream is corrupt: {exc}") from None
            data = self._inflate.unused_data if self._inflate.eof else b""
            if self._inflate.eof and not data:
                break

    def _hash(self, data: bytes) -> None:
        if data:
            self._sha1.update(data)
            self.decompressed += len(data)
            if self._tee is not None:
                self._tee(data)

    def finish(self) -> str:
        if self._inflate is not None:
            self._hash(self._inflate.flush())
            if not self._inflate.eof:
                raise BillTruncatedError(
                    f"{self._source}: gzip stream ended early after {self.received} bytes "
                    f"({self.decompressed} decompressed): the bill is incomplete"
                )
        return self._sha1.hexdigest()


def check_digest(expected: str, actual: str, source: str) -> None:
    if not hmac.compare_digest(expected.strip().lower().encode(), actual.lower().encode()):
        raise BillHashMismatchError(expected=expected, actual=actual, source=source)


@dataclass(frozen=True)
class DownloadedBill:
    path: Path
    sha1: str  # of the decompressed bytes, verified against hash_value
    size: int  # bytes on disk, as downloaded
    decompressed_size: int
    application: BillApplication
    attempts: int = 1
    reused: bool = False  # the file was already at ``dest``: not downloaded again (its loader re-verifies it)

    @property
    def proof(self) -> BillProof | None:
        """What this download verified (``None`` for a reused file: nothing was verified now)."""
        return None if self.reused else BillProof(self.sha1, self.decompressed_size)


def _temp_beside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")


def _publish(tmp: Path, dest: Path) -> None:
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, dest)
    directory = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def download(
    http: httpx.Client,
    application: BillApplication,
    dest: str | Path,
    *,
    gzip: bool = True,
    on_progress: Callable[[int], None] | None = None,
    tee: Callable[[bytes], None] | None = None,
) -> DownloadedBill:
    """Stream ``application.download_url`` into ``dest`` and verify it; ``dest`` appears only if it matches.

    ``http`` must carry the merchant's :class:`~wxpay.auth.WechatPayAuth` (it signs the GET and
    refuses foreign hosts). Raises :class:`BillHashMismatchError`, :class:`BillTruncatedError`,
    :class:`BillDownloadError` (expired URL, broken transfer) or an :class:`ApiError`.
    ``tee`` gets the decompressed bytes as they are verified (see :class:`BillSink`); it sees
    the whole bill only if the download returns: anything it built must wait for that.
    """
    with _Download(application, dest, gzip=gzip, on_progress=on_progress, tee=tee) as job:
        with http.stream("GET", application.download_url) as response:
            if not response.is_success:
                response.read()
                raise _download_error(response)
            job.begin()
            for chunk in response.iter_bytes():
                job.feed(chunk)
        return job.complete()


async def adownload(
    http: httpx.AsyncClient,
    application: BillApplication,
    dest: str | Path,
    *,
    gzip: bool = True,
    on_progress: Callable[[int], None] | None = None,
    tee: Callable[[bytes], None] | None = None,
) -> DownloadedBill:
    """:func:`download` for an :class:`httpx.AsyncClient` (file writes stay synchronous: they are local)."""
    with _Download(application, dest, gzip=gzip, on_progress=on_progress, tee=tee) as job:
        async with http.stream("GET", application.download_url) as response:
            if not response.is_success:
                await response.aread()
                raise _download_error(response)
            job.begin()
            async for chunk in response.aiter_bytes():
                job.feed(chunk)
        return job.complete()


class _Download:
    """What one download does that does not wait on the network, for :func:`download` and :func:`adownload`:
    a temporary file beside ``dest``, the sink, the digest check, the rename, the cleanup."""

    def __init__(
        self,
        application: BillApplication,
        dest: str | Path,
        *,
        gzip: bool,
        on_progress: Callable[[int], None] | None,
        tee: Callable[[bytes], None] | None,
    ):
        self.application = application
        self.target = Path(dest)
        self.tmp = _temp_beside(self.target)
        self._gzip, self._on_progress, self._tee = gzip, on_progress, tee
        self._file = None
        self._sink: BillSink | None = None

    def __enter__(self) -> _Download:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None:
            self._file.close()
        self.tmp.unlink(missing_ok=True)
        if isinstance(exc, httpx.HTTPError):
            raise BillDownloadError(f"download of {self.target.name} broke off: {type(exc).__name__}: {exc}") from None

    def begin(self) -> None:
        # owner-only: a bill lists every payer of the day (their openids)
        self._file = os.fdopen(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self._sink = BillSink(self._file, gzip=self._gzip, source=str(self.target), tee=self._tee)

    def feed(self, chunk: bytes) -> None:
        self._sink.feed(chunk)
        if self._on_progress:
            self._on_progress(self._sink.received)

    def complete(self) -> DownloadedBill:
        self._file.close()
        self._file = None
        actual = self._sink.finish()
        check_digest(self.application.hash_value, actual, str(self.target))
        _publish(self.tmp, self.target)
        return DownloadedBill(self.target, actual, self._sink.received, self._sink.decompressed, self.application)


def _download_error(response: httpx.Response) -> Exception:
    error = error_from_response(response)
    if isinstance(error, InvalidRequestError):  # expired or invalid token: apply again
        return BillDownloadError(f"download URL refused ({error}); it has probably expired")
    return error


def _expired(applied_at: float, lifetime: float, margin: float = 1.0) -> bool:
    return time.monotonic() - applied_at > lifetime - margin


_RETRIED = (BillDownloadError, BillTruncatedError, TransportError)
"""What makes :func:`fetch_bill` apply again (a hash mismatch does not: see there)."""


def _before_download(
    dest: str | Path | Callable[[BillApplication], Path],
    application: BillApplication,
    applied_at: float,
    attempt: int,
    *,
    url_lifetime: float,
    reuse_existing: bool,
) -> tuple[Path, DownloadedBill | None]:
    """Where this application's file goes, and the result when nothing needs downloading.

    Raises :class:`BillDownloadError` when the URL expired before the download could start.
    """
    target = dest(application) if callable(dest) else Path(dest)
    if reuse_existing and target.exists():
        reused = DownloadedBill(
            target, application.hash_value.lower(), target.stat().st_size, 0, application, attempt, reused=True
        )
        return target, reused
    if _expired(applied_at, url_lifetime):
        raise BillDownloadError("download URL expired before the download could start")
    return target, None


def fetch_bill(
    client,
    request: BillRequest,
    dest: str | Path | Callable[[BillApplication], Path],
    *,
    url_lifetime: float = DEFAULT_URL_LIFETIME,
    max_attempts: int = 3,
    on_progress: Callable[[int], None] | None = None,
    reuse_existing: bool = False,
) -> DownloadedBill:
    """Apply and download at once; re-apply when the URL expired or the download broke (bounded).

    ``dest`` may be a function of the application (e.g. to name the file by its SHA1); with
    ``reuse_existing`` a file already there is returned instead of downloaded again. A hash
    mismatch is not retried: a complete gzip stream (its own CRC checked) whose content differs
    from ``hash_value`` will not get better by downloading it again.
    """
    last: Exception | None = None
    for attempt in range(1, max_attempts + 1):
        application = client.send(request.operation())
        applied_at = time.monotonic()
        try:
            target, done = _before_download(
                dest,
                application,
                applied_at,
                attempt,
                url_lifetime=url_lifetime,
                reuse_existing=reuse_existing,
            )
            if done is not None:
                return done
            result = download(client.http, application, target, gzip=request.gzip, on_progress=on_progress)
        except _RETRIED as exc:
            last = exc
            continue
        return replace(result, attempts=attempt)
    assert last is not None
    raise last


async def afetch_bill(
    client,
    request: BillRequest,
    dest: str | Path | Callable[[BillApplication], Path],
    *,
    url_lifetime: float = DEFAULT_URL_LIFETIME,
    max_attempts: int = 3,
    on_progress: Callable[[int], None] | None = None,
    reuse_existing: bool = False,
) -> DownloadedBill:
    """:func:`fetch_bill` for an :class:`~wxpay.client.AsyncClient`."""
    last: Exception | None = None
    for attempt in range(1, max_attempts + 1):
        application = await client.send(request.operation())
        applied_at = time.monotonic()
        try:
            target, done = _before_download(
                dest,
                application,
                applied_at,
                attempt,
                url_lifetime=url_lifetime,
                reuse_existing=reuse_existing,
            )
            if done is not None:
                return done
            result = await adownload(client.http, application, target, gzip=request.gzip, on_progress=on_progress)
        except _RETRIED as exc:
            last = exc
            continue
        return replace(result, attempts=attempt)
    assert last is not None
    raise last
