"""Alerts to finance when money does not match, and to whoever watches the run when it could not do its job.

An alert names the merchant(s) and day, the count and yuan sums per exception class, the
largest items (out_trade_no, both amounts) and where to look next. It counts only what is new — the day's
exceptions nobody has resolved by hand (:mod:`flows.recon.workbench`) — and what this run reopened (a manual
resolution the data now contradicts, on any day); the rest of the open backlog is one separate line (how
many, the money at stake, the oldest age, how many are past their SLA), so the same open items are not
repeated as news every night. It is sent when the day's
open exceptions exceed the materiality thresholds (count or amount) and whenever the run had a
problem (a late bill, credentials WeChat Pay refused, an integrity failure, WeChat Pay unavailable,
a storage fault: :mod:`flows.outcome`); its title then leads with that problem, because the day's
figures are incomplete. A clean day sends nothing unless a daily digest is configured.

Severity is apprise's notify type: ``failure`` when the run failed at something (integrity,
configuration, WeChat Pay unavailable, storage), ``warning`` for money that does not match or a
late bill, ``info`` for the digest. Alerts are built from the marts only, which hold no openid, and
they never contain a secret. apprise (it ships with Prefect) understands WeCom group robots
(``wecombot://<key>``), DingTalk (``dingtalk://<token>/``), Feishu (``feishu://<token>``), e-mail
(``mailtos://...``), Slack and plain JSON webhooks (``json://host/path``); settings refuse a URL it
cannot parse at start (:class:`flows.settings.AlertConfig`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

import duckdb

from flows.money import fmt_yuan
from flows.outcome import ADVICE, SEVERITY, Kind, Problem
from flows.settings import AlertConfig
from flows.warehouse import current_snapshot, is_lake

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


@dataclass(frozen=True)
class Backlog:
    """The open backlog: every open exception nobody has resolved yet, this day's included
    (``marts.mart_exception_backlog``)."""

    items: int = 0
    exposure_fen: int = 0
    oldest_age_days: int = 0
    overdue: int = 0


@dataclass
class DayReport:
    """What the marts say about one reconciled day (the as-of day of a run)."""

    as_of: date
    merchants: Sequence[str]
    classes: list[ClassLine] = field(default_factory=list)
    top: list[Item] = field(default_factory=list)
    matched: int = 0
    pending: int = 0
    reopened: int = 0  # of the exceptions counted, how many this run reopened
    backlog: Backlog = field(default_factory=Backlog)
    snapshot: int | None = None  # the DuckLake snapshot read (what this alert saw); None on a DuckDB file

    @property
    def exceptions(self) -> int:
        return sum(c.items for c in self.classes)

    @property
    def exposure_fen(self) -> int:
        return sum(c.exposure_fen for c in self.classes)


def day_report(con: duckdb.DuckDBPyConnection, as_of: date, merchants: Iterable[str], *, top: int = 5) -> DayReport:
    """New exceptions of ``as_of`` (not resolved by hand) and those the newest run reopened, per merchant and
    class, and the largest of them (pending kept apart); the whole open backlog as one figure."""
    ids = sorted(merchants)
    report = DayReport(as_of, ids)
    scope = [*ids, "_unrouted"]
    # the day's items not resolved by hand, and the items of other days that the newest run reopened
    counted = (
        "select exception_id, mchid, class, state, item_kind, item_key, notification_id, bill_fen, local_fen,"
        " notified_fen, diff_fen, exposure_fen from marts.mart_recon_items"
        " where recon_date = $day and list_contains($scope, mchid) and work_state <> 'resolved'"
        " union all by name select exception_id, mchid, class, state, item_kind, item_key, notification_id, bill_fen,"
        " local_fen, notified_fen, diff_fen, exposure_fen from marts.mart_exceptions"
        " where recon_date <> $day and list_contains($scope, mchid) and work_state <> 'resolved'"
        " and exception_id in (select exception_id from marts.mart_exception_changes"
        " where is_latest and event = 'reopened')"
    )
    args = {"day": as_of, "scope": scope}
    rows = con.execute(
        f"select mchid, class, state, count(*), sum(exposure_fen) from ({counted}) group by all order by all", args
    ).fetchall()
    report.reopened = con.execute(
        f"select count(*) from ({counted}) where exception_id in (select exception_id"
        " from marts.mart_exception_changes where is_latest and event = 'reopened')",
        args,
    ).fetchone()[0]
    items, exposure, oldest, overdue = con.execute(
        "select coalesce(sum(items), 0), coalesce(sum(exposure_fen), 0), coalesce(max(oldest_age_days), 0),"
        " coalesce(sum(overdue_items), 0) from marts.mart_exception_backlog where list_contains($scope, mchid)",
        {"scope": scope},
    ).fetchone()
    report.backlog = Backlog(int(items), int(exposure), int(oldest), int(overdue))
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
            f" exposure_fen from ({counted}) where state = 'open' order by exposure_fen desc, mchid, item_key"
            " limit $top",
            {**args, "top": top},
        ).fetchall()
    ]
    if is_lake(con):
        report.snapshot = current_snapshot(con)
    return report


FAILURE, WARNING, INFO = "failure", "warning", "info"
"""Alert severities: apprise's notify types."""


@dataclass(frozen=True)
class Alert:
    title: str
    body: str
    reasons: tuple[str, ...]
    severity: str = WARNING


class AlertNotDelivered(RuntimeError):
    """A configured alert route refused the alert or could not be reached (the URL is never shown)."""


def compose(report: DayReport, config: AlertConfig, *, problems: Sequence[Problem] = ()) -> Alert | None:
    """The alert for a day, or ``None`` when nothing is worth sending."""
    reasons = []
    if report.exceptions > config.max_count:
        reasons.append(f"{report.exceptions} exceptions (threshold {config.max_count})")
    if report.exposure_fen > config.max_amount_fen:
        reasons.append(f"{fmt_yuan(report.exposure_fen)} at stake (threshold {fmt_yuan(config.max_amount_fen)})")
    kinds = [k for k in SEVERITY if any(p.kind is k for p in problems)]
    reasons += [f"{k.value} ({len([p for p in problems if p.kind is k])})" for k in kinds]
    if not reasons and not config.daily_digest:
        return None
    figures = f"{report.exceptions} exceptions, {fmt_yuan(report.exposure_fen)}"
    if kinds:
        headline = "; ".join(_headline(k, [p for p in problems if p.kind is k]) for k in kinds)
        title = f"{headline} — WeChat Pay reconciliation {report.as_of} is incomplete: {figures} so far"
    elif reasons:
        title = f"WeChat Pay reconciliation {report.as_of}: {figures}"
    else:
        title = f"WeChat Pay reconciliation {report.as_of}: all matched"
    severity = FAILURE if any(k not in (Kind.LATE, Kind.ALERT) for k in kinds) else WARNING if reasons else INFO
    lines = [
        f"Day {report.as_of} (Beijing), merchants {', '.join(report.merchants)}.",
        f"Matched items: {report.matched}; pending (waiting for the next bill): {report.pending}.",
        f"New or reopened exceptions: {report.exceptions} ({report.reopened} reopened).",
        backlog_line(report.backlog),
    ]
    if reasons:
        lines.append("Why this alert: " + "; ".join(reasons) + ".")
    for kind in kinds:
        lines.append("")
        lines.append(f"{kind.value.upper()}: {ADVICE[kind]}.")
        lines += [f"- {p.text}" for p in problems if p.kind is kind]
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
    if report.snapshot is not None:
        lines.append(
            f"What this alert saw: DuckLake snapshot {report.snapshot}"
            f" (wxrecon report --date {report.as_of} --as-of {report.snapshot})."
        )
    return Alert(title, "\n".join(lines), tuple(reasons), severity)


def backlog_line(backlog: Backlog) -> str:
    """The alert's line about the open backlog (its age, apart from the day's count)."""
    if not backlog.items:
        return "Open backlog: none."
    return (
        f"Open backlog: {backlog.items} exception(s), {fmt_yuan(backlog.exposure_fen)} at stake, oldest"
        f" {backlog.oldest_age_days} day(s), {backlog.overdue} past their SLA."
    )


def _headline(kind: Kind, problems: Sequence[Problem]) -> str:
    merchants = sorted({p.mchid for p in problems if p.mchid})
    what = {
        Kind.LATE: "bill not ready",
        Kind.CONFIGURATION: "credentials or settings refused",
        Kind.INTEGRITY: "integrity check failed",
        Kind.UNAVAILABLE: "WeChat Pay unavailable",
        Kind.STORAGE: "storage failed",
        Kind.ALERT: "alert not delivered",
        Kind.FAILED: "the run failed",
    }[kind]
    return f"{kind.value.upper()}: {what}" + (f" ({', '.join(merchants)})" if merchants else "")


def route_name(url: str) -> str:
    """How logs and errors name an alert route: its scheme only (the rest often carries a token)."""
    return url.split("://", 1)[0] if "://" in url else "?"


def send(alert: Alert, config: AlertConfig) -> list[str]:
    """Deliver through every configured URL, with the alert's severity; returns the routes it went to
    (``#1 wecombot``...). Raises :class:`AlertNotDelivered` naming the routes that failed (never their URL);
    without any URL configured, nothing is sent and ``[]`` is returned."""
    if not config.urls:
        logger.warning("alert not sent: no alert URLs configured (%s)", alert.title)
        return []
    import apprise  # ships with Prefect; imported here because it is slow to import

    delivered, failed = [], []
    for index, url in enumerate(config.urls, start=1):
        name = f"#{index} {route_name(url.get_secret_value())}"
        channel = apprise.Apprise()
        if not channel.add(url.get_secret_value()):
            failed.append(f"{name} (not a URL apprise understands)")
        elif channel.notify(title=alert.title, body=alert.body, notify_type=apprise.NotifyType(alert.severity)):
            delivered.append(name)
        else:
            failed.append(f"{name} (did not accept it)")
    if failed:
        raise AlertNotDelivered(f"alert route {', '.join(failed)}; delivered to {', '.join(delivered) or 'no route'}")
    return delivered
