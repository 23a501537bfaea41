"""The marts' evidence: every exception points at the archived bill file and line the load recorded."""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, timedelta

import pyarrow as pa

from flows.bills import BillArchive, Fetched, load_archived
from flows.recon import ReconParams, reconcile
from flows.sources import LOCAL_ORDER_SCHEMA, bill_day_window, import_local
from flows.warehouse import connect, migrate
from tests.test_billfile import spec_example_rows
from wxpay.sim.billrender import render_trade_bill

MCHID = "1900000109"


def archive_and_load(con, archive: BillArchive, bill_type: str, data: bytes, day) -> str:
    sha1 = hashlib.sha1(data).hexdigest()
    bill = archive.target(MCHID, bill_type, day, sha1)
    bill.path.parent.mkdir(parents=True, exist_ok=True)
    bill.path.write_bytes(gzip.compress(data))
    load_archived(con, archive, Fetched(MCHID, bill_type, day, bill))
    return sha1


def test_an_exception_of_a_success_and_refund_day_points_at_the_success_bill_and_its_line(tmp_path):
    """No ALL bill that day (WeChat Pay gave SUCCESS and REFUND instead): the evidence is the SUCCESS file."""
    rows = spec_example_rows()
    day = rows[1]["trade_time"].date()
    payments = [r for r in rows if r["trade_state"] == "SUCCESS" and r["trade_time"].date() == day]
    refunds = [r for r in rows if r["trade_state"] == "REFUND"]
    con = connect(tmp_path / "warehouse.duckdb")
    migrate(con)
    archive = BillArchive(tmp_path / "archive")
    success_sha1 = archive_and_load(
        con, archive, "trade_success", render_trade_bill(payments, bill_type="SUCCESS"), day
    )
    archive_and_load(con, archive, "trade_refund", render_trade_bill(refunds, bill_type="REFUND"), day)
    paid = payments[-1]
    local = pa.table(
        {
            "combine_out_trade_no": [paid["attach"].removeprefix("cmb=")],
            "out_trade_no": [paid["out_trade_no"]],
            "mchid": [MCHID],
            "amount_fen": [paid["order_amount_fen"] + 100],  # the merchant recorded ¥1.00 more
            "status": ["SUCCESS"],
            "created_at": [paid["trade_time"].astimezone(UTC) - timedelta(minutes=1)],
            "paid_at": [paid["trade_time"].astimezone(UTC)],
            "transaction_id": [paid["transaction_id"]],
            "attach": [paid["attach"]],
            "description": [paid["description"]],
        },
        schema=LOCAL_ORDER_SCHEMA,
    )
    start, end = bill_day_window(day - timedelta(days=3), 7)
    import_local(con, local, None, start=start, end=end, source_label="test")
    reconcile(con, ReconParams(as_of=day, merchants=[MCHID]))

    item = con.execute(
        "select bill_type, bill_archive_sha1, bill_archive_path, bill_line_no, exposure_fen"
        " from marts.mart_recon_items where class = 'amount_mismatch' and item_key = ?",
        [paid["out_trade_no"]],
    ).fetchall()
    exception = con.execute(
        "select bill_type, bill_archive_path, bill_line_no from marts.mart_exceptions where item_key = ?",
        [paid["out_trade_no"]],
    ).fetchall()
    con.close()
    [(bill_type, sha1, path, line_no, exposure)] = item
    assert (bill_type, sha1, exposure) == ("trade_success", success_sha1, 100)
    assert exception == [(bill_type, path, line_no)]
    file = archive.root / path
    assert file.is_file()
    assert file.name == f"{success_sha1}.csv.gz"
    line = gzip.decompress(file.read_bytes()).decode("utf-8-sig").splitlines()[line_no - 1]
    assert f"`{paid['out_trade_no']}," in line


def test_an_item_whose_bill_was_loaded_from_outside_the_archive_has_no_path(tmp_path):
    from flows.bills import load_bill

    rows = spec_example_rows()
    day = rows[1]["trade_time"].date()
    data = render_trade_bill(rows)
    (tmp_path / "bill.csv").write_bytes(data)
    con = connect(tmp_path / "warehouse.duckdb")
    migrate(con)
    load_bill(con, tmp_path / "bill.csv", mchid=MCHID, bill_date=day, bill_type="ALL",
              archive_sha1=hashlib.sha1(data).hexdigest())  # fmt: skip
    reconcile(con, ReconParams(as_of=day, merchants=[MCHID]))
    paths = con.execute("select distinct bill_archive_path from marts.mart_recon_items").fetchall()
    con.close()
    assert paths == [(None,)]  # the day's items (missing locally: no local source) name no archive file
