"""The raw bill archive layout and its sidecars."""

from __future__ import annotations

from datetime import date

import pytest

from flows.bills import BillArchive

SHA = "1aa6884effcea91b1d0a9fecb81757576c5def83"


def test_layout_and_sidecar(tmp_path):
    archive = BillArchive(tmp_path)
    bill = archive.target("1900000109", "trade_all", date(2025, 3, 10), SHA.upper())
    assert bill.path == tmp_path / "mchid=1900000109/bill_type=trade_all/bill_date=2025-03-10" / f"{SHA}.csv.gz"
    bill.path.write_bytes(b"x")
    archive.record(bill, size=1)
    archive.record(bill, parser_version="p1")
    meta = bill.metadata()
    assert meta["size"] == 1
    assert meta["parser_version"] == "p1"
    assert meta["sha1"] == SHA
    assert archive.latest("1900000109", "trade_all", date(2025, 3, 10)) == bill


def test_partitions_cannot_escape_the_root(tmp_path):
    archive = BillArchive(tmp_path)
    with pytest.raises(ValueError, match="partition"):
        archive.target("../../etc", "trade_all", date(2025, 3, 10), SHA)
    with pytest.raises(ValueError, match="partition"):
        archive.target("1900000109", "trade/../x", date(2025, 3, 10), SHA)
    with pytest.raises(ValueError, match="SHA1"):
        archive.target("1900000109", "trade_all", date(2025, 3, 10), "../x")


def test_a_missing_day_has_no_files(tmp_path):
    assert BillArchive(tmp_path).files("1900000109", "trade_all", date(2025, 3, 10)) == []


def test_a_file_where_the_archive_should_be_is_a_storage_fault_naming_it(tmp_path):
    from flows.storage import StorageError

    (tmp_path / "archive").write_text("not a directory")
    with pytest.raises(StorageError) as info:
        BillArchive(tmp_path / "archive").target("1900000109", "trade_all", date(2025, 3, 10), SHA)
    assert info.value.code == "ENOTDIR"
    assert str(tmp_path / "archive") in str(info.value)
    assert "what to do: something that is not a directory is in the way: move it" in str(info.value)
