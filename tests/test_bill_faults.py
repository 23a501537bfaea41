"""A bill load under faults, in a process of its own (``tests/load_process.py``): killed with SIGKILL at several
points, or writing under a file-size limit (``RLIMIT_FSIZE``: every write past it fails with EFBIG, as on a full
disk; a small filesystem needs root). The day is absent or complete, never partial; the next start removes the
debris; a re-run gives the same counts and sums; a write error is a storage fault naming its file."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from flows.bills import remove_debris
from flows.warehouse import connect
from wxpay.sim.billgen import generate_trade_bill

pytestmark = pytest.mark.slow  # subprocesses

ROOT = Path(__file__).parents[1]
MCHID, DAY = "1900000109", date(2025, 3, 10)


@pytest.fixture(scope="module")
def bill(tmp_path_factory):
    path = tmp_path_factory.mktemp("bill") / "bill.csv.gz"
    return path, generate_trade_bill(path, rows=50_000, seed=11, bill_date=DAY, mchid=MCHID)


class Place:
    def __init__(self, root: Path):
        self.warehouse, self.archive, self.staging = root / "warehouse.duckdb", root / "archive", root / "staging"
        self.staging.mkdir(parents=True)

    def load(self, bill, *options: str) -> subprocess.CompletedProcess:
        path, fp = bill
        places = [self.warehouse, self.archive, self.staging]
        command = [sys.executable, "-m", "tests.load_process", *places, path, fp.sha1]
        return subprocess.run([*map(str, command), *options], cwd=ROOT, capture_output=True, text=True, timeout=300)

    def day(self) -> tuple:
        """Rows, settlement and fee sums of the day, and its raw.bill_loads rows."""
        con = connect(self.warehouse, read_only=True)
        try:
            return con.execute(
                "select count(*), sum(settlement_amount_fen), sum(fee_millifen),"
                " (select count(*) from raw.bill_loads where bill_date = $1) from raw.trade_bill_rows"
                " where bill_mchid = $2 and bill_date = $1",
                [DAY, MCHID],
            ).fetchone()
        finally:
            con.close()

    def debris(self) -> list[Path]:
        """Staging parts and archive temporary files on disk (what a crashed load can leave)."""
        return sorted([*self.staging.glob("wxbill-*/part*.csv"), *self.archive.rglob(".*.part")])


def complete(fp) -> tuple:
    return (fp.row_count, fp.settlement_amount_fen, fp.fee_millifen, 1)


ABSENT = (0, None, None, 0)


def outcome(process: subprocess.CompletedProcess) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("point", ["stream", "commit", "after"])
def test_a_load_killed_leaves_the_day_absent_or_complete_and_the_next_start_cleans_up(tmp_path, bill, point):
    place = Place(tmp_path)
    killed = place.load(bill, "--kill", point)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert place.day() == (complete(bill[1]) if point == "after" else ABSENT)
    left = place.debris()
    if point == "stream":  # mid-download: staged parts and the archive's download in progress
        assert any(p.name.startswith("part") for p in left)
        assert any(p.name.endswith(".part") and p.name.startswith(".") for p in left)
    print(f"kill -9 at {point}: {len(left)} file(s) left, {sum(p.stat().st_size for p in left)} bytes")

    assert not remove_debris(archive_root=place.archive, staging_dir=place.staging)  # fresh: maybe a live load's
    assert place.debris() == left
    removed = remove_debris(archive_root=place.archive, staging_dir=place.staging, min_age=timedelta(0))
    assert sorted(removed.files) == left
    assert place.debris() == []
    assert list(place.staging.iterdir()) == []  # the crashed load's folder too

    again = outcome(place.load(bill))
    assert again == {"rows": bill[1].row_count, "loader": "streamed"}
    assert place.day() == complete(bill[1])  # the same counts and sums as a load that was never killed
    assert place.debris() == []


def test_debris_is_recognised_by_name_only(tmp_path):
    place = Place(tmp_path)
    day = place.archive / f"mchid={MCHID}" / "bill_type=trade_all" / f"bill_date={DAY}"
    day.mkdir(parents=True)
    ours = [day / f".{'a' * 40}.csv.gz.0123abcd.part", place.staging / "wxbill-x1y2z3" / "part00001.csv"]
    theirs = [
        day / f"{'a' * 40}.csv.gz",  # an archived bill
        day / "notes.part",
        place.staging / "wxbill-x1y2z3" / "notes.txt",
        place.staging / "other-tool" / "part00001.csv",
    ]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    removed = remove_debris(archive_root=place.archive, staging_dir=place.staging, min_age=timedelta(0))
    assert sorted(removed.files) == sorted(ours)
    assert all(path.exists() for path in theirs)
    assert str(removed) == "2 file(s) left by a crashed run removed (0.0 MiB)"


@pytest.mark.parametrize(
    ("where", "options", "named"),
    [
        ("the archive", ["--fsize", "200000"], "archive/mchid=1900000109/bill_type=trade_all/bill_date=2025-03-10"),
        ("staging", ["--fsize", "400000", "--part-lines", "2000"], "/part00001.csv"),
        ("the warehouse", ["--fsize", "3500000", "--part-lines", "500"], "warehouse.duckdb"),
    ],
)
def test_a_full_disk_during_a_load_is_a_storage_fault_with_nothing_half_written(tmp_path, bill, where, options, named):
    place = Place(tmp_path)
    failed = outcome(place.load(bill, *options))
    print(f"write limit while writing {where}: {failed['message']}")
    assert (failed["error"], failed["kind"], failed["exit"]) == ("StorageError", "storage", 8)
    assert named in failed["message"]
    assert "File too large (EFBIG); what to do: a file-size limit was hit" in failed["message"]
    assert "BillFormatError" not in failed["message"]
    assert place.day() == ABSENT  # nothing half-written: the transaction never committed
    assert list(place.archive.rglob("*.csv.gz")) == [] or where == "the warehouse"  # verified before the load failed
    assert [p for p in place.debris() if p.suffix == ".part"] == []  # the download's temporary file is removed
    assert outcome(place.load(bill)) == {"rows": bill[1].row_count, "loader": "streamed"}  # space again: loads
    assert place.day() == complete(bill[1])
