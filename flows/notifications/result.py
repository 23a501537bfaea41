"""A batch's result: its rows as Arrow record batches, with what the run counts."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from flows.notifications.schema import _CHECKS, _LINES, _SUB_ORDERS, _arrays


@dataclass
class _Result:
    log_file: str
    lines: pa.RecordBatch
    checks: pa.RecordBatch
    sub_orders: pa.RecordBatch
    checked: int
    failed: int
    unreadable: int


def _unreadable_row(line_no: int, size: int, reason: str) -> tuple:
    return (line_no, None, None, "unreadable", None, None, None, None, reason, size)


class _Rows:
    """The rows of one batch (tuples in schema order), turned into Arrow at the end."""

    def __init__(self) -> None:
        self.lines: list[tuple] = []
        self.checks: list[tuple] = []
        self.sub_orders: list[tuple] = []
        self.failed = self.unreadable = 0

    def result(self, log_file: str) -> _Result:
        return _Result(
            log_file,
            _arrays(self.lines, _LINES),
            _arrays(self.checks, _CHECKS),
            _arrays(self.sub_orders, _SUB_ORDERS),
            len(self.checks),
            self.failed,
            self.unreadable,
        )


def _unreadable_result(log_file: str, line_no: int, size: int, reason: str) -> _Result:
    rows = _Rows()
    rows.lines.append(_unreadable_row(line_no, size, reason))
    rows.unreadable = 1
    return rows.result(log_file)
