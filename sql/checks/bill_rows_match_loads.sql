-- Bill rows that do not belong to the recorded load of their (merchant, bill type, day): no load row,
-- another archive's SHA-1, or a row count different from the one the load recorded.
with

row_groups as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        archive_sha1,
        count(*) as row_count
    from raw.trade_bill_rows
    group by bill_mchid, bill_type, bill_date, archive_sha1
    union all
    select
        bill_mchid,
        bill_type,
        bill_date,
        archive_sha1,
        count(*) as row_count
    from raw.fund_flow_rows
    group by bill_mchid, bill_type, bill_date, archive_sha1
),

loads as (
    select
        mchid,
        bill_type,
        bill_date,
        archive_sha1,
        row_count
    from raw.bill_loads
),

compared as (
    select
        coalesce(row_groups.bill_mchid, loads.mchid) as bill_mchid,
        coalesce(row_groups.bill_type, loads.bill_type) as bill_type,
        coalesce(row_groups.bill_date, loads.bill_date) as bill_date,
        row_groups.archive_sha1 as rows_archive_sha1,
        loads.archive_sha1 as load_archive_sha1,
        coalesce(row_groups.row_count, 0) as rows_found,
        loads.row_count as rows_recorded
    from row_groups
    full outer join loads
        on row_groups.bill_mchid = loads.mchid
        and row_groups.bill_type = loads.bill_type
        and row_groups.bill_date = loads.bill_date
        and row_groups.archive_sha1 = loads.archive_sha1
)

select
    bill_mchid,
    bill_type,
    bill_date,
    rows_archive_sha1,
    load_archive_sha1,
    rows_found,
    rows_recorded
from compared
where rows_recorded is null or rows_found <> rows_recorded
