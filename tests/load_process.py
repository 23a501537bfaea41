"""A bill load in a process of its own, for the fault tests: killed at a chosen point, or writing under a file-size
limit (``RLIMIT_FSIZE``, what ``ulimit -f`` sets: every write past it fails with EFBIG, like a full disk).

``python -m tests.load_process WAREHOUSE ARCHIVE STAGING BILL SHA1 [--part-lines N] [--kill stream|commit|after]
[--fsize BYTES]`` does what :func:`flows.bills.ingest_bill` does once WeChat Pay has answered the application:
the bill is downloaded (from an ``httpx.MockTransport`` that serves the file: a fake at the network transport
only) into the archive while the streamed loader loads it. ``--kill`` sends this process SIGKILL mid-download
(``stream``, after a few pieces), inside the load's transaction once everything is inserted (``commit``), or
just after the commit (``after``). The last line printed is JSON: the rows loaded, or the error, its kind
(:func:`flows.outcome.classify`) and the exit code the run would end with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
from datetime import date
from pathlib import Path

import httpx

from flows.bills import BillArchive, load_bill_stream
from flows.outcome import ExitCode, classify
from flows.warehouse import connect, migrate
from wxpay.bills import BillApplication, download

MCHID = "1900000109"
DAY = date(2025, 3, 10)
PIECE = 64 * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("warehouse", "archive", "staging", "bill", "sha1"):
        parser.add_argument(name)
    parser.add_argument("--part-lines", type=int, default=2000)
    parser.add_argument("--kill", choices=("stream", "commit", "after"))
    parser.add_argument("--fsize", type=int)
    args = parser.parse_args()

    con = connect(args.warehouse)
    migrate(con)
    archive = BillArchive(args.archive)
    bill = archive.target(MCHID, "trade_all", DAY, args.sha1)
    body = Path(args.bill).read_bytes()

    def pieces():
        for n, start in enumerate(range(0, len(body), PIECE)):
            if args.kill == "stream" and n == len(body) // PIECE // 2:
                os.kill(os.getpid(), signal.SIGKILL)
            yield body[start : start + PIECE]

    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, content=pieces())))
    application = BillApplication(hash_type="SHA1", hash_value=args.sha1, download_url="https://bills.test/b")

    def produce(feed):
        return download(http, application, bill.path, tee=feed).sha1

    def before_commit(con) -> None:
        if args.kill == "commit":
            os.kill(os.getpid(), signal.SIGKILL)

    if args.fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, resource.RLIM_INFINITY))
    try:
        result = load_bill_stream(
            con,
            produce,
            path=bill.path,
            mchid=MCHID,
            bill_date=DAY,
            bill_type="trade_all",
            archive_sha1=args.sha1,
            source_label=str(bill.path.relative_to(archive.root)),
            staging_dir=args.staging,
            part_lines=args.part_lines,
            _after_insert=before_commit,
        )
    except Exception as exc:
        kind = classify(exc)
        print(json.dumps({"error": type(exc).__name__, "message": str(exc), "kind": kind.value,
                          "exit": int(ExitCode[kind.name])}))  # fmt: skip
        return
    if args.kill == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    print(json.dumps({"rows": result.row_count, "loader": result.loader}))


if __name__ == "__main__":
    main()
