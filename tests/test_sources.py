"""flows.sources against real PostgreSQL and MariaDB servers, Parquet and CSV files.

The same logical combine orders are stored in every kind of source, with different column names, amount units,
timestamp types and status vocabularies; every read must give the identical canonical Arrow table.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydantic
import pytest

from flows.sources import (
    LOCAL_ORDER_SCHEMA,
    LOCAL_REFUND_SCHEMA,
    LocalOrdersSource,
    LocalRefundsSource,
    LocalSourceError,
    bill_day_window,
    read_local_orders,
    read_local_refunds,
)

if TYPE_CHECKING:
    from tests.dbservers import MariaDBServer, PostgresServer


BEIJING = ZoneInfo("Asia/Shanghai")
UTC = dt.UTC
M1, M2 = "1900000101", "1900000102"
START, END = bill_day_window(dt.date(2025, 3, 10))
STATUS_MAP = {"paid": "SUCCESS", "unpaid": "NOTPAY", "closed": "CLOSED"}
STATUS_CODES = {"paid": 1, "unpaid": 0, "closed": 2}
CODE_MAP = {"0": "NOTPAY", "1": "SUCCESS", "2": "CLOSED"}


def bj(*args: int) -> dt.datetime:
    """A naive Beijing wall-clock time, as a merchant's DATETIME column stores it."""
    return dt.datetime(*args)


@dataclass(frozen=True)
class Order:
    combine: str
    sub: str
    mchid: str
    yuan: Decimal
    status: str  # the merchant's word: paid / unpaid / closed
    created: dt.datetime  # naive Beijing
    paid: dt.datetime | None
    txn: str | None
    description: str

    @property
    def fen(self) -> int:
        return int(self.yuan * 100)

    @property
    def attach(self) -> str:
        return f"cmb={self.combine}"

    @property
    def keys(self) -> tuple[str, str, str]:
        return self.combine, self.sub, self.mchid

    @property
    def extras(self) -> tuple[str | None, str, str]:
        return self.txn, self.attach, self.description

    def aware(self, value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=BEIJING)


def _orders() -> list[Order]:
    rows: list[Order] = []

    def combine(no, created, paid, status, subs):
        for i, (mchid, yuan) in enumerate(subs, start=1):
            txn = f"42000026012025{no[-1]}{i:012d}" if paid else None
            rows.append(Order(no, f"{no}S{i}", mchid, Decimal(yuan), status, created, paid, txn, f"课程 {no[-1]}{i}"))

    # inside: created just before midnight, paid just after (lands in the 03-10 bill)
    combine(
        "C20250309A", bj(2025, 3, 9, 23, 59, 58, 500000), bj(2025, 3, 10, 0, 0, 1), "paid", [(M1, "0.29"), (M2, "0.57")]
    )
    # inside: created exactly at the window start (inclusive), never paid
    combine("C20250310B", bj(2025, 3, 10), None, "unpaid", [(M1, "19.99"), (M2, "0.01"), (M1, "100.00")])
    # inside: created one microsecond before the window end, closed
    combine("C20250310C", bj(2025, 3, 10, 23, 59, 59, 999999), None, "closed", [(M2, "1.10"), (M1, "0.07")])
    # inside: created in the window, paid after it
    combine("C20250310G", bj(2025, 3, 10, 8), bj(2025, 3, 11, 0, 0, 0, 500000), "paid", [(M1, "12345.67"), (M2, "0.3")])
    # outside: one microsecond before the start, unpaid
    combine("C20250309D", bj(2025, 3, 9, 23, 59, 59, 999999), None, "unpaid", [(M1, "1.00"), (M2, "2.00")])
    # outside: created at the window end (exclusive), paid after
    combine("C20250311E", bj(2025, 3, 11), bj(2025, 3, 11, 0, 0, 5), "paid", [(M1, "3.00"), (M2, "4.00")])
    # outside: two days earlier
    combine("C20250308F", bj(2025, 3, 8, 10), bj(2025, 3, 8, 10, 1), "paid", [(M2, "5.55"), (M1, "6.66"), (M2, "0.99")])
    return rows


ORDERS = _orders()
IN_WINDOW = {"C20250309A", "C20250310B", "C20250310C", "C20250310G"}


def expected_orders() -> pa.Table:
    rows = sorted((o for o in ORDERS if o.combine in IN_WINDOW), key=lambda o: (o.combine, o.sub, o.mchid))
    data = {
        "combine_out_trade_no": [o.combine for o in rows],
        "out_trade_no": [o.sub for o in rows],
        "mchid": [o.mchid for o in rows],
        "amount_fen": [o.fen for o in rows],
        "status": [STATUS_MAP[o.status] for o in rows],
        "created_at": [o.aware(o.created) for o in rows],
        "paid_at": [o.aware(o.paid) for o in rows],
        "transaction_id": [o.txn for o in rows],
        "attach": [o.attach for o in rows],
        "description": [o.description for o in rows],
    }
    return pa.Table.from_pydict(data, schema=LOCAL_ORDER_SCHEMA)


def test_expected_data_covers_the_cases():
    table = expected_orders()
    assert table.num_rows == 9
    assert set(table.column("status").to_pylist()) == {"SUCCESS", "NOTPAY", "CLOSED"}
    assert {0.29, 0.57, 19.99} <= {float(o.yuan) for o in ORDERS}
    assert int(0.29 * 100) == 28  # the trap the decimal conversion avoids
    assert table.column("amount_fen").to_pylist()[:2] == [29, 57]


# -- databases and files holding the same logical data -----------------------------------------------------------


@pytest.fixture(scope="module")
def pg(postgres_server: PostgresServer) -> PostgresServer:
    db = postgres_server.create_database("test_sources")
    # connections to this database default to a zone that is neither UTC nor Beijing: results must not care
    db.execute("ALTER DATABASE test_sources SET timezone TO 'America/Los_Angeles'")
    db.execute(
        """
        CREATE TABLE orders_canonical (
            combine_out_trade_no varchar(32), out_trade_no varchar(32), mchid varchar(32), amount_fen bigint,
            status text, created_at timestamptz, paid_at timestamptz, transaction_id varchar(32), attach text,
            description text);
        CREATE SCHEMA shop;
        CREATE TABLE shop."SubOrders" (
            id bigserial primary key, group_no varchar(32), sub_no varchar(32), merchant_id bigint,
            total numeric(12, 2), state text, created timestamp, paid timestamp, wx_txn varchar(32),
            attach text, memo text);
        CREATE TABLE combine_orders (combine_no varchar(32) primary key, state text, created timestamptz,
            paid timestamptz);
        CREATE TABLE sub_orders (combine_no varchar(32) references combine_orders, sub_no varchar(32), mchid text,
            fen bigint, txn text, attach text, description text);
        """
    )
    canonical = ["combine_out_trade_no", "out_trade_no", "mchid", "amount_fen", "status", "created_at", "paid_at"]
    db.load_rows(
        "orders_canonical",
        [*canonical, "transaction_id", "attach", "description"],
        [(*o.keys, o.fen, o.status, o.aware(o.created), o.aware(o.paid), *o.extras) for o in ORDERS],
    )
    db.load_rows(
        "shop.SubOrders",
        ["group_no", "sub_no", "merchant_id", "total", "state", "created", "paid", "wx_txn", "attach", "memo"],
        [
            (o.combine, o.sub, int(o.mchid), o.yuan, o.status, o.created, o.paid, o.txn, o.attach, o.description)
            for o in ORDERS
        ],
    )
    heads = {o.combine: (o.combine, o.status, o.aware(o.created), o.aware(o.paid)) for o in ORDERS}
    db.load_rows("combine_orders", ["combine_no", "state", "created", "paid"], heads.values())
    db.load_rows(
        "sub_orders",
        ["combine_no", "sub_no", "mchid", "fen", "txn", "attach", "description"],
        [(o.combine, o.sub, o.mchid, o.fen, o.txn, o.attach, o.description) for o in ORDERS],
    )
    return db


@pytest.fixture(scope="module")
def my(mariadb_server: MariaDBServer) -> MariaDBServer:
    db = mariadb_server.create_database("test_sources")
    db.execute(
        """
        CREATE TABLE sub_order (
            id bigint auto_increment primary key, combine_no varchar(32), sub_no varchar(32), mch_id bigint,
            amount_yuan decimal(12, 2), pay_state varchar(16), created datetime(6), paid datetime(6),
            txn varchar(32), attach varchar(128), descr varchar(128), key (created), key (paid))
        """
    )
    db.execute(
        """
        CREATE TABLE orders_canonical (
            combine_out_trade_no varchar(32), out_trade_no varchar(32), mchid varchar(32), amount_fen bigint,
            status tinyint, created_at datetime(6), paid_at datetime(6), transaction_id varchar(32),
            attach varchar(128), description varchar(128))
        """
    )
    db.load_rows(
        "sub_order",
        ["combine_no", "sub_no", "mch_id", "amount_yuan", "pay_state", "created", "paid", "txn", "attach", "descr"],
        [
            (o.combine, o.sub, int(o.mchid), o.yuan, o.status, o.created, o.paid, o.txn, o.attach, o.description)
            for o in ORDERS
        ],
    )
    db.load_rows(
        "orders_canonical",
        LOCAL_ORDER_SCHEMA.names,
        [(*o.keys, o.fen, STATUS_CODES[o.status], o.created, o.paid, *o.extras) for o in ORDERS],
    )
    return db


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parquet with typed columns (yuan decimal, zoned created_at, naive paid_at) and CSV split over two files."""
    root = tmp_path_factory.mktemp("local_sources")
    parquet = pa.table(
        {
            "combine_out_trade_no": [o.combine for o in ORDERS],
            "out_trade_no": [o.sub for o in ORDERS],
            "mchid": [o.mchid for o in ORDERS],
            "amount_yuan": pa.array([o.yuan for o in ORDERS], pa.decimal128(12, 2)),
            "status": [o.status for o in ORDERS],
            "created_at": pa.array([o.aware(o.created) for o in ORDERS], pa.timestamp("us", tz="Asia/Shanghai")),
            "paid_at": pa.array([o.paid for o in ORDERS], pa.timestamp("us")),
            "transaction_id": [o.txn for o in ORDERS],
            "attach": [o.attach for o in ORDERS],
            "description": [o.description for o in ORDERS],
        }
    )
    pq.write_table(parquet, root / "orders.parquet")
    header = ["combine_out_trade_no", "out_trade_no", "mchid", "amount_fen", "status", "created_at", "paid_at"]
    header += ["transaction_id", "attach", "description"]
    for part, rows in (("1", ORDERS[::2]), ("2", ORDERS[1::2])):
        with (root / f"orders-{part}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i, o in enumerate(rows):
                # mix notations: an explicit offset (in UTC or +08:00) and naive Beijing text
                created = o.aware(o.created).astimezone(UTC).isoformat() if i % 2 else o.created.isoformat(sep=" ")
                paid = o.aware(o.paid).isoformat() if o.paid else ""
                writer.writerow(
                    [o.combine, o.sub, o.mchid, o.fen, o.status, created, paid, o.txn, o.attach, o.description]
                )
    return root


# -- every source gives the identical canonical table -------------------------------------------------------------


PG_QUERY = """
    select s.combine_no as combine_out_trade_no, s.sub_no as out_trade_no, s.mchid, s.fen as amount_fen,
           c.state as status, c.created as created_at, c.paid as paid_at, s.txn as transaction_id, s.attach,
           s.description
    from combine_orders c join sub_orders s using (combine_no)
    where (c.created >= {start} and c.created < {end}) or (c.paid >= {start} and c.paid < {end})
"""
MY_QUERY = """
    select combine_no, sub_no, cast(mch_id as char) as mchid, amount_yuan, pay_state, created, paid, txn,
           attach, descr
    from sub_order
    where (created >= {start_local} and created < {end_local}) or (paid >= {start} and paid < {end})
"""
FILE_QUERY = """
    select combine_out_trade_no, out_trade_no, mchid, amount_yuan as amount_fen, status, created_at, paid_at,
           transaction_id, attach, description
    from source
    where (created_at >= {start} and created_at < {end}) or (paid_at >= {start_local} and paid_at < {end_local})
"""
MY_MAPPING = {
    "combine_out_trade_no": "combine_no",
    "out_trade_no": "sub_no",
    "mchid": "mch_id",
    "amount_fen": "amount_yuan",
    "status": "pay_state",
    "created_at": "created",
    "paid_at": "paid",
    "transaction_id": "txn",
    "description": "descr",
}

SOURCES: dict[str, Callable[[PostgresServer, MariaDBServer, Path], LocalOrdersSource]] = {
    "pg-table-identity": lambda pg, my, files: LocalOrdersSource(
        kind="postgresql", url=pg.url, table="orders_canonical", status_map=STATUS_MAP
    ),
    "pg-table-mapped-yuan-naive": lambda pg, my, files: LocalOrdersSource(
        kind="postgresql",
        url=pg.url,
        table="shop.SubOrders",
        columns={
            "combine_out_trade_no": "group_no",
            "out_trade_no": "sub_no",
            "mchid": "merchant_id",
            "amount_fen": "total",
            "status": "state",
            "created_at": "created",
            "paid_at": "paid",
            "transaction_id": "wx_txn",
            "description": "memo",
        },
        amount_unit="yuan",
        status_map=STATUS_MAP,
    ),
    "pg-query-join": lambda pg, my, files: LocalOrdersSource(
        kind="postgresql", url=pg.url, query=PG_QUERY, status_map=STATUS_MAP
    ),
    "mariadb-table-mapped-yuan": lambda pg, my, files: LocalOrdersSource(
        kind="mysql", url=my.url, table="sub_order", columns=MY_MAPPING, amount_unit="yuan", status_map=STATUS_MAP
    ),
    "mariadb-table-identity-status-codes": lambda pg, my, files: LocalOrdersSource(
        kind="mysql", url=my.url, table="orders_canonical", status_map=CODE_MAP
    ),
    "mariadb-query": lambda pg, my, files: LocalOrdersSource(
        kind="mysql",
        url=my.url.replace("mysql://", "mariadb://"),
        query=MY_QUERY,
        columns={**MY_MAPPING, "mchid": "mchid"},
        amount_unit="yuan",
        status_map=STATUS_MAP,
    ),
    "parquet-files": lambda pg, my, files: LocalOrdersSource(
        kind="parquet",
        paths=(str(files / "orders.parquet"),),
        columns={"amount_fen": "amount_yuan"},
        amount_unit="yuan",
        status_map=STATUS_MAP,
    ),
    "parquet-query": lambda pg, my, files: LocalOrdersSource(
        kind="parquet", paths=(str(files / "*.parquet"),), query=FILE_QUERY, amount_unit="yuan", status_map=STATUS_MAP
    ),
    "csv-files": lambda pg, my, files: LocalOrdersSource(
        kind="csv", paths=(str(files / "orders-*.csv"),), status_map=STATUS_MAP
    ),
}


@pytest.mark.parametrize("name", SOURCES)
def test_every_source_gives_the_same_canonical_orders(name, pg, my, files):
    source = SOURCES[name](pg, my, files)
    table = read_local_orders(source, START, END)
    assert table.schema == LOCAL_ORDER_SCHEMA
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    expected = expected_orders()
    assert table.to_pylist() == expected.to_pylist()
    assert table.equals(expected)


@pytest.mark.parametrize("name", SOURCES)
def test_an_empty_window_gives_an_empty_canonical_table(name, pg, my, files):
    source = SOURCES[name](pg, my, files)
    table = read_local_orders(source, START - dt.timedelta(days=30), START - dt.timedelta(days=29))
    assert table.num_rows == 0
    assert table.schema == LOCAL_ORDER_SCHEMA


def test_window_includes_order_created_before_and_paid_inside(pg):
    source = SOURCES["pg-table-identity"](pg, None, None)  # type: ignore[arg-type]
    table = read_local_orders(source, START, END)
    early = table.filter(pc.equal(table.column("combine_out_trade_no"), "C20250309A")).to_pylist()
    assert [r["created_at"] < START <= r["paid_at"] < END for r in early] == [True, True]
    assert not {"C20250309D", "C20250311E", "C20250308F"} & set(table.column("combine_out_trade_no").to_pylist())


def test_window_boundaries_are_half_open(pg):
    source = SOURCES["pg-table-identity"](pg, None, None)  # type: ignore[arg-type]
    start = dt.datetime(2025, 3, 10, 23, 59, 59, 999999, tzinfo=BEIJING)
    table = read_local_orders(source, start, start + dt.timedelta(microseconds=1))
    assert set(table.column("combine_out_trade_no").to_pylist()) == {"C20250310C"}
    assert read_local_orders(source, START - dt.timedelta(days=30), START - dt.timedelta(days=29)).num_rows == 0


def test_yuan_decimals_convert_exactly(pg):
    pg.execute("CREATE TABLE yuan_exact (LIKE orders_canonical)")
    pg.execute("ALTER TABLE yuan_exact ALTER COLUMN amount_fen TYPE numeric(20, 4)")
    values = ["0.29", "0.57", "19.99", "0.01", "1.10", "1.1000", "99999999.99", "0.3", "-0.29"]
    created = dt.datetime(2025, 3, 10, 12, tzinfo=BEIJING)
    rows = [("CY", f"SY{i}", M1, Decimal(v), "paid", created, None, None, None, None) for i, v in enumerate(values)]
    pg.load_rows("yuan_exact", LOCAL_ORDER_SCHEMA.names, rows)
    source = LocalOrdersSource(
        kind="postgresql", url=pg.url, table="yuan_exact", amount_unit="yuan", status_map=STATUS_MAP
    )
    table = read_local_orders(source, START, END)
    by_sub = dict(zip(table.column("out_trade_no").to_pylist(), table.column("amount_fen").to_pylist(), strict=True))
    assert [by_sub[f"SY{i}"] for i in range(len(values))] == [29, 57, 1999, 1, 110, 110, 9999999999, 30, -29]


def test_refunds_from_each_kind_agree(pg, my, files):
    refunds = [
        # (out_refund_no, out_trade_no, mchid, yuan, status, created Beijing, succeeded Beijing)
        ("R1", "C20250309AS1", M1, "0.29", "done", bj(2025, 3, 9, 23, 0), bj(2025, 3, 10, 0, 0, 10)),
        ("R2", "C20250310GS2", None, "0.10", "pending", bj(2025, 3, 10, 12), None),
        ("R3", "C20250311ES1", M1, "3.00", "done", bj(2025, 3, 11), bj(2025, 3, 11, 0, 1)),
        ("R4", "C20250308FS1", M2, "5.55", "failed", bj(2025, 3, 9, 10), bj(2025, 3, 9, 10, 0, 5)),
    ]
    status_map = {"done": "SUCCESS", "pending": "PROCESSING", "failed": "ABNORMAL"}
    names = ["refund_no", "order_no", "mchid", "yuan", "state", "created", "succeeded"]
    columns = dict(zip(LOCAL_REFUND_SCHEMA.names, names, strict=True))
    pg.execute(
        "CREATE TABLE refunds (refund_no text, order_no text, mchid text, yuan numeric(10, 2), state text, "
        "created timestamptz, succeeded timestamptz)"
    )
    aware = [
        (*r[:3], Decimal(r[3]), r[4], r[5].replace(tzinfo=BEIJING), r[6] and r[6].replace(tzinfo=BEIJING))
        for r in refunds
    ]
    pg.load_rows("refunds", names, aware)
    my.execute(
        "CREATE TABLE refunds (refund_no varchar(64), order_no varchar(32), mchid varchar(32), yuan decimal(10, 2), "
        "state varchar(16), created datetime(6), succeeded datetime(6))"
    )
    my.load_rows("refunds", names, [(*r[:3], Decimal(r[3]), *r[4:]) for r in refunds])
    with (files / "refunds.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([names, *([*r[:6], r[6] or ""] for r in refunds)])
    common = {"columns": columns, "amount_unit": "yuan", "status_map": status_map}
    sources = [
        LocalRefundsSource(kind="postgresql", url=pg.url, table="refunds", **common),
        LocalRefundsSource(kind="mysql", url=my.url, table="refunds", **common),
        LocalRefundsSource(kind="csv", paths=(str(files / "refunds.csv"),), **common),
    ]
    tables = [read_local_refunds(source, START, END) for source in sources]
    expected = pa.Table.from_pylist(
        [
            {
                "out_refund_no": "R1",
                "out_trade_no": "C20250309AS1",
                "mchid": M1,
                "amount_fen": 29,
                "status": "SUCCESS",
                "created_at": dt.datetime(2025, 3, 9, 15, tzinfo=UTC),
                "succeeded_at": dt.datetime(2025, 3, 9, 16, 0, 10, tzinfo=UTC),
            },
            {
                "out_refund_no": "R2",
                "out_trade_no": "C20250310GS2",
                "mchid": None,
                "amount_fen": 10,
                "status": "PROCESSING",
                "created_at": dt.datetime(2025, 3, 10, 4, tzinfo=UTC),
                "succeeded_at": None,
            },
        ],
        schema=LOCAL_REFUND_SCHEMA,
    )
    for table in tables:
        assert table.equals(expected), table.to_pylist()


# -- bad inputs give clear errors ---------------------------------------------------------------------------------

PG_TYPES = {
    "combine_out_trade_no": "text",
    "out_trade_no": "text",
    "mchid": "text",
    "amount_fen": "bigint",
    "status": "text",
    "created_at": "timestamptz",
    "paid_at": "timestamptz",
    "transaction_id": "text",
    "attach": "text",
    "description": "text",
}
MY_TYPES = {**{k: "varchar(64)" for k in PG_TYPES}, "amount_fen": "bigint"}
MY_TYPES |= {"created_at": "datetime(6)", "paid_at": "datetime(6)"}
IN_WINDOW_AT = dt.datetime(2025, 3, 10, 9, 30, tzinfo=BEIJING)


def order_row(sub: str, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "combine_out_trade_no": "CBAD",
        "out_trade_no": sub,
        "mchid": M1,
        "amount_fen": 100,
        "status": "paid",
        "created_at": IN_WINDOW_AT,
        "paid_at": IN_WINDOW_AT,
        "transaction_id": None,
        "attach": None,
        "description": None,
    }
    return row | overrides


def pg_table(pg: PostgresServer, name: str, rows: list[dict[str, object]], **types: str) -> LocalOrdersSource:
    columns = {**PG_TYPES, **types}
    pg.execute(f'DROP TABLE IF EXISTS "{name}"')
    pg.execute(f'CREATE TABLE "{name}" ({", ".join(f"{c} {t}" for c, t in columns.items())})')
    pg.load_rows(name, list(columns), [tuple(r[c] for c in columns) for r in rows])
    return LocalOrdersSource(kind="postgresql", url=pg.url, table=name, status_map=STATUS_MAP)


def my_table(my: MariaDBServer, name: str, rows: list[dict[str, object]], **types: str) -> LocalOrdersSource:
    columns = {**MY_TYPES, **types}

    def naive(value: object) -> object:
        return value.astimezone(BEIJING).replace(tzinfo=None) if isinstance(value, dt.datetime) else value

    my.execute(f"DROP TABLE IF EXISTS `{name}`")
    my.execute(f"CREATE TABLE `{name}` ({', '.join(f'{c} {t}' for c, t in columns.items())})")
    my.load_rows(name, list(columns), [tuple(naive(r[c]) for c in columns) for r in rows])
    return LocalOrdersSource(kind="mysql", url=my.url, table=name, status_map=STATUS_MAP)


def csv_file(path: Path, rows: list[dict[str, object]]) -> LocalOrdersSource:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return LocalOrdersSource(kind="csv", paths=(str(path),), status_map=STATUS_MAP)


def parquet_file(path: Path, table: pa.Table) -> LocalOrdersSource:
    pq.write_table(table, path)
    return LocalOrdersSource(kind="parquet", paths=(str(path),), status_map=STATUS_MAP)


def with_changes(source: LocalOrdersSource, **changes: object) -> LocalOrdersSource:
    return LocalOrdersSource.model_validate(
        {**source.model_dump(), "url": source.url and source.url.get_secret_value()} | changes
    )


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "csv", "parquet"])
def test_missing_mapped_column_names_column_and_source(kind, pg, my, tmp_path):
    rows = [order_row("SUB-OK")]
    if kind == "postgresql":
        source, where = pg_table(pg, "no_merchant_col", rows), "no_merchant_col"
    elif kind == "mysql":
        source, where = my_table(my, "no_merchant_col", rows), "no_merchant_col"
    elif kind == "csv":
        source, where = csv_file(tmp_path / "orders.csv", rows), "orders.csv"
    else:
        source, where = parquet_file(tmp_path / "orders.parquet", pa.Table.from_pylist(rows)), "orders.parquet"
    source = with_changes(source, columns={"mchid": "merchant_no"})
    with pytest.raises(LocalSourceError, match="merchant_no") as err:
        read_local_orders(source, START, END)
    assert where in str(err.value)
    assert "mchid" in str(err.value)
    assert "recon-test" not in str(err.value)  # the MariaDB password never appears


def test_identity_mapping_needs_optional_columns_or_an_explicit_none(tmp_path):
    rows = [{k: v for k, v in order_row("SUB-1").items() if k != "description"}]
    source = csv_file(tmp_path / "orders.csv", rows)
    with pytest.raises(LocalSourceError, match="'description'"):
        read_local_orders(source, START, END)
    table = read_local_orders(with_changes(source, columns={"description": None}), START, END)
    assert table.column("description").to_pylist() == [None]
    assert table.column("out_trade_no").to_pylist() == ["SUB-1"]


def test_non_integer_fen_names_column_and_first_key(pg):
    rows = [order_row("SUB-1"), order_row("SUB-2", amount_fen=Decimal("12.5")), order_row("SUB-3")]
    source = pg_table(pg, "fen_fraction", rows, amount_fen="numeric(12, 2)")
    with pytest.raises(LocalSourceError, match=r"'amount_fen'.*12\.5.*whole number of fen.*out_trade_no=SUB-2"):
        read_local_orders(source, START, END)
    whole = pg_table(pg, "fen_whole_numeric", [order_row("SUB-1", amount_fen=Decimal("1200.00"))], amount_fen="numeric")
    assert read_local_orders(whole, START, END).column("amount_fen").to_pylist() == [1200]


@pytest.mark.parametrize("bad", ["abc", "12.5", "1e3", " 12", "12,00"])
def test_fen_as_text_must_be_a_whole_number(bad, my):
    rows = [order_row("SUB-1", amount_fen="100"), order_row("SUB-2", amount_fen=bad)]
    source = my_table(my, "fen_text", rows, amount_fen="varchar(16)")
    with pytest.raises(LocalSourceError, match=r"'amount_fen'.*out_trade_no=SUB-2"):
        read_local_orders(source, START, END)


def test_fen_text_in_csv_and_float_fen_in_parquet(tmp_path):
    csv_source = csv_file(tmp_path / "orders.csv", [order_row("SUB-1"), order_row("SUB-2", amount_fen="12.5")])
    with pytest.raises(LocalSourceError, match=r"12\.5.*out_trade_no=SUB-2"):
        read_local_orders(csv_source, START, END)
    rows = [order_row("SUB-1", amount_fen=1200.0), order_row("SUB-2", amount_fen=12.5)]
    floats = parquet_file(tmp_path / "floats.parquet", pa.Table.from_pylist(rows))
    with pytest.raises(LocalSourceError, match=r"12\.5.*out_trade_no=SUB-2"):
        read_local_orders(floats, START, END)
    whole = parquet_file(tmp_path / "whole.parquet", pa.Table.from_pylist(rows[:1]))
    assert read_local_orders(whole, START, END).column("amount_fen").to_pylist() == [1200]


def test_all_null_optional_parquet_columns_are_typed_nulls(tmp_path):
    rows = [order_row("SUB-1", status="unpaid", paid_at=None), order_row("SUB-2", status="closed", paid_at=None)]
    table = pa.Table.from_pylist(rows)
    assert pa.types.is_null(table.schema.field("paid_at").type)
    result = read_local_orders(parquet_file(tmp_path / "orders.parquet", table), START, END)
    assert result.schema == LOCAL_ORDER_SCHEMA
    assert result.column("paid_at").to_pylist() == [None, None]
    assert result.column("status").to_pylist() == ["NOTPAY", "CLOSED"]


def test_yuan_with_more_than_two_decimals_is_an_error(pg, tmp_path):
    rows = [order_row("SUB-1", amount_fen=Decimal("0.290")), order_row("SUB-2", amount_fen=Decimal("0.295"))]
    source = with_changes(pg_table(pg, "yuan_3dp", rows, amount_fen="numeric(12, 3)"), amount_unit="yuan")
    with pytest.raises(LocalSourceError, match=r"0\.295, yuan with more than 2 decimals, at out_trade_no=SUB-2"):
        read_local_orders(source, START, END)
    text = with_changes(csv_file(tmp_path / "orders.csv", rows), amount_unit="yuan")
    with pytest.raises(LocalSourceError, match=r"more than 2 decimals, at out_trade_no=SUB-2"):
        read_local_orders(text, START, END)


def test_float_yuan_is_refused(tmp_path):
    table = pa.Table.from_pylist([order_row("SUB-1", amount_fen=0.29)])
    source = with_changes(parquet_file(tmp_path / "orders.parquet", table), amount_unit="yuan")
    with pytest.raises(LocalSourceError, match="float cannot hold yuan exactly"):
        read_local_orders(source, START, END)


@pytest.mark.parametrize(
    ("column", "key"),
    [
        ("mchid", "out_trade_no=SUB-2"),
        ("amount_fen", "out_trade_no=SUB-2"),
        ("status", "out_trade_no=SUB-2"),
        ("combine_out_trade_no", "out_trade_no=SUB-2"),
        ("out_trade_no", "row 1 (out_trade_no is null, combine_out_trade_no='CBAD')"),
    ],
)
def test_null_in_required_column_names_column_and_key(column, key, my):
    rows = [order_row("SUB-1"), order_row("SUB-2", **{column: None})]
    source = my_table(my, "nulls", rows)
    with pytest.raises(LocalSourceError, match=f"'{column}'") as err:
        read_local_orders(source, START, END)
    assert f"is null for {key}" in str(err.value)


def test_null_created_at_fails_even_outside_the_window(pg):
    """Rows with no created_at are always read, so they cannot hide from the window."""
    rows = [order_row("SUB-1"), order_row("SUB-2", created_at=None, paid_at=None)]
    source = pg_table(pg, "null_created", rows)
    with pytest.raises(LocalSourceError, match=r"'created_at'.*is null for out_trade_no=SUB-2"):
        read_local_orders(source, START, END)


def test_unknown_status_lists_unmapped_values(pg):
    rows = [order_row("SUB-1"), order_row("SUB-2", status="refunding"), order_row("SUB-3", status="weird")]
    rows += [order_row("SUB-4", status="weird"), order_row("SUB-5", status="SUCCESS")]
    source = pg_table(pg, "odd_status", rows)
    with pytest.raises(LocalSourceError, match=r"not in status_map: \['refunding', 'weird'\].*out_trade_no=SUB-2"):
        read_local_orders(source, START, END)
    mapped = with_changes(source, status_map={**STATUS_MAP, "refunding": "REFUND", "weird": "PAYERROR"})
    table = read_local_orders(mapped, START, END)
    assert table.column("status").to_pylist() == ["SUCCESS", "REFUND", "PAYERROR", "PAYERROR", "SUCCESS"]


def test_unparseable_text_timestamp_names_column_and_key(tmp_path):
    rows = [order_row("SUB-1"), order_row("SUB-2", paid_at="yesterday")]
    with pytest.raises(LocalSourceError, match=r"'paid_at'.*'yesterday', not a timestamp, at out_trade_no=SUB-2"):
        read_local_orders(csv_file(tmp_path / "orders.csv", rows), START, END)


def test_text_timestamp_column_in_database_table_needs_a_query(pg):
    source = pg_table(pg, "text_created", [order_row("SUB-1", created_at="2025-03-10 09:30:00")], created_at="text")
    with pytest.raises(LocalSourceError, match=r"'created_at'.*is text, not a timestamp; use a query"):
        read_local_orders(source, START, END)


def test_window_filter_runs_in_the_database(pg):
    """A view that raises on one out-of-window row: reading the whole table and filtering later would hit it."""
    rows = [order_row("SUB-IN"), order_row("SUB-POISON", created_at=START - dt.timedelta(days=3), paid_at=None)]
    pg_table(pg, "poisoned_base", rows)
    pg.execute(
        "CREATE OR REPLACE VIEW poisoned AS SELECT combine_out_trade_no, out_trade_no, mchid, "
        "CASE WHEN out_trade_no = 'SUB-POISON' THEN amount_fen / 0 ELSE amount_fen END AS amount_fen, status, "
        "created_at, paid_at, transaction_id, attach, description FROM poisoned_base"
    )
    source = LocalOrdersSource(kind="postgresql", url=pg.url, table="poisoned", status_map=STATUS_MAP)
    assert read_local_orders(source, START, END).column("out_trade_no").to_pylist() == ["SUB-IN"]
    wide = (START - dt.timedelta(days=5), END)
    with pytest.raises(RuntimeError, match="division by zero"):
        read_local_orders(source, *wide)


def test_table_name_is_an_identifier_not_sql(pg):
    source = LocalOrdersSource(kind="postgresql", url=pg.url, table='orders_canonical"; DROP TABLE sub_orders; --')
    with pytest.raises(RuntimeError, match="does not exist"):
        read_local_orders(source, START, END)
    assert pg.execute("SELECT count(*) FROM sub_orders") == [(len(ORDERS),)]


def test_window_must_be_aware_and_non_empty(pg):
    source = SOURCES["pg-table-identity"](pg, None, None)  # type: ignore[arg-type]
    with pytest.raises(LocalSourceError, match="timezone-aware"):
        read_local_orders(source, START.replace(tzinfo=None), END)
    with pytest.raises(LocalSourceError, match="empty window"):
        read_local_orders(source, END, START)


def test_missing_files_are_an_error(tmp_path):
    source = LocalOrdersSource(kind="parquet", paths=(str(tmp_path / "nothing-*.parquet"),))
    with pytest.raises(LocalSourceError, match="No files found"):
        read_local_orders(source, START, END)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "postgresql", "url": "postgresql://u@h/db", "query": "select 1"}, "window placeholders"),
        ({"kind": "postgresql", "url": "postgresql://u@h/db", "table": "t", "query": "{start}{end}"}, "exactly one"),
        ({"kind": "postgresql", "url": "mysql://u@h/db", "table": "t"}, "postgresql/postgres://"),
        ({"kind": "csv", "url": "postgresql://u@h/db"}, "needs paths"),
        ({"kind": "csv", "paths": ["a.csv"], "table": "t"}, "reads its files as the table"),
        ({"kind": "csv", "paths": ["a.csv"], "columns": {"amount": "x"}}, "not a canonical column"),
        ({"kind": "csv", "paths": ["a.csv"], "columns": {"mchid": None}}, "cannot be mapped to None"),
        ({"kind": "csv", "paths": ["a.csv"], "status_map": {"paid": "PAID"}}, "not canonical statuses"),
        ({"kind": "csv", "paths": ["a.csv"], "naive_timezone": "Mars/Base"}, "unknown time zone"),
        ({"kind": "csv", "paths": ["a.csv"], "amount_unit": "jiao"}, "amount_unit"),
    ],
)
def test_config_is_validated(fields, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        LocalOrdersSource(**fields)


def test_refund_statuses_are_their_own_vocabulary():
    with pytest.raises(pydantic.ValidationError, match="not canonical statuses"):
        LocalRefundsSource(kind="csv", paths=("r.csv",), status_map={"done": "NOTPAY"})
    assert LocalRefundsSource(kind="csv", paths=("r.csv",), status_map={"done": "PROCESSING"}).amount_unit == "fen"


def test_url_password_is_not_shown(my):
    source = LocalOrdersSource(kind="mysql", url=my.url, table="sub_order")
    assert "recon-test" not in repr(source)
    assert "recon-test" not in source.label
    assert source.label.startswith("mysql table sub_order at mysql://root@127.0.0.1:")


def test_bill_day_window_is_a_beijing_day():
    start, end = bill_day_window(dt.date(2025, 3, 10))
    assert start == dt.datetime(2025, 3, 9, 16, tzinfo=UTC)
    assert end - start == dt.timedelta(days=1)
    assert bill_day_window(dt.date(2025, 3, 10), days=3, tz="UTC")[1] == dt.datetime(2025, 3, 13, tzinfo=UTC)


# --- suspicious sources: bad values and keys named, broken exports stop before anything is replaced -----------


def test_an_amount_beyond_int64_fen_names_source_column_and_key(tmp_path):
    source = csv_file(tmp_path / "orders.csv", [order_row("S1"), order_row("S2", amount_fen="1" * 25)])
    with pytest.raises(LocalSourceError) as info:
        read_local_orders(source, START, END)
    message = str(info.value)
    assert "'amount_fen' (amount_fen)" in message
    assert source.label in message
    assert "out_trade_no=S2" in message
    assert "1" * 25 in message
    assert "ArrowInvalid" not in message


def test_a_duplicate_key_names_source_columns_and_key(tmp_path):
    rows = [order_row("S1"), order_row("S2"), order_row("S2", amount_fen=200)]
    source = csv_file(tmp_path / "orders.csv", rows)
    with pytest.raises(LocalSourceError) as info:
        read_local_orders(source, START, END)
    message = str(info.value)
    assert source.label in message
    assert "'mchid', 'out_trade_no'" in message
    assert f"mchid={M1}, out_trade_no=S2 (2 records)" in message


def local_warehouse(tmp_path: Path):
    from flows.warehouse import connect, migrate

    tmp_path.mkdir(exist_ok=True)
    con = connect(tmp_path / "warehouse.duckdb")
    migrate(con)
    return con


def held(con) -> list[tuple]:
    return con.execute("select out_trade_no, amount_fen from raw.local_orders order by out_trade_no").fetchall()


def test_an_empty_export_stops_before_anything_is_replaced(tmp_path):
    from flows.sources import SuspiciousSourceError, import_local

    con = local_warehouse(tmp_path)
    rows = [order_row(f"S{n}") for n in range(4)]
    first = read_local_orders(csv_file(tmp_path / "day1.csv", rows), START, END)
    import_local(con, first, None, start=START, end=END, source_label="shop-export", min_ratio=0.5, require_rows=True)
    before = held(con)
    (tmp_path / "empty.csv").write_text(",".join(rows[0]) + "\n")  # the header only
    empty = read_local_orders(LocalOrdersSource(kind="csv", paths=(str(tmp_path / "empty.csv"),)), START, END)
    assert empty.num_rows == 0
    for history in (True, False):  # with earlier reads in the warehouse, and on a first night
        target = con if history else local_warehouse(tmp_path / "fresh")
        with pytest.raises(SuspiciousSourceError, match="shop-export gave no records") as info:
            import_local(target, empty, None, start=START, end=END, source_label="shop-export", require_rows=True)
        assert "Nothing was replaced in raw.local_orders" in str(info.value)
    assert held(con) == before


def test_a_sharply_shrunken_export_stops_and_a_normal_one_replaces(tmp_path):
    from flows.sources import SuspiciousSourceError, import_local

    con = local_warehouse(tmp_path)
    rows = [order_row(f"S{n}") for n in range(10)]
    full = read_local_orders(csv_file(tmp_path / "full.csv", rows), START, END)
    import_local(con, full, None, start=START, end=END, source_label="shop", min_ratio=0.5)
    cut = read_local_orders(csv_file(tmp_path / "cut.csv", rows[:4]), START, END)
    with pytest.raises(SuspiciousSourceError, match=r"shop gave 4 records .* local_min_ratio=0.5 of the 10"):
        import_local(con, cut, None, start=START, end=END, source_label="shop", min_ratio=0.5)
    assert len(held(con)) == 10
    edited = [order_row(f"S{n}", amount_fen=n) for n in range(6)]  # 6 of 10: above the ratio, replaces
    kept = read_local_orders(csv_file(tmp_path / "six.csv", edited), START, END)
    assert import_local(con, kept, None, start=START, end=END, source_label="shop", min_ratio=0.5) == (6, 0)
    assert held(con) == [(f"S{n}", n) for n in range(6)]
