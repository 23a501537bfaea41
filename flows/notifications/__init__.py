"""Payment notifications: received, logged durably, re-verified into the warehouse.

The story in modules: ``receiver`` (the ``notify_url`` ASGI app: verify, decrypt, log, then answer), with
``guards`` (peer, per-peer refusal limit, free disk, counters), ``limits`` (its bounds) and ``rejected``
(bounded records of refused requests in their own capped stream), served by ``server`` through
``connections`` (uvicorn's HTTP/1.1 with head timeouts and a connection cap); ``log`` (the durable
notification log: one fsynced line per callback answered), ``entry`` (one line of it) and ``seen`` (the
ids of its last days); and the re-verification: ``verification`` (:func:`verify_log`, its parent side
and the log scan), ``checker`` (the per-line check in worker processes), ``lines`` (a log line and its
decrypted payload read back), ``rows`` (the Arrow rows and their flush), ``keys`` (:class:`MerchantKeys`).

Re-verify the notification log into the warehouse: every line verified once, by its content hash.

:func:`verify_log` reads the day files of a :class:`~flows.notifications.log.NotificationLog` (every
merchant directory, ``_rejected`` and the ``_unrouted`` of format 1) and, for each line, records where it is
(``raw.notification_lines``); each distinct line content (SHA-256 of the line's bytes without
its ``\\n``) is re-verified once and the result kept (``raw.notification_checks``, plus
``raw.notification_sub_orders`` for the sub orders of a verified notification). Tables:
``sql/migrations/050_notifications.sql``.

Re-verifying a line is what the receiver did, judged again from the line alone:
:func:`wxpay.notify.open_notification` (signature, with the ±300 s window evaluated at the line's
``received_at``; algorithm; AEAD decryption with the merchant's APIv3 key), the receiver's
combine_mchid check, then a strict reading of the decrypted payload (amounts must be JSON
integers of fen, times RFC 3339, ...). A line that fails is ``verified = false`` with the
exception class and message: a finding, never a drop. So is a line of a merchant we hold no
keys for (``UnknownMerchantError``), a record of a refused request, whose body was not kept
(``BodyNotKept``, with its length, SHA-256 and the receiver's reason; a format-1 413 line without its body
is ``PayloadTooLargeError``), and a line the log reader cannot read (an ``unreadable`` row in
``raw.notification_lines`` with a NULL hash; those are re-derived on every run).

Incremental: a line content whose hash is in ``raw.notification_checks`` is not verified again,
and a line occurrence already in ``raw.notification_lines`` (same file, line number and hash) is
not recorded again, so a re-run over the same files writes nothing and a line appended later is
the only one verified next time. ``recheck_failed=True`` verifies failed contents again (after
adding a key that was missing, say).

Speed (``bench/notifications.py``): the parent maps each file, hashes its lines and asks DuckDB
which are new (one query per 65,536 lines); worker processes (``workers``, default 2, from a
forkserver; 1 runs in-process) take batches of 2,048 line positions, read the bytes themselves,
check them against the parent's hashes (:class:`LogChangedError` otherwise), verify, decrypt and
read the payloads with verifiers built once per process from picklable :class:`MerchantKeys`,
and return Arrow batches; a writer thread inserts them in bulk, one transaction per flush,
while the parent keeps the workers fed. Per line, the time goes to
:func:`~wxpay.notify.open_notification` (about two thirds: the RSA verification itself about a
third), JSON, the strict payload reading and DuckDB's compressed writes; the benchmark prints it.
"""

from __future__ import annotations

from flows.notifications.checker import LogChangedError
from flows.notifications.entry import LogEntry
from flows.notifications.keys import MerchantKeys
from flows.notifications.limits import ReceiverLimits
from flows.notifications.log import REJECTED, UNROUTED, NotificationLog
from flows.notifications.receiver import NOTIFY_PATH, ReceiverMerchant, create_app
from flows.notifications.rows import CHECKER_VERSION
from flows.notifications.server import ReceiverServer, serve_receiver
from flows.notifications.verification import VerifyStats, verify_log

__all__ = [
    "CHECKER_VERSION",
    "NOTIFY_PATH",
    "REJECTED",
    "UNROUTED",
    "LogChangedError",
    "LogEntry",
    "MerchantKeys",
    "NotificationLog",
    "ReceiverLimits",
    "ReceiverMerchant",
    "ReceiverServer",
    "VerifyStats",
    "create_app",
    "serve_receiver",
    "verify_log",
]
