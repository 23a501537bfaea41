"""Read the merchant's own combine-order records into Arrow, in one canonical shape, for a window of time.

Merchants' tables differ, so a source is configuration (:class:`LocalOrdersSource`, :class:`LocalRefundsSource`)
and every kind of source ends in the same Arrow schema, which the reconciliation relies on:
:data:`LOCAL_ORDER_SCHEMA` and :data:`LOCAL_REFUND_SCHEMA`, drawn (with how timestamps, keys, statuses and amounts
are converted into them) in ``canonical``.

Source kinds: ``postgresql`` and ``mysql`` (MySQL/MariaDB) URLs, read with connectorx ``return_type="arrow"``;
``parquet`` and ``csv`` files (paths or globs), read with DuckDB (CSV is read as text, so yuan never passes
through a float and keys keep their leading zeros; the header row names the columns).

A source is either a ``table`` (databases; for files, the files themselves) with ``columns`` mapping canonical
name -> source column (identity by default; ``None`` for an optional column the source does not have), or a
``query`` the operator writes (for files it reads the view ``source``). The window is pushed down:

* table mode generates ``... WHERE (created_at in window) OR (paid_at in window) OR created_at IS NULL`` (for
  refunds succeeded_at instead of paid_at); rows with a null created_at are read so they fail loudly.
* query mode: the query must contain the window placeholders ``{start}`` / ``{end}`` (instants: a TIMESTAMPTZ
  literal for PostgreSQL, a bind parameter for DuckDB; MySQL has no zoned type, so there they are local times in
  ``naive_timezone``) or ``{start_local}`` / ``{end_local}`` (a naive TIMESTAMP in ``naive_timezone``, for naive
  columns). Write them bare, unquoted: ``WHERE paid >= {start} AND paid < {end}``. The window is half-open.

Injection: the query and table/column names are trusted configuration; only the window values are substituted.
connectorx has no bind parameters, so those are rendered by this module from ``datetime`` objects and checked
against ``^[0-9: .+-]+$`` before use; DuckDB gets real bind parameters. Identifiers are quoted.

Know your types: MySQL TIMESTAMP columns arrive as local times of the server session's ``time_zone``, so set
``naive_timezone`` to it; PostgreSQL CHAR(n) values arrive blank-padded (``rtrim`` them in a query).

Every problem raises :class:`LocalSourceError` naming the column, the source and the first offending key (a
duplicate key, an amount beyond int64 fen included); no row is dropped silently. A read that looks like a broken
export (empty, or sharply shrunken against what the warehouse holds for the window: ``local_min_ratio``) raises
:class:`SuspiciousSourceError` before anything is replaced. These errors are deterministic: never retried.
Not used: connectorx ``partition_on`` (it silently skips rows whose partition column is NULL).
connectorx reads PostgreSQL NUMERIC as decimal(38,10): digits past the 10th decimal are cut before we see them.

Modules: ``source`` (what a source is), ``reader`` (reading one for a window), ``canonical`` (the shape
every source ends in), ``importer`` (a read replaces its window of ``raw.local_orders`` / ``raw.local_refunds``).
"""

from __future__ import annotations

from flows.sources.canonical import (
    LOCAL_ORDER_SCHEMA,
    LOCAL_REFUND_SCHEMA,
    ORDER_STATUSES,
    REFUND_STATUSES,
    LocalSourceError,
    SuspiciousSourceError,
)
from flows.sources.importer import import_local
from flows.sources.reader import bill_day_window, read_local_orders, read_local_refunds
from flows.sources.source import LocalOrdersSource, LocalRefundsSource

__all__ = [
    "LOCAL_ORDER_SCHEMA",
    "LOCAL_REFUND_SCHEMA",
    "ORDER_STATUSES",
    "REFUND_STATUSES",
    "LocalOrdersSource",
    "LocalRefundsSource",
    "LocalSourceError",
    "SuspiciousSourceError",
    "bill_day_window",
    "import_local",
    "read_local_orders",
    "read_local_refunds",
]
