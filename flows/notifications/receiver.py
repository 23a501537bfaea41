"""The merchant's ``notify_url``: receive WeChat Pay's combine payment callbacks, log them, answer.

``POST /wxpay/notify/{mchid}`` (``mchid`` = the combine initiator, whose keys verify the callback).
For each request, in this order:

1. read the raw body (at most ``max_body`` bytes) and the ``Wechatpay-*`` / ``Request-ID`` headers;
2. verify and decrypt with :func:`wxpay.notify.parse_notification` (in a worker thread);
3. append one line to the :class:`~flows.notifications.log.NotificationLog` and fsync it;
4. only then answer.

Answers (WeChat Pay retries every failure on its schedule, spec §3.4, whatever the 4xx/5xx)::

    204                      verified and logged: ``accepted`` the first time, ``duplicate`` afterwards
    401 {"code":"FAIL",...}  signature problems: any VerificationError (bad signature, SIGNTEST probe,
                             stale timestamp, unknown serial, missing headers, unknown algorithm)
    400 {"code":"FAIL",...}  verified but unusable: DecryptionError, MalformedNotificationError
    404 {"code":"FAIL",...}  the path names no configured merchant (logged under ``_unrouted``)
    413 {"code":"FAIL",...}  body over ``max_body``
    500 {"code":"FAIL",...}  the log line could not be written (nothing is acknowledged that is not on
                             disk), our configuration is broken (ConfigurationError), or a bug

The FAIL ``message`` is the exception class name only; the full reason goes to the log line.

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
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flows.notifications.log import LogEntry, NotificationLog
from wxpay.errors import (
    DecryptionError,
    MalformedNotificationError,
    VerificationError,
    WxPayError,
)
from wxpay.models import BEIJING, CombinePaymentNotification
from wxpay.notify import Reply, failure_reply, parse_notification, success_reply
from wxpay.verifying import Verifier

logger = logging.getLogger(__name__)

NOTIFY_PATH = "/wxpay/notify"
MAX_BODY = 1 << 20  # a combine notification with 10 sub orders is a few KB
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
    max_body: int = MAX_BODY,
) -> Starlette:
    """The receiver as an ASGI app; reads the last days of ``log`` for every merchant first."""
    receiver = _Receiver(dict(merchants), log, hook, clock or (lambda: datetime.now(BEIJING)), max_body)
    today = receiver.clock().astimezone(BEIJING).date()
    for mchid in receiver.merchants:
        log.warm(mchid, today)  # also refuses an mchid that cannot be a log directory
    app = Starlette(routes=[Route(NOTIFY_PATH + "/{mchid:path}", receiver.notify, methods=["POST"])])
    app.state.receiver = receiver
    return app


class _Receiver:
    def __init__(
        self,
        merchants: dict[str, ReceiverMerchant],
        log: NotificationLog,
        hook: Hook | None,
        clock: Callable[[], datetime],
        max_body: int,
    ):
        self.merchants = merchants
        self.log = log
        self.hook = hook
        self.clock = clock
        self.max_body = max_body

    async def notify(self, request: Request) -> Response:
        received_at = self.clock()
        mchid = request.path_params["mchid"]
        headers = _signed_headers(request.scope["headers"])
        body = await self._body(request)
        merchant = self.merchants.get(mchid)
        if merchant is None:
            shown = mchid[:64]
            entry = LogEntry(
                received_at,
                shown,
                "rejected",
                f"UnknownMerchantError: no receiver configured for mchid {shown!r}",
                _claimed_id(body),
                headers,
                body,
                404,
            )
            return _response(await anyio.to_thread.run_sync(self._refuse, entry, "UnknownMerchantError", True))
        if body is None:
            entry = LogEntry(
                received_at,
                mchid,
                "rejected",
                f"PayloadTooLargeError: body exceeds {self.max_body} bytes",
                None,
                headers,
                None,
                413,
            )
            return _response(await anyio.to_thread.run_sync(self._refuse, entry, "PayloadTooLargeError", False))
        reply, note = await anyio.to_thread.run_sync(self._handle, mchid, merchant, received_at, headers, body)
        task = BackgroundTask(self._run_hook, mchid, note) if note is not None and self.hook else None
        return _response(reply, task)

    async def _body(self, request: Request) -> bytes | None:
        """The raw body, or ``None`` when it is longer than ``max_body``."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _handle(
        self, mchid: str, merchant: ReceiverMerchant, received_at: datetime, headers: dict[str, str], body: bytes
    ) -> tuple[Reply, CombinePaymentNotification | None]:
        """Verify, decrypt, log; runs in a worker thread (RSA, AES and fsync stay off the event loop)."""
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
        except Exception as exc:  # every failure is answered FAIL and logged; the status says which kind
            status = _failure_status(exc)
            if not isinstance(exc, WxPayError):
                logger.exception("notification for %s: unexpected error, answering 500", mchid)
            elif status >= 500:
                logger.error("notification for %s could not be processed: %s: %s", mchid, type(exc).__name__, exc)
            entry = LogEntry(
                received_at,
                mchid,
                "rejected",
                f"{type(exc).__name__}: {exc}",
                _claimed_id(body),
                headers,
                body,
                status,
            )
            return self._refuse(entry, type(exc).__name__, False), None
        entry = LogEntry(received_at, mchid, "accepted", None, note.id, headers, body, 204)
        try:
            entry = self.log.accept(entry)
        except Exception:  # the log is the point: without the line, WeChat Pay must try again
            logger.exception("notification %s for %s: log write failed, answering 500", note.id, mchid)
            return failure_reply("notification log unavailable", 500), None
        logger.info("notification %s for %s: %s", note.id, mchid, entry.outcome)
        return success_reply(204), note if entry.outcome == "accepted" else None

    def _refuse(self, entry: LogEntry, message: str, unrouted: bool) -> Reply:
        try:
            self.log.append(entry, unrouted=unrouted)
        except Exception:
            logger.exception("rejected notification for %s: log write failed, answering 500", entry.mchid)
            return failure_reply("notification log unavailable", 500)
        logger.warning("notification for %s rejected (%d): %s", entry.mchid, entry.reply_status, entry.reason)
        return failure_reply(message, entry.reply_status)

    async def _run_hook(self, mchid: str, note: CombinePaymentNotification) -> None:
        try:
            if inspect.iscoroutinefunction(self.hook):
                await self.hook(note)
            else:
                await anyio.to_thread.run_sync(self.hook, note)
        except Exception:
            logger.exception("notification hook failed for %s (mchid %s); the notification is logged", note.id, mchid)


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


def _claimed_id(body: bytes | None) -> str | None:
    """The ``id`` an unverified body claims, for the evidence only."""
    if not body:
        return None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


def _response(reply: Reply, background: BackgroundTask | None = None) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers, background=background)
