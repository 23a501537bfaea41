"""flows.finance, the notebooks' helper: money text, masking, the mart allow-list, evidence files, fonts."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from flows import finance
from flows.finance import (
    EvidenceNotFound,
    MartNotAllowed,
    Warehouse,
    fmt_fee,
    fmt_yuan,
    mask_frame,
    mask_id,
    mask_text,
    parse_rate,
    read_bill_line,
    read_notification_line,
    yuan,
)
from flows.notifications import LogEntry
from flows.recon import CLASSES
from flows.warehouse import connect, migrate, run_models

OPENID = "oLXjjlAFbVV6q9rXxtNDFyuzX9k1"
OTHER_OPENID = "o_GbVMszvR4-EPZGz3zBXCOArr-S"


# --- money ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fen", "text"),
    [
        (0, "¥0.00"),
        (1, "¥0.01"),
        (99, "¥0.99"),
        (9900, "¥99.00"),
        (123456, "¥1,234.56"),
        (-100, "-¥1.00"),
        (-123456789, "-¥1,234,567.89"),
        (2**53 + 1, "¥90,071,992,547,409.93"),  # beyond float's exact integers
        (10**20 + 7, "¥1,000,000,000,000,000,000.07"),
        (np.int64(9_007_199_254_740_993), "¥90,071,992,547,409.93"),
    ],
)
def test_fmt_yuan_is_exact(fen, text):
    assert fmt_yuan(fen) == text


def test_yuan_is_a_decimal_and_refuses_floats():
    assert yuan(9900) == Decimal("99.00")
    assert str(yuan(9900)) == "99.00"
    assert str(yuan(-5)) == "-0.05"
    assert yuan(None) is None
    assert yuan(pd.NA) is None
    assert yuan(Decimal(12)) == Decimal("0.12")
    with pytest.raises(TypeError, match="float"):
        yuan(99.0)
    with pytest.raises(TypeError):
        fmt_yuan(0.1)
    with pytest.raises(TypeError):
        fmt_yuan(True)
    with pytest.raises(ValueError, match="whole"):
        yuan(Decimal("1.5"))


def test_fmt_yuan_options_and_fee_text():
    assert fmt_yuan(100, signed=True) == "+¥1.00"
    assert fmt_yuan(0, signed=True) == "¥0.00"
    assert fmt_yuan(None) == ""
    assert fmt_yuan(pd.NA, empty="—") == "—"
    assert fmt_fee(99000) == "¥0.99"
    assert fmt_fee(17998) == "¥0.17998"
    assert fmt_fee(-8000) == "-¥0.08"
    assert fmt_fee(123456789000) == "¥1,234,567.89"
    assert fmt_fee(1) == "¥0.00001"
    assert fmt_fee(None) == ""


def test_rates():
    assert parse_rate("0.60%") == Decimal("0.60")
    assert parse_rate(" 0.38 % ") == Decimal("0.38")
    assert parse_rate(Decimal("0.54")) == Decimal("0.54")
    for bad in ("0.006", "0,6%", 0.6, "abc%"):
        with pytest.raises(ValueError, match=r"0\.60%"):
            parse_rate(bad)
    assert finance.fmt_rate(Decimal("0.6")) == "0.6000%"
    assert finance.fmt_rate(None) == ""


def test_for_display_renames_money_columns_to_yuan_text():
    frame = pd.DataFrame({"mchid": ["1"], "bill_fen": pd.array([9900], dtype="Int64"), "fee_millifen": [99000]})
    shown = finance.for_display(frame)
    assert list(shown.columns) == ["mchid", "bill_yuan", "fee_yuan"]
    assert shown.iloc[0].tolist() == ["1", "¥99.00", "¥0.99"]


# --- masking --------------------------------------------------------------------------------


def test_mask_id_and_text():
    assert mask_id(OPENID) == "oLX***9k1"
    assert mask_id("short") == "***"
    assert mask_id("") == ""
    assert mask_id(None) is None
    sentence = f"payer {OPENID} and payer {OTHER_OPENID}, transaction 4200002601202611266875975104"
    masked = mask_text(sentence)
    assert OPENID not in masked
    assert OTHER_OPENID not in masked
    assert "4200002601202611266875975104" in masked
    # things that are not openids stay as they are
    for keep in ("PUB_KEY_ID_0119000001003419283276483503056413", "f00dcafe-0000-4000-8000-000000000012", "CB0002S1"):
        assert mask_text(keep) == keep
    assert mask_text(None) is None


def test_mask_frame_masks_payer_columns_and_openids_in_text():
    frame = pd.DataFrame(
        {
            "openid": [OPENID, None],
            "detail": [f"paid by {OTHER_OPENID}", "nothing here"],
            "amount_fen": pd.array([1, 2], dtype="Int64"),
            "notes": pd.Series([{"openid": OPENID}, None], dtype=object),
        }
    )
    masked = mask_frame(frame)
    assert OPENID not in masked.to_string()
    assert OTHER_OPENID not in masked.to_string()
    assert masked["detail"].tolist()[1] == "nothing here"
    assert masked["amount_fen"].tolist() == [1, 2]


# --- the warehouse: allow-list, exact types, read-only --------------------------------------


@pytest.fixture
def warehouse(tmp_path) -> Path:
    """An empty migrated warehouse with the staging views and marts, plus one run and two items."""
    path = tmp_path / "warehouse.duckdb"
    con = connect(path)
    migrate(con)
    run_models(con, "staging")
    run_models(con, "marts")
    now = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
    con.execute(
        "insert into recon.runs values ('r1', date '2026-11-26', date '2026-11-24', ['1900000101'], 2, 0, 0, false,"
        " ?, ?, 2, 1, true)",
        [now, now],
    )
    items = "insert into recon.items (recon_date, mchid, item_kind, item_key, class, state, bill_fen, local_fen,"
    items += " detail, run_id) values (date '2026-11-26', '1900000101', 'payment', ?, ?, ?, ?, ?, ?, 'r1')"
    con.execute(items, ["A1", "matched", "matched", 2**53 + 1, 2**53 + 1, f"payer {OPENID}"])
    con.execute(items, ["A2", "amount_mismatch", "open", 9900, None, None])
    con.close()
    return path


def test_only_documented_marts_can_be_read(warehouse):
    wh = Warehouse(warehouse)
    for name in ("raw.trade_bill_rows", "trade_bill_rows", "recon.items", "mart_runs; drop table recon.runs", ""):
        with pytest.raises(MartNotAllowed):
            wh.mart(name)
    with pytest.raises(MartNotAllowed, match="column"):
        wh.mart("mart_recon_items", where={"class = class or 1": 1})
    with pytest.raises(MartNotAllowed):
        wh.mart("mart_recon_items", where={"openid": "x"})  # a column the mart does not have
    with pytest.raises(MartNotAllowed, match="bogus"):
        wh.recon_items(classes=["bogus"])
    with pytest.raises(MartNotAllowed):
        wh.control_totals(classes=["amount_mismatch"])  # that mart has no class column
    with pytest.raises(MartNotAllowed):
        wh.mart("mart_recon_items", order_by=["recon_date; select 1"])
    assert set(finance.MARTS) == {p.stem for p in (finance.PROJECT_ROOT / "sql" / "marts").glob("*.sql")}


def test_money_comes_back_exact_and_payers_masked(warehouse):
    wh = Warehouse(warehouse)
    summary = wh.daily_summary(classes="matched")
    assert str(summary["bill_fen"].dtype) == "Int64"  # a SUM (HUGEINT) would be float64 through .df()
    assert summary["bill_fen"].tolist() == [2**53 + 1]
    items = wh.recon_items(where={"item_key": ["A1", "A2"]}, order_by=("item_key desc",))
    assert items["item_key"].tolist() == ["A2", "A1"]
    assert items["local_fen"].isna().tolist() == [True, False]
    assert str(items["local_fen"].dtype) == "Int64"
    assert OPENID not in items.to_string()
    assert items["recon_date"].tolist() == [date(2026, 11, 26)] * 2
    runs = wh.runs(merchants=["1900000101"])
    assert str(runs["started_at"].dt.tz) == "Asia/Shanghai"
    assert runs["started_at"].iloc[0].hour == 10
    assert wh.runs(merchants=["1900000999"]).empty
    assert wh.recon_items(start="2026-11-27").empty
    assert len(wh.recon_items(start=date(2026, 11, 26), end="2026-11-26", merchants="1900000101")) == 2
    assert wh.period() == (date(2026, 11, 20), date(2026, 11, 26))
    assert wh.period("2026-11-25", days=3) == (date(2026, 11, 25), date(2026, 11, 26))


def test_each_call_closes_the_file_so_a_writer_can_open_it(warehouse):
    wh = Warehouse(warehouse)
    wh.runs()
    writer = duckdb.connect(str(warehouse))  # read-write: fails if anything still held the file
    writer.execute("delete from recon.items where item_key = 'A2'")
    writer.close()
    assert wh.recon_items()["item_key"].tolist() == ["A1"]


def test_a_missing_warehouse_or_mart_is_a_clear_error(tmp_path, warehouse):
    with pytest.raises(finance.WarehouseMissing, match="no warehouse"):
        Warehouse(tmp_path / "nope.duckdb").runs()
    con = duckdb.connect(str(warehouse))
    con.execute("drop view marts.mart_fund_flow_daily")
    con.close()
    with pytest.raises(finance.MartNotBuilt, match="next nightly run"):
        Warehouse(warehouse).fund_flow_daily()


def test_relative_paths_are_from_the_project_root():
    assert Warehouse().file == finance.PROJECT_ROOT / "var" / "warehouse.duckdb"
    assert finance.project_path("/abs/x") == Path("/abs/x")


# --- evidence: the bill archive -------------------------------------------------------------

HEADER = "交易时间,公众账号ID,商户号,微信订单号,商户订单号,用户标识,交易状态,应结订单金额,商品名称"
ROW = f"`2026-11-26 09:02:00,`wx1,`1900000101,`4200002601,`CB0002S1,`{OPENID},`SUCCESS,`99.00,`课程 CB0002-1"
SUMMARY = "总交易单数,应结订单总金额"


def archived(root: Path, *, gz: bool = True) -> str:
    relative = "mchid=1900000101/bill_type=trade_all/bill_date=2026-11-26/" + "a" * 40 + (".csv.gz" if gz else ".csv")
    target = root / relative
    target.parent.mkdir(parents=True)
    text = "\ufeff" + "\r\n".join([HEADER, ROW, ROW.replace("CB0002S1", "CB0003S1"), SUMMARY, "`2,`198.00"]) + "\r\n"
    target.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return relative


@pytest.mark.parametrize("gz", [True, False])
def test_read_bill_line(tmp_path, gz):
    relative = archived(tmp_path, gz=gz)
    line = read_bill_line(tmp_path, relative, 2)
    assert line.line_no == 2
    assert line.fields["商户订单号"] == "CB0002S1"
    assert line.fields["应结订单金额"] == "99.00"
    assert line.fields["用户标识"] == "oLX***9k1"
    assert OPENID not in line.text
    assert line.text.startswith("`2026-11-26 09:02:00,`wx1,")
    assert "`99.00," in line.text
    assert list(line.frame().columns) == ["字段 field", "值 value"]
    assert read_bill_line(tmp_path, relative, 3).fields["商户订单号"] == "CB0003S1"
    assert read_bill_line(tmp_path, relative, 5).fields == {"总交易单数": "2", "应结订单总金额": "198.00"}
    assert read_bill_line(tmp_path, relative, 1).fields["#1"] == "交易时间"  # the BOM is not part of it


def test_read_bill_line_refuses_what_is_not_there(tmp_path):
    relative = archived(tmp_path)
    with pytest.raises(EvidenceNotFound, match="5 lines"):
        read_bill_line(tmp_path, relative, 9)
    with pytest.raises(EvidenceNotFound):
        read_bill_line(tmp_path, relative, 0)
    with pytest.raises(EvidenceNotFound, match="outside"):
        read_bill_line(tmp_path / "mchid=1900000101", "../../etc/passwd", 1)
    with pytest.raises(EvidenceNotFound, match="no file"):
        read_bill_line(tmp_path, "mchid=1/missing.csv.gz", 1)


# --- evidence: the notification log ---------------------------------------------------------


def test_read_notification_line_shows_the_envelope_and_no_secret(tmp_path):
    body = {
        "id": "f00dcafe-0000-4000-8000-000000000012",
        "create_time": "2026-11-26T09:10:15+08:00",
        "event_type": "TRANSACTION.SUCCESS",
        "resource_type": "encrypt-resource",
        "summary": "支付成功",
        "resource": {
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": "c2VjcmV0IHBheWxvYWQ=" * 10,
            "associated_data": "transaction",
            "original_type": "transaction",
            "nonce": "abcdefghijkl",
        },
    }
    entry = LogEntry(
        received_at=datetime(2026, 11, 26, 1, 10, 15, tzinfo=UTC),
        mchid="1900000100",
        outcome="accepted",
        reason=None,
        notification_id=body["id"],
        headers={"wechatpay-serial": "PUB_KEY_ID_01", "wechatpay-signature": "S" * 344, "request-id": "R1"},
        body_bytes=json.dumps(body).encode(),
        reply_status=204,
    )
    folder = tmp_path / "1900000100"
    folder.mkdir()
    (folder / "2026-11-26.jsonl").write_bytes(entry.to_line() + b"{not json\n" + entry.to_line())
    note = read_notification_line(tmp_path, "1900000100/2026-11-26.jsonl", 1)
    assert note.receiver["outcome"] == "accepted"
    assert note.receiver["received_at"] == "2026-11-26T09:10:15.000+08:00"
    assert note.envelope["id"] == body["id"]
    assert note.envelope["resource.algorithm"] == "AEAD_AES_256_GCM"
    assert note.envelope["resource.ciphertext"] == "(200 Base64 characters, encrypted)"
    assert note.headers["wechatpay-serial"] == "PUB_KEY_ID_01"
    assert note.headers["wechatpay-signature"].endswith("(344 characters)")
    shown = note.frame().to_string()
    assert "c2VjcmV0" not in shown
    assert "S" * 20 not in shown
    unreadable = read_notification_line(tmp_path, "1900000100/2026-11-26.jsonl", 2)
    assert "unreadable" in unreadable.receiver
    assert unreadable.envelope == {}
    with pytest.raises(EvidenceNotFound):
        read_notification_line(tmp_path, "1900000100/2026-11-26.jsonl", 4)

    import dataclasses

    from flows.notifications.rejected import refusal_record

    cjk = dataclasses.replace(
        entry, body_bytes=json.dumps({**body, "summary": "支付成功" * 200}, ensure_ascii=False).encode()
    )
    record = refusal_record(
        received_at=entry.received_at,
        mchid="1900000100",
        reason="SignatureMismatchError: forged",
        status=401,
        raw_headers=[(b"wechatpay-serial", b"PUB_KEY_ID_01")],
        body=b'{"id":"EV-forged"}',
        complete=True,
        peer="203.0.113.9",
        path="/wxpay/notify/1900000100",
    )
    (folder / "2026-11-27.jsonl").write_bytes(cjk.to_line() + record.to_line())
    assert b'"body_b64"' in cjk.to_line()  # mostly Chinese: Base64 is the shorter form
    assert read_notification_line(tmp_path, "1900000100/2026-11-27.jsonl", 1).envelope["id"] == body["id"]
    refused = read_notification_line(tmp_path, "1900000100/2026-11-27.jsonl", 2)
    assert (refused.receiver["peer"], refused.receiver["body_length"]) == ("203.0.113.9", 18)
    assert refused.envelope["body"].startswith("not kept")
    with pytest.raises(EvidenceNotFound, match="outside"):
        read_notification_line(folder, "../../x.jsonl", 1)


def test_verification_status_comes_from_the_notification_mart():
    empty = pd.DataFrame({"verified": [], "failure": [], "failure_detail": []})
    assert finance.verification_status(empty).startswith("无记录 no finding")
    ok = pd.DataFrame({"verified": [True], "failure": [None], "failure_detail": [None]})
    assert finance.verification_status(ok).startswith("已验证 verified")
    bad = pd.DataFrame({"verified": [False], "failure": ["SignatureMismatchError"], "failure_detail": ["no"]})
    assert finance.verification_status(bad) == "未通过验证 NOT verified: SignatureMismatchError: no"


# --- explanations and charts ----------------------------------------------------------------


def test_every_class_is_explained_in_chinese_and_english():
    assert set(finance.EXPLANATIONS) == set(CLASSES)
    for cls in CLASSES:
        about = finance.explain(cls)
        assert about.label_zh
        assert any("\u4e00" <= ch <= "\u9fff" for ch in about.zh)
        assert not any("\u4e00" <= ch <= "\u9fff" for ch in about.en)
        assert len(about.en) > 20
        assert finance.class_label(cls) == f"{about.label_zh} {cls}"
    assert finance.explain("amount_mismatch").zh.startswith("账单金额与本地记录不一致")
    with pytest.raises(MartNotAllowed):
        finance.explain("nope")


def test_a_cjk_font_is_configured_and_has_the_glyphs(tmp_path):
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    family = finance.use_cjk_font()
    path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    font = FT2Font(path)
    for ch in "账单金额与本地记录不一致已对平异常元¥":
        assert font.get_char_index(ord(ch)) != 0, ch
    fig, ax = plt.subplots()
    ax.bar(["账单 bill", "本地 local"], [9900, 10000])
    finance.yuan_axis(ax)
    ax.set_title("金额不一致 amount_mismatch")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        saved = finance.save_chart(fig, tmp_path, "probe")
    plt.close(fig)
    assert not [w for w in seen if "missing from font" in str(w.message)]
    assert saved.read_bytes()[:4] == b"\x89PNG"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "¥0"
    assert all(label.startswith("¥") for label in labels)
    assert ax.get_ylabel() == "金额 (元) amount (yuan)"
