"""Alerts to finance when money does not match, through apprise URLs.

An alert names the merchant(s) and day, the count and yuan sums per exception class, the
largest items (out_trade_no, both amounts) and where to look next. It is sent when the day's
open exceptions exceed the materiality thresholds (count or amount), on integrity failures
(hash or summary mismatch, failed data checks) and when a bill is late; a clean day sends
nothing unless a daily digest is configured. Alerts are built from the marts only, which hold
no openid, and they never contain a secret. apprise (it ships with Prefect) understands WeCom
(``wxwork://``), DingTalk (``dingtalk://``), Feishu (``feishu://``), Slack, e-mail and plain JSON
webhooks (``json://host/path``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

import duckdb

from flows.money import fmt_yuan
from flows.settings import AlertConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassLine:
    mchid: str
    cls: str
    items: int
    exposure_fen: int  # the money at stake (marts.mart_recon_items.exposure_fen, summed)


@dataclass(frozen=True)
class Item:
    mchid: str
    cls: str
    key: str
    bill_fen: int | None
    local_fen: int | None
    notified_fen: int | None
    diff_fen: int | None
    exposure_fen: int


@dataclass
class DayReport:
    """What the marts say about one reconciled day (the as-of day of a run)."""

    as_of: date
    merchants: Sequence[str]
    classes: list[ClassLine] = field(default_factory=list)
    top: list[Item] = field(default_factory=list)
    matched: int = 0
    pending: int = 0

    @property
    def exceptions(self) -> int:
        return sum(c.items for c in self.classes)

    @property
    def exposure_fen(self) -> int:
        return sum(c.exposure_fen for c in self.classes)


def day_report(con: duckdb.DuckDBPyConnection, as_of: date, merchants: Iterable[str], *, top: int = 5) -> DayReport:
    """Open exceptions of ``as_of`` per merchant and class, and the largest of them (pending kept apart)."""
    ids = sorted(merchants)
    report = DayReport(as_of, ids)
    rows = con.execute(
        "select mchid, class, state, count(*), sum(exposure_fen) from marts.mart_recon_items"
        " where recon_date = ? and list_contains(?, mchid) group by all order by all",
        [as_of, [*ids, "_unrouted"]],
    ).fetchall()
    report.matched = con.execute(
        "select coalesce(sum(items), 0) from marts.mart_daily_summary where recon_date = ? and class = 'matched'"
        " and list_contains(?, mchid)",
        [as_of, ids],
    ).fetchone()[0]
    for mchid, cls, state, count, exposure in rows:
        if state == "pending":
            report.pending += count
        else:
            report.classes.append(ClassLine(mchid, cls, count, int(exposure or 0)))
    report.top = [
        Item(*row)
        for row in con.execute(
            "select mchid, class, case when item_kind = 'notification_line' then coalesce(notification_id, item_key)"
            " else item_key end, bill_fen, local_fen, notified_fen, diff_fen,"
            " exposure_fen from marts.mart_recon_items where recon_date = ? and list_contains(?, mchid)"
            " and state = 'open' order by exposure_fen desc, mchid, item_key limit ?",
            [as_of, [*ids, "_unrouted"], top],
        ).fetchall()
    ]
    return report


@dataclass(frozen=True)
class Alert:
    title: str
    body: str
    reasons: tuple[str, ...]


def compose(
    report: DayReport,
    config: AlertConfig,
    *,
    integrity: Sequence[str] = (),
    late: Sequence[str] = (),
) -> Alert | None:
    """The alert for a day, or ``None`` when nothing is worth sending."""
    reasons = []
    if report.exceptions > config.max_count:
        reasons.append(f"{report.exceptions} exceptions (threshold {config.max_count})")
    if report.exposure_fen > config.max_amount_fen:
        reasons.append(f"{fmt_yuan(report.exposure_fen)} at stake (threshold {fmt_yuan(config.max_amount_fen)})")
    if integrity:
        reasons.append("integrity failure")
    if late:
        reasons.append("bill late")
    if not reasons and not config.daily_digest:
        return None
    merchants = ", ".join(report.merchants)
    if reasons:
        title = (
            f"WeChat Pay reconciliation {report.as_of}: {report.exceptions} exceptions, {fmt_yuan(report.exposure_fen)}"
        )
    else:
        title = f"WeChat Pay reconciliation {report.as_of}: all matched"
    lines = [
        f"Day {report.as_of} (Beijing), merchants {merchants}.",
        f"Matched items: {report.matched}; pending (waiting for the next bill): {report.pending}.",
    ]
    if reasons:
        lines.append("Why this alert: " + "; ".join(reasons) + ".")
    for problem in integrity:
        lines.append(f"INTEGRITY: {problem}")
    for problem in late:
        lines.append(f"LATE: {problem}")
    if report.classes:
        lines.append("")
        lines.append("Exceptions by merchant and class:")
        for c in report.classes:
            lines.append(f"- {c.mchid} {c.cls}: {c.items} item(s), {fmt_yuan(c.exposure_fen)}")
    if report.top:
        lines.append("")
        lines.append("Largest items:")
        for item in report.top:
            amounts = [
                f"{label} {fmt_yuan(value)}"
                for label, value in (
                    ("bill", item.bill_fen),
                    ("local", item.local_fen),
                    ("notified", item.notified_fen),
                )
                if value is not None
            ]
            diff = f", difference {fmt_yuan(item.diff_fen)}" if item.diff_fen is not None else ""
            lines.append(f"- {item.mchid} {item.key} {item.cls}: {', '.join(amounts) or 'no amount'}{diff}")
    lines.append("")
    lines.append(f"Details: {config.notebook_hint}")
    return Alert(title, "\n".join(lines), tuple(reasons))


def send(alert: Alert, config: AlertConfig) -> bool:
    """Deliver through every configured URL; ``True`` when all accepted it. URLs are never logged."""
    if not config.urls:
        logger.warning("alert not sent: no alert URLs configured (%s)", alert.title)
        return False
    import apprise  # ships with Prefect; imported here because it is slow to import

    ok = True
    for index, url in enumerate(config.urls):
        channel = apprise.Apprise()
        if not channel.add(url.get_secret_value()):
            logger.error("alert URL #%d is not a URL apprise understands", index + 1)
            ok = False
            continue
        if not channel.notify(title=alert.title, body=alert.body):
            logger.error("alert URL #%d did not accept the alert", index + 1)
            ok = False
    return ok
