"""The merchant's ``notify_url``: receive WeChat Pay's combine payment callbacks, log them, answer.

``POST /wxpay/notify/{mchid}`` (``mchid`` = the combine initiator, whose keys verify the callback).
For each request, in this order (bounds: :class:`~flows.notifications.limits.ReceiverLimits`):

1. who the peer is (:class:`~flows.notifications.guards.Peers`); a peer refused too often is answered
   429 at once, and when free disk is below the threshold every request is answered 503 at once: the
   body is not read, nothing is verified, nothing is written;
2. read the raw body: at most ``max_body`` bytes (a larger ``Content-Length`` is refused without
   reading), all of it within ``body_timeout``; and the ``Wechatpay-*`` / ``Request-ID`` headers;
3. verify and decrypt with :func:`wxpay.notify.parse_notification` (in a worker thread);
4. append one line to the :class:`~flows.notifications.log.NotificationLog` and fsync it;
5. only then answer.

Answers (WeChat Pay retries every failure on its schedule, spec §3.4, whatever the 4xx/5xx)::

    204                      verified and logged: ``accepted`` the first time, ``duplicate`` afterwards
    401 {"code":"FAIL",...}  signature problems: any VerificationError (bad signature, SIGNTEST probe,
                             stale timestamp, unknown serial, missing headers, unknown algorithm)
    400 {"code":"FAIL",...}  verified but unusable: DecryptionError, MalformedNotificationError
    404 {"code":"FAIL",...}  the path (or method) names no configured merchant's notify_url
    408 {"code":"FAIL",...}  the body did not arrive within ``body_timeout``
    413 {"code":"FAIL",...}  body over ``max_body``
    429 {"code":"FAIL",...}  this peer was refused too often (``refused_per_minute``)
    500 {"code":"FAIL",...}  the log line could not be written (``StorageError``: nothing is acknowledged
                             that is not on disk), our configuration is broken (ConfigurationError), or a bug
    503 {"code":"FAIL",...}  free disk below the threshold: not accepting what might not be persisted

The FAIL ``message`` is the exception class name only; the full reason goes to the record. Every 4xx
after step 1 is recorded as a bounded record in the capped ``_rejected/`` stream
(:mod:`flows.notifications.rejected`) and spends one of the peer's refusals; answers given before the
body was read all close the connection. What happened is counted (``app.state.counters``) and shown by
``GET /wxpay/notify/_health`` to loopback peers (200 ``ok`` or 503 ``degraded``, with the reasons).

Duplicates: exactly one ``accepted`` line per (merchant, notification id), even for concurrent
deliveries; :meth:`NotificationLog.accept` decides under a lock and re-reads the log files of the
last days first, so the "already seen" set survives restarts and is shared by processes that
share the log directory. ``create_app`` reads those days at start-up.

``hook(notification)`` (sync or async) runs for ``accepted`` notifications after the answer has
been sent, so it can neither delay nor change it; if it raises, the error is logged and the
notification stays in the log for the reconciliation.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flows.notifications.entry import LogEntry
from flows.notifications.guards import Counters, DiskGuard, Peers, RefusalLimiter
from flows.notifications.limits import ReceiverLimits
from flows.notifications.log import UNROUTED, NotificationLog
from flows.notifications.rejected import RejectedLog, claimed_id, refusal_record
from flows.storage import StorageError
from wxpay.errors import DecryptionError, MalformedNotificationError, VerificationError, WxPayError
from wxpay.models import BEIJING, CombinePaymentNotification
from wxpay.notify import Reply, failure_reply, parse_notification, success_reply
from wxpay.verifying import Verifier

logger = logging.getLogger(__name__)

NOTIFY_PATH = "/wxpay/notify"
HEALTH_PATH = NOTIFY_PATH + "/_health"
Hook = Callable[[CombinePaymentNotification], Any]


@dataclass(frozen=True, repr=False)
class ReceiverMerchant:
    """What the receiver needs of one combine initiator: its verifier and APIv3 key.

    ``refresh_certificates`` (platform-certificate mode) is called once on an unknown serial.
    """

    verifier: Verifier
    api_v3_key: bytes | str
    refresh_certificates: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"ReceiverMerchant(verifier={self.verifier!r}, api_v3_key='***')"


def create_app(
    merchants: Mapping[str, ReceiverMerchant],
    log: NotificationLog,
    hook: Hook | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    limits: ReceiverLimits | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The receiver as an ASGI app; reads the last days of ``log`` for every merchant first.

    ``clock`` gives ``received_at``; ``monotonic`` drives the rate limit and the free-space checks.
    ``app.state``: ``receiver``, ``counters`` (:class:`~flows.notifications.guards.Counters`), ``limits``.
    """
    limits = limits or ReceiverLimits()
    receiver = _Receiver(dict(merchants), log, hook, clock or (lambda: datetime.now(BEIJING)), limits, monotonic)
    today = receiver.clock().astimezone(BEIJING).date()
    for mchid in receiver.merchants:
        log.warm(mchid, today)  # also refuses an mchid that cannot be a log directory
    app = Starlette(
        routes=[
            Route(HEALTH_PATH, receiver.health, methods=["GET"]),
            Route(NOTIFY_PATH + "/{mchid:path}", receiver.notify, methods=["POST"]),
            Route("/{path:path}", receiver.unrouted),  # any other method or path
        ]
    )
    app.state.receiver = receiver
    app.state.counters = receiver.counters
    app.state.limits = limits
    return app


@dataclass
class _Body:
    data: bytes
    complete: bool
    refusal: tuple[int, str, str] | None = None  # (status, class name, message) when reading refused it


class _Receiver:
    def __init__(
        self,
        merchants: dict[str, ReceiverMerchant],
        log: NotificationLog,
        hook: Hook | None,
        clock: Callable[[], datetime],
        limits: ReceiverLimits,
        monotonic: Callable[[], float],
    ):
        self.merchants = merchants
        self.log = log
        self.hook = hook
        self.clock = clock
        self.limits = limits
        self.counters = Counters()
        self.peers = Peers(limits.trusted_proxies)
        self.limiter = RefusalLimiter(
            limits.refused_per_minute, limits.refused_burst, loopback=limits.rate_limit_loopback, monotonic=monotonic
        )
        self.disk = DiskGuard(
            log.root,
            min_free_bytes=limits.min_free_bytes,
            min_free_ratio=limits.min_free_ratio,
            interval=limits.disk_check_interval,
            monotonic=monotonic,
        )
        self.rejected = RejectedLog(
            log, self.counters, day_bytes=limits.rejected_day_bytes, total_bytes=limits.rejected_total_bytes
        )
        self.storage_fault: str | None = None  # the last write failure of an accepted line, until one succeeds

    # --- routes ---------------------------------------------------------------------------------
    async def notify(self, request: Request) -> Response:
        return await self._receive(request, request.path_params["mchid"])

    async def unrouted(self, request: Request) -> Response:
        return await self._receive(request, None)

    async def health(self, request: Request) -> Response:
        if not Peers.is_loopback(self._peer(request)):
            return await self._receive(request, None)  # from outside, it is just another unknown path
        disk = self.disk.state()
        day = self.clock().astimezone(BEIJING).date()
        problems = [
            name
            for name, present in (
                ("low_disk", not disk.ok),
                ("storage_fault", self.storage_fault is not None),
                ("rejected_stream_full", self.rejected.full_on(day)),
            )
            if present
        ]
        body = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "counters": {**self.counters.snapshot(), **self.log.stats},
            "free_bytes": disk.space.free_bytes if disk.space else None,
            "free_threshold_bytes": disk.threshold_bytes if self.disk.enabled else 0,
            "storage_fault": self.storage_fault,
            "rejected": self.rejected.usage(),
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    # --- one request ----------------------------------------------------------------------------
    async def _receive(self, request: Request, mchid: str | None) -> Response:
        received_at = self.clock()
        peer = self._peer(request)
        if self.limiter.limited(peer):
            self.counters.add("rate_limited")
            count = self.counters["rate_limited"]
            _sampled(count, "peer %s was refused too often: answering 429 (%d so far)", peer, count)
            return _response(failure_reply("RateLimited", 429), close=True, retry_after=60)
        if not self.disk.state().ok:
            self.counters.add("low_disk")
            return _response(failure_reply("InsufficientStorage", 503), close=True)
        merchant = self.merchants.get(mchid) if mchid is not None else None
        body = await self._body(request)
        if body is None:
            self.counters.add("disconnected")
            return _response(failure_reply("ClientDisconnect", 400), close=True)
        raw_headers = request.scope["headers"]
        if merchant is None:
            path = request.url.path
            shown = path if request.method == "POST" else f"{request.method} {path}"
            refusal = (404, "UnknownMerchantError", f"no receiver configured for {shown}")
        else:
            refusal = body.refusal
        if refusal is not None:
            status, name, message = refusal
            record = dict(
                received_at=received_at,
                mchid=UNROUTED if merchant is None else mchid,
                reason=f"{name}: {message}",
                status=status,
                raw_headers=raw_headers,
                body=body.data,
                complete=body.complete,
                peer=peer,
                path=request.url.path,
            )
            reply = await anyio.to_thread.run_sync(self._refuse, record, name, peer)
            return _response(reply, close=not body.complete)
        assert mchid is not None  # a merchant was found for it
        reply, note = await anyio.to_thread.run_sync(
            self._handle, mchid, merchant, received_at, raw_headers, body.data, peer, request.url.path
        )
        task = BackgroundTask(self._run_hook, mchid, note) if note is not None and self.hook else None
        return _response(reply, task)

    def _peer(self, request: Request) -> str:
        forwarded = ", ".join(request.headers.getlist("x-forwarded-for"))
        return self.peers.peer(request.scope.get("client"), {"x-forwarded-for": forwarded})

    async def _body(self, request: Request) -> _Body | None:
        """The raw body, or what was read of it when reading refused it; ``None`` if the client left."""
        limit = self.limits.max_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            return _Body(b"", False, (413, "PayloadTooLargeError", f"Content-Length {declared} exceeds {limit} bytes"))
        chunks: list[bytes] = []
        size = 0
        try:
            with anyio.fail_after(self.limits.body_timeout):
                async for chunk in request.stream():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        refusal = (413, "PayloadTooLargeError", f"body exceeds {limit} bytes")
                        return _Body(b"".join(chunks), False, refusal)
        except TimeoutError:
            timeout = self.limits.body_timeout
            refusal = (408, "RequestTimeoutError", f"body not received within {timeout:g} s ({size} bytes read)")
            return _Body(b"".join(chunks), False, refusal)
        except ClientDisconnect:
            return None
        return _Body(b"".join(chunks), True)

    def _handle(
        self,
        mchid: str,
        merchant: ReceiverMerchant,
        received_at: datetime,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: str,
        path: str,
    ) -> tuple[Reply, CombinePaymentNotification | None]:
        """Verify, decrypt, log; runs in a worker thread (RSA, AES and fsync stay off the event loop)."""
        headers = _signed_headers(raw_headers)
        try:
            note = parse_notification(
                headers,
                body,
                verifier=merchant.verifier,
                api_v3_key=merchant.api_v3_key,
                refresh_certificates=merchant.refresh_certificates,
            )
            if note.order.combine_mchid != mchid:
                raise MalformedNotificationError(
                    f"notification {note.id} is for combine_mchid {note.order.combine_mchid}, not {mchid}"
                )
        except Exception as exc:  # every failure is answered FAIL and recorded; the status says which kind
            status = _failure_status(exc)
            if not isinstance(exc, WxPayError):
                logger.exception("notification for %s: unexpected error, answering 500", mchid)
            elif status >= 500:
                logger.error("notification for %s could not be processed: %s: %s", mchid, type(exc).__name__, exc)
            record = dict(
                received_at=received_at,
                mchid=mchid,
                reason=f"{type(exc).__name__}: {exc}",
                status=status,
                raw_headers=raw_headers,
                body=body,
                complete=True,
                peer=peer,
                path=path,
            )
            return self._refuse(record, type(exc).__name__, peer), None
        entry = LogEntry(received_at, mchid, "accepted", None, note.id, headers, body, 204)
        try:
            entry = self.log.accept(entry)
        except StorageError as exc:  # the log is the point: without the line, WeChat Pay must try again
            self.counters.add("storage_faults")
            self.storage_fault = str(exc)
            logger.error("notification %s for %s not acknowledged (500): %s", note.id, mchid, exc)
            return failure_reply("StorageError", 500), None
        except Exception:
            self.counters.add("errors")
            logger.exception("notification %s for %s: log write failed, answering 500", note.id, mchid)
            return failure_reply("notification log unavailable", 500), None
        self.storage_fault = None
        self.counters.add(entry.outcome)
        logger.info("notification %s for %s: %s", note.id, mchid, entry.outcome)
        return success_reply(204), note if entry.outcome == "accepted" else None

    def _refuse(self, fields: dict[str, Any], name: str, peer: str) -> Reply:
        """Record a refusal (bounded, capped; a failed write is counted, never turned into a 204). Runs in a
        worker thread: making the record hashes the body and reads the id it claims."""
        claimed = claimed_id(fields["body"]) if fields["complete"] else None
        record = refusal_record(**fields, notification_id=claimed)
        status = record.reply_status
        if status < 500:
            self.limiter.refused(peer)
            self.counters.add("refused")
            self.counters.add(f"refused_{status}")
        else:
            self.counters.add("errors")
        try:
            self.rejected.write(record)
        except StorageError as exc:
            self.counters.add("records_dropped")
            count = self.counters["records_dropped"]
            _sampled(count, "a refused request was not recorded (%d so far): %s", count, exc)
        count = self.counters["refused"] + self.counters["errors"]
        _sampled(
            count,
            "request for %s refused (%d): %s [peer %s; %d so far]",
            record.mchid,
            status,
            record.reason,
            peer,
            count,
        )
        return failure_reply(name, status)

    async def _run_hook(self, mchid: str, note: CombinePaymentNotification) -> None:
        try:
            if inspect.iscoroutinefunction(self.hook):
                await self.hook(note)
            else:
                await anyio.to_thread.run_sync(self.hook, note)
        except Exception:
            logger.exception("notification hook failed for %s (mchid %s); the notification is logged", note.id, mchid)


def _sampled(count: int, message: str, *args: Any) -> None:
    """Log the 1st, 2nd, 4th, 8th ... occurrence at WARNING, the others at DEBUG: a flood of a million
    requests writes twenty lines, not a million."""
    logger.log(logging.WARNING if count & (count - 1) == 0 else logging.DEBUG, message, *args)


def _failure_status(exc: Exception) -> int:
    if isinstance(exc, VerificationError):
        return 401
    if isinstance(exc, DecryptionError | MalformedNotificationError):
        return 400
    return 500  # ConfigurationError (ours to fix), a failed certificate refresh, a bug


def _signed_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The Wechatpay-* and Request-ID headers, names lower-cased, first value of a repeated name."""
    found: dict[str, str] = {}
    for name_bytes, value in raw:
        name = name_bytes.decode("latin-1").lower()
        if (name.startswith("wechatpay-") or name == "request-id") and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _response(
    reply: Reply, background: BackgroundTask | None = None, *, close: bool = False, retry_after: int | None = None
) -> Response:
    headers = dict(reply.headers)
    if close:  # the request was not read to its end: the connection cannot carry another one
        headers["Connection"] = "close"
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(reply.body, status_code=reply.status, headers=headers, background=background)
