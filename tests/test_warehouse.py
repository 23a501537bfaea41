"""The DuckDB warehouse against real DuckDB files: migrations, typed loads, models and checks."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from datetime import date
from pathlib import Path

import duckdb
import pytest

from flows.bills import LoadResult, load_bill, load_bill_stream
from flows.warehouse import SQL_DIR, connect, migrate, run_checks, run_models
from tests.test_billfile import SPEC_EXAMPLE_LINES, SPEC_EXAMPLE_SHA1, at, spec_example_rows
from wxpay.billfile import HEADERS, TRADE_COLUMNS, BillKind, columns_for
from wxpay.bills import BillProof
from wxpay.errors import BillFormatError, BillHashMismatchError, BillSummaryMismatchError, BillTruncatedError
from wxpay.sim.billgen import generate_trade_bill
from wxpay.sim.billrender import render_bill, render_fund_flow_bill, render_trade_bill

MCHID = "1900000109"
DAY = date(2025, 3, 10)
SUMS = (
    "count(*)",
    "sum(settlement_amount_fen)",
    "sum(refund_amount_fen)",
    "sum(recharge_coupon_refund_fen)",
    "sum(fee_millifen)",
    "sum(order_amount_fen)",
    "sum(requested_refund_fen)",
)


# The SQL files this suite owns. Loads, models and checks run on copies of exactly these, so models
# and migrations other work adds to sql/ (and the tables they need) do not decide these tests;
# test_connect_... applies the whole real folder.
OWN_SQL = {
    "migrations": ["001_raw_bills.sql", "131_manual_bills.sql"],  # 131: the lineage every load records
    "staging": ["stg_fundflow.sql", "stg_trade_bill_rows.sql", "stg_trade_payments.sql", "stg_trade_refunds.sql"],
    "checks": [
        "bill_rows_match_loads.sql",
        "duplicate_bill_lines.sql",
        "fund_flow_summary_matches_rows.sql",
        "trade_rows_outside_bill_date.sql",
        "trade_summary_matches_rows.sql",
    ],
}


@pytest.fixture(scope="module")
def sql_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sql")
    for layer, names in OWN_SQL.items():
        (root / layer).mkdir()
        for name in names:
            shutil.copy(SQL_DIR / layer / name, root / layer / name)
    return root


@pytest.fixture
def con(tmp_path, sql_dir):
    connection = connect(tmp_path / "warehouse.duckdb")
    migrate(connection, sql_dir=sql_dir)
    yield connection
    connection.close()


def models(con, sql_dir: Path) -> list[str]:
    return run_models(con, "staging", sql_dir=sql_dir)


def checks(con, sql_dir: Path) -> dict[str, list[dict]]:
    return run_checks(con, sql_dir=sql_dir)


def write(tmp_path: Path, name: str, data: bytes, *, gz: bool = False) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path, hashlib.sha1(data).hexdigest()


def load(con, path: Path, sha1: str, *, bill_type: str = "trade_all", day: date = DAY, **kw) -> LoadResult:
    return load_bill(con, path, mchid=MCHID, bill_date=day, bill_type=bill_type, archive_sha1=sha1, **kw)


def day_rows(con, day: date = DAY, table: str = "raw.trade_bill_rows") -> list[tuple]:
    return con.execute(
        f"select * exclude (bill_date) from {table} where bill_date = ? order by bill_type, line_no",  # noqa: S608
        [day],
    ).fetchall()


def totals(con, day: date = DAY) -> tuple:
    return con.execute(
        f"select {', '.join(SUMS)} from raw.trade_bill_rows where bill_date = ?",  # noqa: S608
        [day],
    ).fetchone()


def spec_example_bytes() -> bytes:
    return ("\r\n".join(SPEC_EXAMPLE_LINES) + "\r\n").encode("utf-8")


# --- connection and migrations --------------------------------------------------------------


def test_connect_sets_no_insertion_order_and_migrate_is_idempotent(tmp_path):
    connection = connect(tmp_path / "w.duckdb", memory_limit="1GB")
    assert connection.execute("select current_setting('preserve_insertion_order')").fetchone()[0] is False
    files = sorted(p.name for p in (SQL_DIR / "migrations").glob("*.sql"))
    assert migrate(connection) == files
    assert files[0] == "001_raw_bills.sql"
    assert migrate(connection) == []
    assert connection.execute("select count(*) from meta.schema_migrations").fetchone()[0] == len(files)
    raw = "select table_name from duckdb_tables() where schema_name = 'raw'"
    tables = {r[0] for r in connection.execute(raw).fetchall()}
    assert {"bill_loads", "trade_bill_rows", "trade_bill_summaries", "fund_flow_rows", "fund_flow_summaries"} <= tables
    connection.close()
    with connect(tmp_path / "w.duckdb", read_only=True) as again:
        assert again.execute("select count(*) from raw.bill_loads").fetchone()[0] == 0


def test_every_known_column_has_a_warehouse_column(con):
    def columns(table: str) -> set[str]:
        return {r[0] for r in con.execute(f"describe {table}").fetchall()}

    trade, flow = columns("raw.trade_bill_rows"), columns("raw.fund_flow_rows")
    assert {c.name for c in TRADE_COLUMNS.values()} | {"fee_rate_pct"} <= trade
    assert {c.name for c in columns_for(BillKind.FUND_FLOW).values()} <= flow


def test_a_changed_migration_is_refused(tmp_path, con):
    sql = tmp_path / "sql"
    (sql / "migrations").mkdir(parents=True)
    (sql / "migrations" / "001_raw_bills.sql").write_text("select 1")
    with pytest.raises(ValueError, match="changed after it was applied"):
        migrate(con, sql_dir=sql)


# --- the spec example -----------------------------------------------------------------------


def test_spec_example_loads_with_exact_totals(tmp_path, con, sql_dir):
    data = spec_example_bytes()
    assert hashlib.sha1(data).hexdigest() == SPEC_EXAMPLE_SHA1
    path, sha1 = write(tmp_path, "1900000109_20250310_all.csv", data)

    result = load(con, path, sha1, source_label="spec §6.4")

    assert result.row_count == 3
    assert result.replaced_rows == 0
    assert result.kind is BillKind.TRADE_ALL
    assert result.summary == {
        "row_count": 3,
        "settlement_amount_fen": 16350,
        "refund_amount_fen": 2000,
        "recharge_coupon_refund_fen": 0,
        "fee_millifen": 86000,
        "order_amount_fen": 16350,
        "requested_refund_fen": 2000,
    }
    assert totals(con) == (3, 16350, 2000, 0, 86000, 16350, 2000)
    rows = con.execute(
        "select line_no, archive_sha1, trade_time, out_trade_no, refund_id, fee_millifen, fee_rate, fee_rate_pct,"
        " device_info, fee_rate_remark from raw.trade_bill_rows order by line_no"
    ).fetchall()
    assert [r[0] for r in rows] == [2, 3, 4]
    assert {r[1] for r in rows} == {SPEC_EXAMPLE_SHA1}
    assert rows[0][2] == at("2025-03-10 00:01:13")  # Beijing time, stored as an instant
    assert rows[2][3:6] == ("SUB20250308C003", "50300902012025031098765432101", -12000)
    assert (rows[1][6], str(rows[1][7])) == ("0.60%", "0.6000")
    assert (rows[0][8], rows[0][9]) == (None, None)  # empty values are NULL
    summary = con.execute("select line_no, row_count, fee_millifen from raw.trade_bill_summaries").fetchall()
    assert summary == [(5, 3, 86000)]
    load_row = con.execute("select bill_type, archive_sha1, row_count, source_label from raw.bill_loads").fetchall()
    assert load_row == [("trade_all", SPEC_EXAMPLE_SHA1, 3, "spec §6.4")]
    assert all(bad == [] for bad in checks(con, sql_dir).values())


@pytest.mark.parametrize(
    ("bom", "crlf", "trailing", "gz"),
    [(True, True, True, False), (False, False, True, False), (True, False, False, True), (False, True, False, True)],
)
def test_bom_line_endings_trailing_newline_and_gzip(tmp_path, con, bom, crlf, trailing, gz):
    data = render_trade_bill(spec_example_rows(), bom=bom, crlf=crlf, trailing_newline=trailing)
    path, sha1 = write(tmp_path, "bill.csv.gz" if gz else "bill.csv", data, gz=gz)
    result = load(con, path, sha1)
    assert result.row_count == 3
    assert totals(con) == (3, 16350, 2000, 0, 86000, 16350, 2000)
    assert con.execute("select list(line_no order by line_no), max(length(fee_rate_remark)) from raw.trade_bill_rows")\
        .fetchone() == ([2, 3, 4], None)  # fmt: skip


def test_an_empty_day_loads_header_and_summary_only(tmp_path, con):
    path, sha1 = write(tmp_path, "empty.csv", render_trade_bill([]))
    result = load(con, path, sha1)
    assert result.row_count == 0
    assert con.execute("select row_count, order_amount_fen from raw.trade_bill_summaries").fetchall() == [(0, 0)]
    assert con.execute("select row_count from raw.bill_loads").fetchall() == [(0,)]


# --- the other layouts round-trip -----------------------------------------------------------


def test_success_bill_round_trips_with_four_or_seven_summary_columns(tmp_path, con):
    payments = spec_example_rows()[:2]
    four = render_trade_bill(payments, bill_type="SUCCESS")
    path, sha1 = write(tmp_path, "success4.csv", four)
    result = load(con, path, sha1, bill_type="SUCCESS")
    assert result.bill_type == "trade_success"
    assert result.summary == {
        "row_count": 2,
        "settlement_amount_fen": 16350,
        "fee_millifen": 98000,
        "order_amount_fen": 16350,
    }
    stored = con.execute(
        "select out_trade_no, settlement_amount_fen, order_amount_fen, fee_millifen, refund_id, refund_amount_fen"
        " from raw.trade_bill_rows order by line_no"
    ).fetchall()
    assert stored == [
        ("SUB20250309B002", 3550, 3550, 21000, None, None),
        ("SUB20250310A001", 12800, 12800, 77000, None, None),
    ]

    seven = render_trade_bill(payments, bill_type="SUCCESS", summary_titles=SPEC_EXAMPLE_LINES[4].split(","))
    path, sha1 = write(tmp_path, "success7.csv", seven)
    assert load(con, path, sha1, bill_type="trade_success").summary["refund_amount_fen"] == 0
    assert con.execute("select count(*) from raw.trade_bill_rows").fetchone()[0] == 2


def test_refund_bill_round_trips(tmp_path, con):
    row = {**spec_example_rows()[2], "refund_applied_at": at("2025-03-10 14:20:45"), "refund_succeeded_at": None}
    path, sha1 = write(tmp_path, "refund.csv.gz", render_trade_bill([row], bill_type="REFUND"), gz=True)
    result = load(con, path, sha1, bill_type="trade_refund")
    assert result.row_count == 1
    stored = con.execute(
        "select trade_state, refund_applied_at, refund_succeeded_at, refund_amount_fen, requested_refund_fen,"
        " fee_millifen, line_no from raw.trade_bill_rows"
    ).fetchone()
    assert stored == ("REFUND", at("2025-03-10 14:20:45"), None, 2000, 2000, -12000, 2)


def test_fund_flow_bill_round_trips(tmp_path, con, sql_dir):
    rows = [
        {
            "booked_at": at("2025-03-10 09:15:03"),
            "business_no": "4200002601202503101234567890",
            "flow_no": "4200002601202503101234567890",
            "business_name": "交易",
            "business_type": "交易",
            "direction": "收入",
            "amount_fen": 12723,
            "balance_fen": 112723,
            "applicant": "system",
            "remark": "结算总金额 128.00 元;含手续费 0.77 元",
            "voucher_no": "SUB20250310A001",
        },
        {
            "booked_at": at("2025-03-10 14:20:46"),
            "business_no": "50300902012025031098765432101",
            "flow_no": "4200002601202503085555666677",
            "business_name": "退款",
            "business_type": "退款",
            "direction": "支出",
            "amount_fen": 1988,
            "balance_fen": 110735,
            "applicant": "1900000109API",
            "remark": "退款总金额20.00元;含手续费0.12元",
            "voucher_no": "RF20250310001",
        },
    ]
    path, sha1 = write(tmp_path, "flow.csv", render_fund_flow_bill(rows))
    result = load(con, path, sha1, bill_type="fundflow_basic")
    assert result.kind is BillKind.FUND_FLOW
    assert result.summary == {
        "row_count": 2,
        "income_count": 1,
        "income_amount_fen": 12723,
        "expense_count": 1,
        "expense_amount_fen": 1988,
    }
    names = [c.name for c in columns_for(BillKind.FUND_FLOW).values()][:11]
    stored = con.execute(f"select {', '.join(names)} from raw.fund_flow_rows order by line_no").fetchall()  # noqa: S608
    assert stored == [tuple(r[n] for n in names) for r in rows]
    models(con, sql_dir)
    signed = con.execute(
        "select account_type, sum(signed_amount_fen) from staging.stg_fundflow group by all"
    ).fetchall()
    assert signed == [("BASIC", 12723 - 1988)]
    assert all(bad == [] for bad in checks(con, sql_dir).values())


def test_fund_flow_summary_counts_printed_as_decimals(tmp_path, con):
    text = render_fund_flow_bill([], bom=False).decode().replace("`0,`0,`0.00,`0,`0.00", "`0.0,`0.0,`0.00,`0.0,`0.00")
    path, sha1 = write(tmp_path, "flow.csv", text.encode())
    assert load(con, path, sha1, bill_type="BASIC").summary["row_count"] == 0


def test_header_must_match_the_bill_type(tmp_path, con):
    path, sha1 = write(tmp_path, "success.csv", render_trade_bill(spec_example_rows()[:2], bill_type="SUCCESS"))
    with pytest.raises(BillFormatError, match="SUCCESS bill, expected ALL"):
        load(con, path, sha1, bill_type="trade_all")


# --- schema drift ---------------------------------------------------------------------------


def test_missing_required_column_is_named(tmp_path, con):
    titles = [t for t in HEADERS[BillKind.TRADE_ALL] if t != "手续费"]
    data = render_bill(BillKind.TRADE_ALL, spec_example_rows(), titles=titles)
    path, sha1 = write(tmp_path, "no_fee.csv", data)
    with pytest.raises(BillFormatError) as info:
        load(con, path, sha1)
    assert info.value.field == "手续费"
    assert str(info.value).startswith("no_fee.csv:1 [手续费]: required column 手续费")
    assert totals(con)[0] == 0


def test_old_format_without_settlement_and_coupon_columns_loads(tmp_path, con):
    titles = [t for t in HEADERS[BillKind.TRADE_ALL] if t not in ("应结订单金额", "代金券金额")]
    summary = [t for t in SPEC_EXAMPLE_LINES[4].split(",") if t != "应结订单总金额"]
    data = render_bill(BillKind.TRADE_ALL, spec_example_rows(), titles=titles, summary_titles=summary)
    path, sha1 = write(tmp_path, "old.csv", data)
    result = load(con, path, sha1)
    assert result.absent_columns == ("应结订单金额", "代金券金额")
    assert con.execute(
        "select count(settlement_amount_fen), sum(order_amount_fen) from raw.trade_bill_rows"
    ).fetchone() == (
        0,
        16350,
    )


def test_extra_column_is_kept_and_reported(tmp_path, con):
    titles = [*HEADERS[BillKind.TRADE_ALL][:21], "营销活动ID", *HEADERS[BillKind.TRADE_ALL][21:]]
    rows = [{**row, "营销活动ID": f"ACT{i}"} for i, row in enumerate(spec_example_rows())]
    path, sha1 = write(tmp_path, "drift.csv", render_bill(BillKind.TRADE_ALL, rows, titles=titles))
    result = load(con, path, sha1)
    assert result.extra_columns == ("营销活动ID",)
    kept = con.execute(
        "select extra_columns->>'营销活动ID', attach from raw.trade_bill_rows order by line_no"
    ).fetchall()
    assert kept == [("ACT0", "cmb=C20250309099"), ("ACT1", "cmb=C20250310001"), ("ACT2", "cmb=C20250308042")]
    assert con.execute("select extra_columns from raw.bill_loads").fetchone()[0] == ["营销活动ID"]
    assert totals(con) == (3, 16350, 2000, 0, 86000, 16350, 2000)


# --- bad input: clear errors, nothing written -----------------------------------------------


def test_a_bad_amount_names_file_line_and_field_and_loads_nothing(tmp_path, con):
    lines = [*SPEC_EXAMPLE_LINES[:4], SPEC_EXAMPLE_LINES[2].replace("`2025-03-10 09:15:02", "`2025-03-10 10:00:00")]
    lines[4] = lines[4].replace("`128.00,`0.00,`0,`0", "`3.315,`0.00,`0,`0")
    data = ("\r\n".join([*lines, *SPEC_EXAMPLE_LINES[4:]]) + "\r\n").encode()
    path, sha1 = write(tmp_path, "bad_amount.csv", data)
    with pytest.raises(BillFormatError) as info:
        load(con, path, sha1)
    assert str(info.value) == "bad_amount.csv:5 [应结订单金额]: '3.315' is not yuan with exactly 2 decimals"
    assert (info.value.line, info.value.field) == (5, "应结订单金额")
    assert totals(con)[0] == 0
    assert con.execute("select count(*) from raw.bill_loads").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("`2025-03-10 09:15:02", "`2025-03-10 9:15:02", "交易时间"),
        ("`2025-03-10 09:15:02", "`2025-02-30 09:15:02", "交易时间"),
        ("`0.77000", "`0.77", "手续费"),
        ("`0.77000,`0.60%", "`0.77000,`0.6 %", "费率"),
        ("`128.00,`0.00,`0,`0", "`99999999999999999999.00,`0.00,`0,`0", "应结订单金额"),  # beyond BIGINT
        ("`128.00,`0.00,`0,`0,`0.00", "`128.00,`0.00,`0,`0,`", "退款金额"),
    ],
)
def test_every_bad_value_is_named(tmp_path, con, old, new, field):
    data = spec_example_bytes().replace(old.encode(), new.encode(), 1)
    path, sha1 = write(tmp_path, "bad.csv", data)
    with pytest.raises(BillFormatError) as info:
        load(con, path, sha1)
    assert (info.value.file, info.value.line, info.value.field) == ("bad.csv", 3, field)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (",`Course A", "", "does not fit the header"),  # a value missing: rejected by the reader
        (",`Course A", ",`Course,`A", "is not yuan with exactly 5 decimals"),  # a ",`" inside a value shifts the rest
    ],
)
def test_a_line_with_the_wrong_number_of_values_is_named(tmp_path, con, old, new, message):
    lines = list(SPEC_EXAMPLE_LINES)
    lines[2] = lines[2].replace(old, new)
    path, sha1 = write(tmp_path, "shifted.csv.gz", ("\n".join(lines) + "\n").encode(), gz=True)
    with pytest.raises(BillFormatError, match=message) as info:
        load(con, path, sha1)
    assert info.value.line == 3
    assert totals(con)[0] == 0


def test_an_empty_line_inside_is_named_and_trailing_empty_lines_are_fine(tmp_path, con):
    inside = ("\r\n".join([*SPEC_EXAMPLE_LINES[:3], "", *SPEC_EXAMPLE_LINES[3:]]) + "\r\n").encode()
    path, sha1 = write(tmp_path, "gap.csv.gz", inside, gz=True)
    with pytest.raises(BillFormatError, match="empty line") as info:
        load(con, path, sha1)
    assert info.value.line == 4
    assert totals(con)[0] == 0

    trailing = spec_example_bytes() + b"\r\n\r\n"
    path, sha1 = write(tmp_path, "trailing.csv", trailing)
    assert load(con, path, sha1).row_count == 3


def test_bytes_that_are_not_utf8_are_named(tmp_path, con):
    path, sha1 = write(tmp_path, "latin.csv", spec_example_bytes().replace(b"Course A", b"Course \xff"))
    with pytest.raises(BillFormatError, match="utf-8") as info:
        load(con, path, sha1)
    assert info.value.line == 3


def test_a_missing_summary_is_an_error(tmp_path, con):
    path, sha1 = write(tmp_path, "cut.csv", ("\r\n".join(SPEC_EXAMPLE_LINES[:4]) + "\r\n").encode())
    with pytest.raises(BillFormatError, match="summary block") as info:
        load(con, path, sha1)
    assert info.value.line == 5
    assert totals(con)[0] == 0


def test_summary_mismatch_names_the_differences_and_loads_nothing(tmp_path, con):
    data = render_trade_bill(spec_example_rows(), summary_override={"order_amount_fen": 16351, "row_count": 4})
    path, sha1 = write(tmp_path, "lying.csv", data)
    with pytest.raises(BillSummaryMismatchError) as info:
        load(con, path, sha1)
    assert info.value.differences == {"总交易单数": (4, 3), "订单总金额": (16351, 16350)}
    assert "lying.csv:6" in str(info.value)
    assert totals(con)[0] == 0
    assert con.execute("select count(*) from raw.trade_bill_summaries").fetchone()[0] == 0


def test_hash_mismatch_loads_nothing(tmp_path, con):
    path, _ = write(tmp_path, "bill.csv.gz", spec_example_bytes(), gz=True)
    with pytest.raises(BillHashMismatchError) as info:
        load(con, path, "0" * 40)
    assert info.value.actual == SPEC_EXAMPLE_SHA1
    assert totals(con)[0] == 0


def test_a_truncated_gzip_is_reported_as_such(tmp_path, con):
    big = render_trade_bill(spec_example_rows() * 2000)
    path, sha1 = write(tmp_path, "cut.csv.gz", big, gz=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BillTruncatedError):
        load(con, path, sha1)
    assert totals(con)[0] == 0


# --- idempotence and atomicity --------------------------------------------------------------


def test_reload_replaces_and_never_doubles_and_other_days_are_untouched(tmp_path, con, sql_dir):
    path, sha1 = write(tmp_path, "day.csv", spec_example_bytes())
    other_rows = [{**row, "trade_time": row["trade_time"].replace(day=11)} for row in spec_example_rows()[:2]]
    other, other_sha1 = write(tmp_path, "other.csv", render_trade_bill(other_rows))
    load(con, other, other_sha1, day=date(2025, 3, 11))
    before_other = day_rows(con, date(2025, 3, 11))

    first = load(con, path, sha1)
    second = load(con, path, sha1)

    assert first.row_count == second.row_count == 3
    assert second.replaced_rows == 3
    assert totals(con) == (3, 16350, 2000, 0, 86000, 16350, 2000)
    assert con.execute("select count(*) from raw.trade_bill_summaries where bill_date = ?", [DAY]).fetchone() == (1,)
    assert con.execute("select count(*) from raw.bill_loads").fetchone() == (2,)
    assert day_rows(con, date(2025, 3, 11)) == before_other
    assert all(bad == [] for bad in checks(con, sql_dir).values())


def test_a_failure_after_the_insert_keeps_the_previous_load(tmp_path, con):
    path, sha1 = write(tmp_path, "v1.csv", spec_example_bytes())
    load(con, path, sha1)
    before = day_rows(con)
    changed = [
        {**row, "order_amount_fen": 99999} if row["trade_state"] == "SUCCESS" else row for row in spec_example_rows()
    ]
    path2, sha2 = write(tmp_path, "v2.csv", render_trade_bill(changed))
    seen = []

    def boom(connection):
        seen.append(connection.execute("select sum(order_amount_fen) from raw.trade_bill_rows").fetchone()[0])
        raise RuntimeError("crash after the insert")

    with pytest.raises(RuntimeError, match="crash after the insert"):
        load(con, path2, sha2, _after_insert=boom)

    assert seen == [2 * 99999]  # the new rows were in place inside the transaction
    assert day_rows(con) == before
    assert con.execute("select archive_sha1 from raw.bill_loads").fetchall() == [(sha1,)]
    assert con.execute("select count(*) from raw.trade_bill_summaries").fetchone() == (1,)


def test_a_bad_reload_keeps_the_previous_load(tmp_path, con):
    path, sha1 = write(tmp_path, "v1.csv", spec_example_bytes())
    load(con, path, sha1)
    before = day_rows(con)
    bad, bad_sha1 = write(tmp_path, "v2.csv", spec_example_bytes().replace(b"`35.50,`0.00", b"`3.315,`0.00"))
    with pytest.raises(BillFormatError):
        load(con, bad, bad_sha1)
    assert day_rows(con) == before


# --- a large generated bill: fingerprint and lineage ----------------------------------------


@pytest.fixture(scope="module")
def big_bill(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    fingerprint = generate_trade_bill(folder / "big.csv.gz", rows=150_000, seed=11, chunk_rows=40_000)
    return folder / "big.csv.gz", fingerprint


@pytest.mark.slow  # a bill of 100k+ rows
def test_generated_bill_loads_with_its_fingerprint_and_line_numbers(con, big_bill, sql_dir):
    path, fp = big_bill
    result = load(con, path, fp.sha1)
    assert result.row_count == fp.row_count
    got = con.execute(
        "select count(*), count(*) filter (where trade_state = 'REFUND'), sum(settlement_amount_fen),"
        " sum(coupon_amount_fen), sum(refund_amount_fen), sum(recharge_coupon_refund_fen), sum(order_amount_fen),"
        " sum(requested_refund_fen), sum(fee_millifen), count(distinct out_trade_no) from raw.trade_bill_rows"
    ).fetchone()
    assert tuple(int(x) for x in got) == (
        fp.row_count,
        fp.refund_rows,
        fp.settlement_amount_fen,
        fp.coupon_amount_fen,
        fp.refund_amount_fen,
        fp.recharge_coupon_refund_fen,
        fp.order_amount_fen,
        fp.requested_refund_fen,
        fp.fee_millifen,
        fp.distinct_out_trade_no,
    )
    # a payment's out_trade_no ends with its 0-based row index: its line is that index + 2
    misplaced = con.execute(
        "select count(*) from raw.trade_bill_rows"
        " where trade_state = 'SUCCESS' and cast(right(out_trade_no, 9) as bigint) + 2 <> line_no"
    ).fetchone()[0]
    assert misplaced == 0
    assert con.execute("select min(line_no), max(line_no) from raw.trade_bill_rows").fetchone() == (2, 150_001)
    models(con, sql_dir)
    payments, refunds = (
        con.execute(f"select count(*) from staging.{view}").fetchone()[0]  # noqa: S608
        for view in ("stg_trade_payments", "stg_trade_refunds")
    )
    assert (payments, refunds) == (fp.row_count - fp.refund_rows, fp.refund_rows)


@pytest.mark.slow  # a bill of 100k+ rows
def test_a_bad_amount_deep_in_a_large_gzip_names_its_exact_line(tmp_path, con):
    fp = generate_trade_bill(tmp_path / "bad.csv.gz", rows=150_000, seed=3, chunk_rows=50_000, bad_amount_row=140_000)
    with pytest.raises(BillFormatError) as info:
        load(con, tmp_path / "bad.csv.gz", fp.sha1)
    assert (info.value.line, info.value.field) == (140_002, "应结订单金额")
    assert str(info.value).startswith("bad.csv.gz:140002 [应结订单金额]: '3.315'")
    assert totals(con)[0] == 0


# --- models and checks ----------------------------------------------------------------------


def test_staging_models_split_payments_and_refunds_without_double_counting(tmp_path, con, sql_dir):
    path, sha1 = write(tmp_path, "all.csv", spec_example_bytes())
    load(con, path, sha1)
    success, success_sha1 = write(
        tmp_path, "success.csv", render_trade_bill(spec_example_rows()[:2], bill_type="SUCCESS")
    )
    load(con, success, success_sha1, bill_type="SUCCESS")

    assert models(con, sql_dir) == [
        "staging.stg_fundflow",
        "staging.stg_trade_bill_rows",
        "staging.stg_trade_payments",
        "staging.stg_trade_refunds",
    ]
    payments = con.execute(
        "select bill_type, out_trade_no, combine_out_trade_no, order_amount_fen, paid_date, line_no"
        " from staging.stg_trade_payments order by line_no"
    ).fetchall()
    assert payments == [
        ("trade_all", "SUB20250309B002", "C20250309099", 3550, DAY, 2),
        ("trade_all", "SUB20250310A001", "C20250310001", 12800, DAY, 3),
    ]
    refunds = con.execute(
        "select out_refund_no, refund_amount_fen, fee_millifen, refund_submitted_at from staging.stg_trade_refunds"
    ).fetchall()
    assert refunds == [("RF20250310001", 2000, -12000, at("2025-03-10 14:20:45"))]

    con.execute("delete from raw.bill_loads where bill_type = 'trade_all'")
    con.execute("delete from raw.trade_bill_rows where bill_type = 'trade_all'")
    only_success = con.execute("select bill_type, count(*) from staging.stg_trade_payments group by all").fetchall()
    assert only_success == [("trade_success", 2)]  # without an ALL bill, the SUCCESS bill is the source


def test_models_are_created_after_the_models_of_their_layer_they_read(tmp_path):
    (tmp_path / "layer").mkdir()
    (tmp_path / "layer" / "a_total.sql").write_text("select sum(n) as total from layer.b_doubled")
    (tmp_path / "layer" / "b_doubled.sql").write_text("select 2 * n as n from layer.c_base")
    (tmp_path / "layer" / "c_base.sql").write_text("select 1 as n union all select 2;\n")
    (tmp_path / "layer" / "d_alone.sql").write_text("select 1 as one")
    with duckdb.connect() as memory:
        names = run_models(memory, "layer", sql_dir=tmp_path)
        assert names == ["layer.c_base", "layer.d_alone", "layer.b_doubled", "layer.a_total"]
        assert memory.execute("select total from layer.a_total").fetchone() == (6,)
    (tmp_path / "layer" / "c_base.sql").write_text("select n from layer.a_total")
    with duckdb.connect() as memory, pytest.raises(ValueError, match="circular references between models of layer"):
        run_models(memory, "layer", sql_dir=tmp_path)


def test_checks_are_empty_when_healthy_and_return_the_bad_rows(tmp_path, con, sql_dir):
    path, sha1 = write(tmp_path, "all.csv", spec_example_bytes())
    load(con, path, sha1)
    assert checks(con, sql_dir) == {
        "bill_rows_match_loads": [],
        "duplicate_bill_lines": [],
        "fund_flow_summary_matches_rows": [],
        "trade_rows_outside_bill_date": [],
        "trade_summary_matches_rows": [],
    }
    # corrupt the day the way a non-atomic reload would: one line stored twice, on another day's date
    con.execute(
        "insert into raw.trade_bill_rows select * replace (date '2025-03-11' as bill_date)"
        " from raw.trade_bill_rows where line_no = 3"
    )
    con.execute("insert into raw.trade_bill_rows select * from raw.trade_bill_rows where line_no = 2")
    found = checks(con, sql_dir)
    assert [(r["line_no"], r["copies"]) for r in found["duplicate_bill_lines"]] == [(2, 2)]
    assert [(r["summary_row_count"], r["detail_row_count"]) for r in found["trade_summary_matches_rows"]] == [(3, 4)]
    assert {(r["bill_date"], r["rows_found"], r["rows_recorded"]) for r in found["bill_rows_match_loads"]} == {
        (DAY, 4, 3),
        (date(2025, 3, 11), 1, None),
    }
    assert [r["line_no"] for r in found["trade_rows_outside_bill_date"]] == [3]


def test_the_connection_stays_usable_after_a_failed_load(tmp_path, con):
    bad, bad_sha1 = write(tmp_path, "bad.csv", spec_example_bytes().replace(b"`35.50,`0.00", b"`3.315,`0.00"))
    with pytest.raises(BillFormatError):
        load(con, bad, bad_sha1)
    path, sha1 = write(tmp_path, "good.csv", spec_example_bytes())
    assert load(con, path, sha1).row_count == 3
    temp_tables = con.execute("select count(*) from duckdb_tables() where temporary").fetchone()[0]
    assert temp_tables == 0  # the rejects tables are dropped
    assert isinstance(con, duckdb.DuckDBPyConnection)


# --- the streamed path: staged parts, proofs, memory ----------------------------------------


def streamed(con, data: bytes, sha1: str, *, part_lines: int, piece: int, tmp_path: Path, **kw) -> LoadResult:
    """Load ``data`` through load_bill_stream, fed in pieces of ``piece`` bytes, staged in parts of ``part_lines``."""

    def produce(feed):
        for start in range(0, len(data), piece):
            feed(data[start : start + piece])
        return hashlib.sha1(data).hexdigest()

    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    result = load_bill_stream(
        con,
        produce,
        path=tmp_path / "streamed.csv",
        mchid=MCHID,
        bill_date=DAY,
        bill_type="trade_all",
        archive_sha1=sha1,
        part_lines=part_lines,
        staging_dir=staging,
        **kw,
    )
    assert list(staging.iterdir()) == []  # the part files are gone
    return result


@pytest.mark.parametrize("part_lines", [3, 4, 5, 7, 122_880])
@pytest.mark.parametrize(("piece", "tail"), [(1, b""), (10, b"\r\n\r\n"), (1 << 20, b"\r\n")])
def test_parts_of_any_size_fed_in_any_pieces_load_the_same(tmp_path, con, part_lines, piece, tail):
    data = spec_example_bytes() + tail
    result = streamed(con, data, hashlib.sha1(data).hexdigest(), part_lines=part_lines, piece=piece, tmp_path=tmp_path)
    assert (result.loader, result.row_count) == ("streamed", 3)
    assert totals(con) == (3, 16350, 2000, 0, 86000, 16350, 2000)
    assert con.execute("select list(line_no order by line_no) from raw.trade_bill_rows").fetchone()[0] == [2, 3, 4]
    assert con.execute("select line_no, row_count from raw.trade_bill_summaries").fetchall() == [(5, 3)]


@pytest.mark.slow  # a bill of 100k+ rows
def test_a_large_bill_in_many_small_parts_keeps_every_line_number(tmp_path, con, big_bill):
    path, fp = big_bill
    data = gzip.decompress(path.read_bytes())
    result = streamed(con, data, fp.sha1, part_lines=9_999, piece=333_333, tmp_path=tmp_path)
    assert (result.loader, result.row_count) == ("streamed", fp.row_count)
    misplaced = con.execute(
        "select count(*) from raw.trade_bill_rows"
        " where trade_state = 'SUCCESS' and cast(right(out_trade_no, 9) as bigint) + 2 <> line_no"
    ).fetchone()[0]
    assert misplaced == 0
    got = con.execute(
        "select count(distinct line_no), min(line_no), max(line_no), sum(fee_millifen) from raw.trade_bill_rows"
    )
    assert got.fetchone() == (fp.row_count, 2, fp.row_count + 1, fp.fee_millifen)


def test_a_clean_bill_takes_the_streamed_path_and_a_bad_one_the_exact_path(tmp_path, con):
    path, sha1 = write(tmp_path, "good.csv.gz", spec_example_bytes(), gz=True)
    assert load(con, path, sha1).loader == "streamed"
    # beyond DECIMAL(18,2) but within BIGINT: the streamed casts refuse it, the exact path loads it
    huge = 1_234_567_890_123_456_700  # fen: 17 digits of yuan
    rows = [{**r, "settlement_amount_fen": huge, "order_amount_fen": huge} if i == 1 else r
            for i, r in enumerate(spec_example_rows())]  # fmt: skip
    path, sha1 = write(tmp_path, "huge.csv", render_trade_bill(rows))
    result = load(con, path, sha1)
    assert (result.loader, result.summary["settlement_amount_fen"]) == ("exact", huge + 3550)


def test_a_proof_spares_the_second_hash_but_not_the_gzip_check(tmp_path, con, monkeypatch):
    data = spec_example_bytes()
    path, sha1 = write(tmp_path, "bill.csv.gz", data, gz=True)

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again despite the proof")

    with monkeypatch.context() as m:
        m.setattr(hashlib, "sha1", no_hashing)
        assert load(con, path, sha1, proof=BillProof(sha1, len(data))).row_count == 3
    with pytest.raises(BillHashMismatchError, match="the verified one had"):
        load(con, path, sha1, proof=BillProof(sha1, len(data) + 1))
    with pytest.raises(ValueError, match="the proof is for"):
        load(con, path, sha1, proof=BillProof("1" * 40, len(data)))
    assert totals(con)[0] == 3  # the first load stands


@pytest.mark.slow  # a bill of 100k+ rows
def test_a_failing_producer_loads_nothing_and_leaves_no_parts(tmp_path, con):
    load(con, *write(tmp_path, "v1.csv", spec_example_bytes()))
    before = day_rows(con)
    data = render_trade_bill(spec_example_rows() * 30_000)

    def produce(feed):
        feed(data[: len(data) // 2])
        raise ConnectionError("the download broke off")

    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ConnectionError, match="broke off"):
        load_bill_stream(
            con, produce, path=tmp_path / "x.csv", mchid=MCHID, bill_date=DAY, bill_type="trade_all",
            archive_sha1="0" * 40, part_lines=1000, staging_dir=staging,
        )  # fmt: skip
    assert day_rows(con) == before
    assert list(staging.iterdir()) == []


def test_a_load_lowers_the_memory_limit_and_restores_it(tmp_path, sql_dir):
    connection = connect(tmp_path / "w.duckdb", memory_limit="3GB")
    migrate(connection, sql_dir=sql_dir)
    seen = []
    path, sha1 = write(tmp_path, "bill.csv", spec_example_bytes())

    def limit(c):
        seen.append(c.execute("select current_setting('memory_limit')").fetchone()[0])

    load(connection, path, sha1, _after_insert=limit)
    load(connection, path, sha1, _after_insert=limit, memory_limit=None)
    after = connection.execute("select current_setting('memory_limit')").fetchone()[0]
    connection.close()
    assert seen == ["488.2 MiB", "2.7 GiB"]
    assert after == "2.7 GiB"  # 3GB, as DuckDB shows it


def test_the_summary_checks_are_the_rule_a_load_checks_written_from_the_catalog(tmp_path):
    from flows.bills.summaries import CHECKS, check_sql, write_checks

    for name, trade in CHECKS.items():
        assert (SQL_DIR / "checks" / f"{name}.sql").read_text(encoding="utf-8") == check_sql(trade), (
            f"sql/checks/{name}.sql is not what the catalog says: run `python -m flows.bills`"
        )
    (tmp_path / "checks").mkdir()
    assert sorted(p.name for p in write_checks(tmp_path)) == sorted(f"{n}.sql" for n in CHECKS)
    assert "coalesce(sum(fee_millifen), 0) as fee_millifen" in check_sql(True)
    assert "count(*) filter (where direction = '支出') as expense_count" in check_sql(False)
