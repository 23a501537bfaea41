"""The DuckDB warehouse: it opens the file, applies the schema and runs the SQL of ``sql/``.

Tables (created by ``sql/migrations``; units: ``*_fen`` BIGINT fen, ``fee_millifen`` BIGINT
milli-fen, times TIMESTAMPTZ converted from Beijing time)::

    meta.schema_migrations   version, name, checksum, applied_at
    raw.bill_loads           one row per loaded (mchid, bill_type, bill_date): archive_sha1, source_label,
                             parser_version, row_count, header_titles, extra_columns, absent_columns,
                             extra_summary_columns, loaded_at
    raw.trade_bill_rows      every trade bill kind (trade_all / trade_success / trade_refund) in one table:
                             load key (bill_mchid, bill_type, bill_date), lineage (archive_sha1, line_no), then
                             the 29 current + 3 old-format columns of wxpay.billformat.TRADE_COLUMNS but
                             the payer's openid (kept only in the bill archive: migration 110)
                             (refund columns NULL where a kind lacks them), fee_rate text + fee_rate_pct
                             DECIMAL(7,4), extra_columns JSON for unknown titles
    raw.trade_bill_summaries the summary line of each trade load: row_count and each printed total
    raw.fund_flow_rows       fund-flow bill rows (bill_type fundflow_basic / _operation / _fees), same key
                             and lineage
    raw.fund_flow_summaries  the fund-flow summary line: row_count, income/expense counts and amounts

``bill_mchid`` is the merchant whose bill it is (the load key); ``mchid`` is the 商户号 column.

Two backends, chosen by settings (``warehouse_backend``): a DuckDB file (the default), or a DuckLake —
a catalog database plus Parquet files on shared storage — that many processes on many machines write
and read at once (``lake``; its few differences are listed there).

Modules: ``connection`` (open, transactions, the memory limit of a load), ``lake`` (DuckLake), ``migrations``,
``models`` (views, tables and checks from ``sql/``, in dependency order), ``locks`` (one run at a
time; patience with readers). Bills are loaded by :mod:`flows.bills`, the reconciliation by
:mod:`flows.recon`: the warehouse itself only runs SQL.
"""

from __future__ import annotations

from flows.warehouse.connection import (
    DEFAULT_MEMORY_LIMIT,
    LOAD_MEMORY_LIMIT,
    connect,
    cursor,
    is_lake,
    lowered_memory_limit,
    quote_literal,
    transaction,
)
from flows.warehouse.lake import Lake, LakeUnavailable, current_snapshot, is_conflict
from flows.warehouse.locks import RunInProgress, WarehouseBusy, open_warehouse, run_lock
from flows.warehouse.migrations import migrate
from flows.warehouse.models import SQL_DIR, build_tables, run_checks, run_models, run_statement

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "LOAD_MEMORY_LIMIT",
    "SQL_DIR",
    "Lake",
    "LakeUnavailable",
    "RunInProgress",
    "WarehouseBusy",
    "build_tables",
    "connect",
    "current_snapshot",
    "cursor",
    "is_conflict",
    "is_lake",
    "lowered_memory_limit",
    "migrate",
    "open_warehouse",
    "quote_literal",
    "run_checks",
    "run_lock",
    "run_models",
    "run_statement",
    "transaction",
]
