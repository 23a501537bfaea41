"""The raw bill archive: every verified bill, kept exactly as downloaded, forever.

WeChat Pay deletes bills after about three months; the archive is the audit record and lets
any day be parsed again. Layout (Hive-style partitions, one file per distinct content)::

    <root>/mchid=1900000101/bill_type=trade_all/bill_date=2026-11-26/<sha1>.csv.gz
    <root>/mchid=1900000101/bill_type=trade_all/bill_date=2026-11-26/<sha1>.json

Bills list every payer of the day (their openids): the archive is the only place the product keeps
them, owner-only — the directories it creates ``0700``, bill files and sidecars ``0600``.

The file name is the SHA1 of the *decompressed* bill (WeChat's ``hash_value``), so the same
bill downloaded twice is one file, and a different file for an already archived day lands
beside the old one, never over it. The JSON sidecar records the digest, sizes, when it was
downloaded and, once loaded, the parser version that read it.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from flows.storage import StorageError, storage_fault_in

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
"""The archive's modes: owner-only (the download writes its file ``0600`` itself: :mod:`wxpay.bills`)."""


def raise_storage_fault(exc: BaseException, path: Path, doing: str) -> None:
    """Raise ``exc`` as the :class:`~flows.storage.StorageError` it is, if it is one (else return)."""
    fault = storage_fault_in(exc, path, doing)
    if fault is not None and fault is not exc:
        raise fault from exc


@dataclass(frozen=True)
class ArchivedBill:
    mchid: str
    bill_type: str  # trade_all, trade_success, trade_refund, fundflow_basic ...
    bill_date: date
    sha1: str
    path: Path
    gzip: bool

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(f"{self.sha1}.json")

    def metadata(self) -> dict:
        return json.loads(self.sidecar.read_text()) if self.sidecar.exists() else {}


class BillArchive:
    """Bills under ``root``, partitioned by merchant, bill type and date."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def directory(self, mchid: str, bill_type: str, bill_date: date) -> Path:
        if not mchid.isdigit() or not re.fullmatch(r"[a-z_]+", bill_type):
            raise ValueError(f"not an archive partition: mchid={mchid!r} bill_type={bill_type!r}")
        return self.root / f"mchid={mchid}" / f"bill_type={bill_type}" / f"bill_date={bill_date.isoformat()}"

    def target(self, mchid: str, bill_type: str, bill_date: date, sha1: str, *, gzip: bool = True) -> ArchivedBill:
        """Where a bill with this digest belongs (the directory is created)."""
        digest = sha1.strip().lower()
        if not _SHA1.match(digest):
            raise ValueError(f"not a SHA1 hex digest: {sha1!r}")
        folder = self.directory(mchid, bill_type, bill_date)
        try:
            self.root.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            level = self.root
            for part in folder.relative_to(self.root).parts:
                level = level / part
                level.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        except FileExistsError as exc:  # a file where a directory should be
            in_the_way = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            raise StorageError(exc.filename or folder, "making a bill archive directory", in_the_way) from exc
        except OSError as exc:
            raise_storage_fault(exc, folder, "making a bill archive directory")
            raise
        name = f"{digest}.csv.gz" if gzip else f"{digest}.csv"
        return ArchivedBill(mchid, bill_type, bill_date, digest, folder / name, gzip)

    def source_label(self, bill: ArchivedBill) -> str:
        """The bill's path inside the archive: what a load records as its ``source_label``."""
        return str(bill.path.relative_to(self.root))

    def record(self, bill: ArchivedBill, **facts: object) -> None:
        """Merge ``facts`` into the sidecar JSON (written atomically)."""
        data = {**bill.metadata(), **{k: v for k, v in asdict(bill).items() if k != "path"}, **facts}
        data["bill_date"] = bill.bill_date.isoformat()
        data["file"] = bill.path.name
        data.setdefault("archived_at", datetime.now(UTC).isoformat(timespec="seconds"))
        tmp = bill.sidecar.with_suffix(".json.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True))
            os.replace(tmp, bill.sidecar)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise_storage_fault(exc, bill.sidecar, "writing a bill archive sidecar")
            raise

    def files(self, mchid: str, bill_type: str, bill_date: date) -> list[ArchivedBill]:
        """Every archived file of one (merchant, type, day), oldest first."""
        folder = self.directory(mchid, bill_type, bill_date)
        found = []
        for path in folder.glob("*.csv*") if folder.exists() else ():
            sha1 = path.name.split(".", 1)[0]
            if _SHA1.match(sha1) and not path.name.endswith(".part"):
                found.append(ArchivedBill(mchid, bill_type, bill_date, sha1, path, path.name.endswith(".gz")))
        return sorted(found, key=lambda b: (b.metadata().get("archived_at", ""), b.path.stat().st_mtime))

    def latest(self, mchid: str, bill_type: str, bill_date: date) -> ArchivedBill | None:
        files = self.files(mchid, bill_type, bill_date)
        return files[-1] if files else None
