"""What the finance notebooks use: the marts (read-only, one query per call), evidence files, money text.

The notebooks in ``notebooks/`` read the warehouse only through this module:

* :class:`Warehouse` opens the DuckDB file **read-only** for one query on one of the documented
  marts (:data:`MARTS`) and closes it before returning, so a notebook left open never holds the
  file. While the nightly run writes, DuckDB refuses the read-only open (a conflicting lock); the
  call retries briefly, then raises :class:`WarehouseBusy` ("try again in a moment").
* Money comes back exact: ``*_fen`` / ``*_millifen`` columns are ``Int64`` (nullable int64) and
  :func:`yuan` turns fen into a :class:`~decimal.Decimal`; nothing goes through ``float``
  except chart geometry (:func:`yuan_axis` labels fen ticks in yuan).
* Payer identifiers (openid and the like) are masked in every frame, bill line and log line
  this module returns (:func:`mask_text`, :func:`mask_frame`).
* Evidence: :func:`read_bill_line` reads one line of an archived bill (``flows/archive.py``
  layout), :func:`read_notification_line` the non-secret envelope of one notification-log line
  (``flows/notifylog.py``); the verification result comes from the marts, never from decrypting
  (notebooks do not hold the APIv3 key).
* :func:`explain` says what each exception class means, in Chinese and English.

Relative paths (the defaults ``var/warehouse.duckdb``, ``var/archive``, ``var/notifications``,
``build/notebook-charts``) are relative to the project root, wherever the notebook runs.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip

from flows.recon import CLASSES

__all__ = [
    "DEFAULT_ARCHIVE",
    "DEFAULT_CHARTS",
    "DEFAULT_NOTIFICATIONS",
    "DEFAULT_WAREHOUSE",
    "EXPLANATIONS",
    "MARTS",
    "PROJECT_ROOT",
    "BillLine",
    "EvidenceNotFound",
    "Explanation",
    "FinanceError",
    "MartNotAllowed",
    "MartNotBuilt",
    "NotificationLine",
    "Warehouse",
    "WarehouseBusy",
    "WarehouseMissing",
    "amount_involved",
    "class_label",
    "explain",
    "fmt_fee",
    "fmt_rate",
    "fmt_yuan",
    "for_display",
    "mask_frame",
    "mask_id",
    "mask_text",
    "parse_rate",
    "project_path",
    "read_bill_line",
    "read_notification_line",
    "save_chart",
    "use_cjk_font",
    "verification_status",
    "yuan",
    "yuan_axis",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WAREHOUSE = "var/warehouse.duckdb"
DEFAULT_ARCHIVE = "var/archive"
DEFAULT_NOTIFICATIONS = "var/notifications"
DEFAULT_CHARTS = "build/notebook-charts"
BEIJING = "Asia/Shanghai"

# mart -> (its date column, its merchant column, its class expression); the only relations notebooks read
MARTS: dict[str, tuple[str, str | None, str | None]] = {
    "mart_recon_items": ("recon_date", "mchid", "class"),
    "mart_daily_summary": ("recon_date", "mchid", "class"),
    "mart_control_totals": ("bill_date", "mchid", None),
    "mart_exceptions": ("recon_date", "mchid", "class"),
    "mart_exception_changes": ("recon_date", "mchid", "coalesce(to_class, from_class)"),
    "mart_runs": ("as_of_date", None, None),
    "mart_fund_flow_daily": ("bill_date", "mchid", None),
    "mart_notifications": ("received_date", "mchid", None),
}
_COLUMN = re.compile(r"^[a-z][a-z0-9_]*$")
_MONEY = re.compile(r"(_fen|_millifen)$")


# --- errors ---------------------------------------------------------------------------------


class FinanceError(Exception):
    """Root of what this module raises. In a notebook it shows as one line, without a stack trace."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook: finance staff see the message only
        return [f"{type(self).__name__}: {self}"]


class WarehouseBusy(FinanceError):
    """The nightly run holds the warehouse for writing."""


class WarehouseMissing(FinanceError):
    """No warehouse file at the given path."""


class MartNotAllowed(FinanceError, ValueError):
    """A relation, column or class that is not part of the documented marts."""


class MartNotBuilt(FinanceError):
    """The mart is documented but this warehouse has not built it yet (it appears with the next run)."""


class EvidenceNotFound(FinanceError):
    """An archive file or log line that is not where the warehouse says it is."""


# --- paths ----------------------------------------------------------------------------------


def project_path(path: str | Path) -> Path:
    """``path`` as given if absolute, else relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def _inside(root: Path, relative: str | Path) -> Path:
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise EvidenceNotFound(f"{relative} is outside {root}")
    if not target.is_file():
        raise EvidenceNotFound(f"no file {target}")
    return target


# --- the warehouse --------------------------------------------------------------------------


def _dates(start: date | str | None, end: date | str | None) -> tuple[date | None, date | None]:
    return tuple(d if d is None or isinstance(d, date) else date.fromisoformat(str(d)) for d in (start, end))


def _strings(values: str | Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [values] if isinstance(values, str) else [str(v) for v in values]


@dataclass(frozen=True)
class Warehouse:
    """The warehouse file, opened read-only for each call and closed before it returns.

    ``busy_retries`` × ``busy_wait`` seconds is how long a call waits for the nightly run's write
    lock before it raises :class:`WarehouseBusy`.
    """

    path: str | Path = DEFAULT_WAREHOUSE
    busy_retries: int = 6
    busy_wait: float = 0.5

    @property
    def file(self) -> Path:
        return project_path(self.path)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if not self.file.is_file():
            raise WarehouseMissing(f"no warehouse at {self.file}: run the nightly reconciliation (or the demo) first")
        for attempt in range(self.busy_retries + 1):
            try:
                return duckdb.connect(str(self.file), read_only=True, config={"threads": 2})
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if attempt < self.busy_retries:
                    time.sleep(self.busy_wait)
        raise WarehouseBusy(f"the nightly run is writing {self.file.name}; try again in a moment") from None

    def mart(
        self,
        name: str,
        *,
        start: date | str | None = None,
        end: date | str | None = None,
        merchants: str | Iterable[str] | None = None,
        classes: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        order_by: Sequence[str] = (),
    ) -> pd.DataFrame:
        """Rows of one mart: dates ``start``..``end`` (inclusive) of its date column, ``merchants``,
        ``classes`` (exception classes), and ``where`` (column -> value, or a list of values)."""
        if name not in MARTS:
            raise MartNotAllowed(f"{name!r} is not one of the marts notebooks may read: {sorted(MARTS)}")
        date_col, merchant_col, class_col = MARTS[name]
        conditions: list[str] = []
        params: list[Any] = []
        first, last = _dates(start, end)
        if first:
            conditions.append(f"{date_col} >= ?")
            params.append(first)
        if last:
            conditions.append(f"{date_col} <= ?")
            params.append(last)
        wanted = _strings(merchants)
        if wanted is not None:
            conditions.append(f"list_contains(?, {merchant_col})" if merchant_col else "list_has_any(?, merchants)")
            params.append(wanted)
        kinds = _strings(classes)
        if kinds is not None:
            unknown = sorted(set(kinds) - set(CLASSES))
            if unknown or not class_col:
                raise MartNotAllowed(f"{name} cannot be filtered by class {unknown or kinds}; classes: {CLASSES}")
            conditions.append(f"list_contains(?, {class_col})")
            params.append(kinds)
        for column, value in (where or {}).items():
            column = _column(column)
            if isinstance(value, (list, tuple, set, frozenset)):
                conditions.append(f"list_contains(?, {column})")
                params.append([_plain(v) for v in value])
            elif _plain(value) is None:
                conditions.append(f"{column} is null")
            else:
                conditions.append(f"{column} = ?")
                params.append(_plain(value))
        sql = f"select * from marts.{name}"  # noqa: S608 - names from MARTS / _column only; values bound
        if conditions:
            sql += " where " + " and ".join(conditions)
        if order_by:
            sql += " order by " + ", ".join(
                _column(c.removesuffix(" desc")) + (" desc" if c.endswith(" desc") else "") for c in order_by
            )
        return _frame(self._query(name, sql, params))

    def _query(self, name: str, sql: str, params: list[Any]) -> pa.Table:
        con = self._connect()
        try:
            return con.sql(sql, params=params).to_arrow_table()
        except duckdb.CatalogException:
            raise MartNotBuilt(f"this warehouse has no marts.{name} yet: it is built by the next nightly run") from None
        except duckdb.BinderException as exc:
            raise MartNotAllowed(f"{name}: {str(exc).splitlines()[0]}") from None
        finally:
            con.close()

    def period(
        self, start: date | str | None = None, end: date | str | None = None, *, days: int = 7
    ) -> tuple[date, date]:
        """The days to show: ``end`` defaults to the newest reconciled bill day, ``start`` to ``days`` days up to it."""
        first, last = _dates(start, end)
        if last is None:
            runs = self.runs()
            if runs.empty:
                raise FinanceError("the warehouse has no reconciliation run yet")
            last = max(runs["as_of_date"])
        first = first or last - timedelta(days=days - 1)
        if first > last:
            raise ValueError(f"start_date {first} is after end_date {last}")
        return first, last

    # one method per mart, for the notebooks
    def recon_items(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_recon_items", **kw)

    def daily_summary(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_daily_summary", **kw)

    def control_totals(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_control_totals", **kw)

    def exceptions(self, *, states: str | Iterable[str] | None = ("open", "pending"), **kw: Any) -> pd.DataFrame:
        where = dict(kw.pop("where", None) or {})
        if states is not None:
            where["state"] = _strings(states)
        return self.mart("mart_exceptions", where=where, **kw)

    def exception_changes(self, *, latest_run: bool = True, **kw: Any) -> pd.DataFrame:
        where = dict(kw.pop("where", None) or {})
        if latest_run:
            where["is_latest"] = True
        return self.mart("mart_exception_changes", where=where, **kw)

    def runs(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_runs", order_by=kw.pop("order_by", ("started_at",)), **kw)

    def fund_flow_daily(self, **kw: Any) -> pd.DataFrame:
        return self.mart("mart_fund_flow_daily", **kw)

    def notifications(self, **kw: Any) -> pd.DataFrame:
        """Notification-log lines with our own verification result and the sub orders they report."""
        return self.mart("mart_notifications", order_by=kw.pop("order_by", ("received_at", "line_no")), **kw)

    def exception(self, key: str) -> pd.Series:
        """One exception by its ``exception_id`` or its ``item_key`` (e.g. ``CB0002S1``)."""
        found = self.mart("mart_exceptions", where={"item_key": key})
        if found.empty:
            found = self.mart("mart_exceptions", where={"exception_id": key})
        if len(found) != 1:
            raise EvidenceNotFound(
                f"{len(found)} exceptions match {key!r}"
                + (f": use one of the exception_ids {list(found['exception_id'])}" if len(found) else "")
            )
        return found.iloc[0]


def _plain(value: Any) -> Any:
    """numpy / pandas scalars (a value taken from a frame) -> Python values DuckDB binds."""
    if value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _column(name: str) -> str:
    if not _COLUMN.match(name):
        raise MartNotAllowed(f"not a column name: {name!r}")
    return name


def _frame(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas without float: integers (sums come as DECIMAL(38,0)) -> Int64; times in Beijing."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_decimal(kind) and kind.scale == 0:
            column = pc.cast(column, pa.int64())  # checked: raises on overflow, never rounds
        columns[name] = column
    frame = pa.table(columns).to_pandas(
        types_mapper=lambda t: pd.Int64Dtype() if pa.types.is_integer(t) else None,
    )
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype):
            frame[name] = frame[name].dt.tz_convert(BEIJING)
    return mask_frame(frame)


# --- money ----------------------------------------------------------------------------------


def _integer(value: Any, unit: str) -> int | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (bool, float)):
        raise TypeError(f"{unit} must be an integer, not {type(value).__name__} ({value!r})")
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"{unit} must be whole, got {value}")
        return int(value)
    return int(value)  # int, numpy integer


def yuan(fen: Any) -> Decimal | None:
    """Integer fen -> exact yuan (``9900`` -> ``Decimal('99.00')``); ``None``/NA -> ``None``; floats refused."""
    whole = _integer(fen, "fen")
    return None if whole is None else Decimal(whole).scaleb(-2)


def fmt_yuan(fen: Any, *, signed: bool = False, empty: str = "") -> str:
    """``123456`` -> ``¥1,234.56``; ``-100`` -> ``-¥1.00``; ``signed`` puts ``+`` on positives."""
    amount = yuan(fen)
    if amount is None:
        return empty
    sign = "-" if amount < 0 else ("+" if signed and amount > 0 else "")
    return f"{sign}¥{abs(amount):,.2f}"


def fmt_fee(millifen: Any, *, empty: str = "") -> str:
    """Milli-fen (fees) -> yuan with 2 to 5 decimals: ``99000`` -> ``¥0.99``, ``17998`` -> ``¥0.17998``."""
    whole = _integer(millifen, "millifen")
    if whole is None:
        return empty
    amount = Decimal(abs(whole)).scaleb(-5)
    text = f"{amount:,.5f}"
    text = text[:-3] + text[-3:].rstrip("0")
    return f"{'-' if whole < 0 else ''}¥{text}"


def parse_rate(rate: str | Decimal) -> Decimal:
    """A fee rate as a percentage: ``"0.60%"`` or ``Decimal("0.60")`` -> ``Decimal("0.60")``."""
    if isinstance(rate, Decimal):
        return rate
    if not isinstance(rate, str) or not re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*%\s*", rate):
        raise ValueError(f"a fee rate is written like '0.60%', got {rate!r}")
    return Decimal(rate.strip().removesuffix("%").strip())


def fmt_rate(percent: Decimal | None, places: int = 4) -> str:
    """``Decimal("0.6")`` -> ``0.6000%``."""
    return "" if percent is None else f"{percent:.{places}f}%"


def for_display(frame: pd.DataFrame, *, keep: Iterable[str] = ()) -> pd.DataFrame:
    """A copy for people: ``x_fen`` -> ``x_yuan`` text (¥1,234.56), ``x_millifen`` -> ``x_yuan`` (fee text)."""
    shown = frame.copy()
    keep = set(keep)
    for name in list(shown.columns):
        if name in keep or not _MONEY.search(name):
            continue
        fmt = fmt_fee if name.endswith("_millifen") else fmt_yuan
        shown[name] = [fmt(v) for v in shown[name]]
        shown = shown.rename(columns={name: _MONEY.sub("_yuan", name)})
    return shown


# --- masking --------------------------------------------------------------------------------

PAYER_KEYS = frozenset({"openid", "sub_openid", "unionid", "payer", "payer_openid", "combine_payer_info", "用户标识"})
"""Names of fields and columns that hold payer identifiers: masked whole."""
_OPENID = re.compile(r"(?<![A-Za-z0-9_-])o[A-Za-z0-9_-]{27}(?![A-Za-z0-9_-])")


def mask_id(value: Any) -> Any:
    """``oLXjjlAFbVV6q9rXxtNDFyuzX9k1`` -> ``oLX***9k1``; short values -> ``***``; empty stays empty."""
    if value is None or value is pd.NA or value == "":
        return value
    text = str(value)
    return f"{text[:3]}***{text[-3:]}" if len(text) >= 12 else "***"


def mask_text(text: Any) -> Any:
    """Mask every openid-shaped token (``o`` + 27 URL-safe characters) inside a string."""
    return _OPENID.sub(lambda m: mask_id(m.group(0)), text) if isinstance(text, str) else text


def _mask_value(key: str, value: Any) -> Any:
    if key.lower() in PAYER_KEYS:
        return {k: mask_id(v) for k, v in value.items()} if isinstance(value, dict) else mask_id(value)
    if isinstance(value, dict):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_value(key, v) for v in value]
    return mask_text(value)


def mask_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Payer columns masked whole; openid-shaped tokens masked in every text column."""
    out = frame.copy()
    for name in out.columns:
        if str(name).lower() in PAYER_KEYS:
            out[name] = [mask_id(v) for v in out[name]]
        elif pd.api.types.is_string_dtype(out[name]):
            out[name] = out[name].str.replace(_OPENID, lambda m: mask_id(m.group(0)), regex=True)
        elif out[name].dtype == object:
            out[name] = [_mask_value(str(name), v) for v in out[name]]
    return out


def amount_involved(frame: pd.DataFrame) -> pd.Series:
    """Per row of items or exceptions: the largest of |bill|, |local|, |notified| fen (0 if none), Int64.
    For a fee item that is the amount the fee is charged on."""
    parts = [frame[c].fillna(0).abs() for c in ("bill_fen", "local_fen", "notified_fen")]
    biggest = parts[0]
    for part in parts[1:]:
        biggest = biggest.where(biggest >= part, part)
    return biggest.astype("Int64")


# --- evidence: the bill archive -------------------------------------------------------------


@dataclass(frozen=True)
class BillLine:
    """One line of an archived bill, payer identifiers masked. ``fields``: title -> value (no backtick)."""

    path: Path
    line_no: int
    text: str
    fields: dict[str, str] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"字段 field": list(self.fields), "值 value": list(self.fields.values())})


def read_bill_line(archive_root: str | Path, archive_path: str | Path, line_no: int) -> BillLine:
    """Line ``line_no`` (1-based; the header is line 1) of an archived bill, e.g. the
    ``bill_archive_path`` / ``bill_line_no`` of a mart row. Reads the file as a stream."""
    path = _inside(project_path(archive_root), archive_path)
    if int(line_no) < 1:
        raise EvidenceNotFound(f"line numbers start at 1, got {line_no}")
    opener = igzip.open if path.name.endswith(".gz") else open
    header: list[str] = []
    line, seen = None, 0
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        for seen, content in enumerate(text, start=1):
            content = content.rstrip("\r\n")
            if seen == int(line_no):
                line = content
                break
            if not content.startswith("`"):
                header = content.split(",")  # the detail header, later the summary header
    if line is None:
        raise EvidenceNotFound(f"{path} has {seen} lines, not {line_no}")
    if line.startswith("`"):
        values = [cell.removeprefix("`") for cell in line.split(",")]
        titles = header if len(header) == len(values) else [f"#{i}" for i in range(1, len(values) + 1)]
        fields = {t: (mask_id(v) if t in PAYER_KEYS else mask_text(v)) for t, v in zip(titles, values, strict=True)}
    else:
        fields = {f"#{i}": t for i, t in enumerate(line.split(","), start=1)}
    masked = ",".join("`" + v for v in fields.values()) if line.startswith("`") else line
    return BillLine(path, int(line_no), masked, fields)


# --- evidence: the notification log ---------------------------------------------------------

_HEADER_FIELDS = (
    "request-id",
    "wechatpay-serial",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-signature-type",
    "wechatpay-signature",
)
_ENVELOPE_FIELDS = ("id", "create_time", "event_type", "resource_type", "summary")
_RESOURCE_FIELDS = ("algorithm", "original_type", "associated_data", "nonce")


@dataclass(frozen=True)
class NotificationLine:
    """The non-secret parts of one notification-log line: where and when it arrived, what the
    receiver answered, the ``Wechatpay-*`` headers and the envelope (never the ciphertext's content)."""

    path: Path
    line_no: int
    receiver: dict[str, Any]
    headers: dict[str, str]
    envelope: dict[str, Any]

    def frame(self) -> pd.DataFrame:
        rows = [(f"receiver.{k}", v) for k, v in self.receiver.items()]
        rows += [(f"header.{k}", v) for k, v in self.headers.items()]
        rows += [(f"envelope.{k}", v) for k, v in self.envelope.items()]
        return pd.DataFrame([(k, "" if v is None else str(v)) for k, v in rows], columns=["字段 field", "值 value"])


def read_notification_line(log_root: str | Path, log_file: str | Path, line_no: int) -> NotificationLine:
    """Line ``line_no`` (1-based) of ``<log_root>/<log_file>`` (the marts' ``notification_log_file``)."""
    path = _inside(project_path(log_root), log_file)
    with path.open("rb") as handle:
        raw = next((content for number, content in enumerate(handle, start=1) if number == int(line_no)), None)
    if raw is None:
        raise EvidenceNotFound(f"{path} has no line {line_no}")
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        receiver = {"unreadable": f"{type(exc).__name__}: {exc}", "bytes": len(raw.rstrip(b"\n"))}
        return NotificationLine(path, int(line_no), receiver, {}, {})
    receiver = {k: obj.get(k) for k in ("received_at", "mchid", "outcome", "reason", "notification_id", "reply_status")}
    sent = obj["headers"] if isinstance(obj.get("headers"), dict) else {}
    headers = {k: str(sent[k]) for k in _HEADER_FIELDS if k in sent}
    if "wechatpay-signature" in headers:
        sig = headers["wechatpay-signature"]
        headers["wechatpay-signature"] = f"{sig[:16]}… ({len(sig)} characters)"
    envelope: dict[str, Any] = {}
    body = obj.get("body")
    try:
        message = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        message = None
    if isinstance(message, dict):
        envelope = {k: message[k] for k in _ENVELOPE_FIELDS if k in message}
        resource = message.get("resource") if isinstance(message.get("resource"), dict) else {}
        envelope.update({f"resource.{k}": resource[k] for k in _RESOURCE_FIELDS if k in resource})
        if isinstance(resource.get("ciphertext"), str):
            envelope["resource.ciphertext"] = f"({len(resource['ciphertext'])} Base64 characters, encrypted)"
    elif body is not None or "body_b64" in obj:
        envelope = {"body": "not a JSON object (the line's body is kept as received)"}
    return NotificationLine(
        path, int(line_no), _mask_value("", receiver), _mask_value("", headers), _mask_value("", envelope)
    )


def verification_status(lines: pd.DataFrame) -> str:
    """What the nightly verification recorded about one log line, from its ``mart_notifications`` rows."""
    if lines.empty:
        return "无记录 no finding: the nightly run has not recorded this line yet (its day may not be reconciled)."
    first = lines.iloc[0]
    if bool(first["verified"]):
        return "已验证 verified: signature, time window, decryption and payload checked by the nightly run"
    detail = first["failure_detail"] if isinstance(first["failure_detail"], str) else ""
    return f"未通过验证 NOT verified: {first['failure']}" + (f": {detail}" if detail else "")


# --- explanations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    code: str
    label_zh: str
    zh: str
    en: str

    def __str__(self) -> str:
        return f"{self.label_zh} ({self.code})\n{self.zh}\n{self.en}"


EXPLANATIONS_FILE = PROJECT_ROOT / "notebooks" / "exception_classes.toml"
EXPLANATIONS: dict[str, Explanation] = {
    code: Explanation(code, text["label_zh"], text["zh"], text["en"])
    for code, text in tomllib.loads(EXPLANATIONS_FILE.read_text(encoding="utf-8")).items()
}
"""Every class's label and explanation, from ``notebooks/exception_classes.toml`` (finance may edit the wording)."""


def explain(cls: str) -> Explanation:
    """The plain-language explanation of an exception class."""
    try:
        return EXPLANATIONS[cls]
    except KeyError:
        raise MartNotAllowed(f"unknown class {cls!r}; classes: {CLASSES}") from None


def class_label(cls: str) -> str:
    """``金额不一致 amount_mismatch``: chart and table label."""
    return f"{explain(cls).label_zh} {cls}"


# --- charts ---------------------------------------------------------------------------------

CJK_FAMILIES = (
    "WenQuanYi Micro Hei",
    "Noto Sans CJK SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "Noto Sans SC",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
)
CJK_FILES = frozenset({"wqy-microhei.ttc", "wqy-zenhei.ttc", "notosanscjk-regular.ttc", "notosanscjksc-regular.otf"})
SYSTEM_FONTS = Path("/usr/share/fonts")
FONT_DIR = PROJECT_ROOT / "notebooks" / "fonts"
FONT_HINT = "install one: apt-get install fonts-wqy-microhei (Debian), or put a .ttf/.ttc/.otf in notebooks/fonts/"


def use_cjk_font() -> str:
    """Make matplotlib draw Chinese: returns the family used. Looks in ``notebooks/fonts/``, then at
    the fonts matplotlib knows, then asks fontconfig (``fc-list :lang=zh``), then looks for Debian's
    CJK font files (fonts installed after matplotlib built its font cache are found that way). Raises
    :class:`FinanceError` if there is none: charts would show boxes instead of Chinese."""
    from matplotlib import font_manager, rcParams

    files = (
        sorted(p for p in FONT_DIR.glob("*") if p.suffix.lower() in (".ttf", ".ttc", ".otf"))
        if FONT_DIR.is_dir()
        else []
    )
    known = {f.name for f in font_manager.fontManager.ttflist}
    if not files and not known.intersection(CJK_FAMILIES):
        try:
            command = ["fc-list", ":lang=zh", "file"]  # fontconfig, if the machine has it
            listed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout  # noqa: S603
        except (OSError, subprocess.SubprocessError):
            listed = ""
        files = sorted(Path(line.split(":")[0].strip()) for line in listed.splitlines() if line.strip())
        if not files and SYSTEM_FONTS.is_dir():  # no fontconfig: look where Debian's font packages put them
            files = sorted(p for p in SYSTEM_FONTS.glob("**/*") if p.name.lower() in CJK_FILES)
    for file in files:
        font_manager.fontManager.addfont(str(file))
    names = [f.name for f in font_manager.fontManager.ttflist]
    bundled = [font_manager.FontProperties(fname=str(f)).get_name() for f in files]
    family = next((n for n in [*bundled, *CJK_FAMILIES] if n in names), None)
    if family is None:
        raise FinanceError(f"no font with Chinese characters found: {FONT_HINT}")
    rcParams["font.family"] = "sans-serif"
    rcParams["font.sans-serif"] = [family, "DejaVu Sans"]
    rcParams["axes.unicode_minus"] = False
    return family


class _YuanTicks:
    """Tick text for an axis plotted in fen or milli-fen: ``¥1,200`` or, if any tick needs cents, ``¥1,200.00``."""

    def __init__(self, scale: int):
        self.scale = scale

    def fen(self, value: float) -> int:
        return round(value / self.scale)  # chart geometry only: where a tick sits, shown to the fen

    def texts(self, values: Sequence[float]) -> list[str]:
        fens = [self.fen(v) for v in values]
        cents = any(f % 100 for f in fens)
        return [fmt_yuan(f) if cents else fmt_yuan(f)[:-3] for f in fens]


def yuan_axis(ax: Any, axis: str = "y", label: str = "金额 (元) amount (yuan)", *, unit: str = "fen") -> None:
    """Plot integer ``unit`` (``fen`` or ``millifen``), read yuan: the ticks of ``axis`` become ¥ text."""
    from matplotlib.ticker import Formatter, MaxNLocator

    ticks = _YuanTicks({"fen": 1, "millifen": 1000}[unit])

    class YuanFormatter(Formatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return ticks.texts([x])[0]

        def format_ticks(self, values: Sequence[float]) -> list[str]:
            return ticks.texts(values)

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], integer=True))
    target.set_major_formatter(YuanFormatter())
    (ax.set_ylabel if axis == "y" else ax.set_xlabel)(label)


def save_chart(fig: Any, output_dir: str | Path, name: str) -> Path:
    """``<output_dir>/<name>.png`` (output_dir relative to the project root unless absolute)."""
    folder = project_path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    fig.savefig(target, dpi=110, bbox_inches="tight")
    return target
