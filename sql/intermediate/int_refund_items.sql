-- Refunds, when the merchant's refund records take part (recon.params.local_refunds): bill refund rows
-- (the day a refund was submitted) against local refunds on (out_trade_no, out_refund_no).
-- Classes: matched, duplicate_in_bill, refund_amount_mismatch, refund_missing_locally, pending,
-- refund_missing_in_bill.
with

params as (
    select
        as_of_date,
        window_start,
        pending_days,
        tolerance_fen,
        local_refunds
    from recon.params
),

merchants as (
    select mchid from recon.run_merchants
),

bill_refund_rows as (
    select
        refunds.bill_mchid as mchid,
        refunds.out_trade_no,
        refunds.out_refund_no,
        refunds.transaction_id,
        refunds.combine_out_trade_no,
        refunds.bill_date,
        refunds.refund_amount_fen,
        refunds.refund_status,
        refunds.archive_sha1,
        refunds.line_no
    from staging.stg_trade_refunds as refunds
    inner join merchants
        on refunds.bill_mchid = merchants.mchid
    cross join params
    where refunds.bill_date between params.window_start - 3 and params.as_of_date + params.pending_days
),

bill_refunds as (
    select
        mchid,
        out_trade_no,
        out_refund_no,
        count(*) as copies,
        min({
            'bill_date': bill_date,
            'line_no': line_no,
            'transaction_id': transaction_id,
            'combine_out_trade_no': combine_out_trade_no,
            'refund_amount_fen': refund_amount_fen,
            'refund_status': refund_status,
            'archive_sha1': archive_sha1
        }) as first_row
    from bill_refund_rows
    group by mchid, out_trade_no, out_refund_no
),

local_refunds as (
    select
        local.out_trade_no,
        local.out_refund_no,
        coalesce(local.mchid, orders.mchid) as mchid,
        local.amount_fen,
        local.status,
        local.created_date,
        local.local_key
    from staging.stg_local_refunds as local
    left join staging.stg_local_orders as orders
        on local.out_trade_no = orders.out_trade_no
        and (local.mchid is null or local.mchid = orders.mchid)
    inner join merchants
        on coalesce(local.mchid, orders.mchid) = merchants.mchid
),

coverage as (
    select
        mchid,
        max(covered_through) as covered_through
    from staging.stg_bill_coverage
    where bill_type in ('trade_all', 'trade_refund')
    group by mchid
),

joined as (
    select
        coalesce(bill_refunds.mchid, local_refunds.mchid) as mchid,
        coalesce(bill_refunds.out_trade_no, local_refunds.out_trade_no) as out_trade_no,
        coalesce(bill_refunds.out_refund_no, local_refunds.out_refund_no) as out_refund_no,
        bill_refunds.first_row.transaction_id as transaction_id,
        bill_refunds.first_row.combine_out_trade_no as combine_out_trade_no,
        bill_refunds.first_row.bill_date as bill_date,
        bill_refunds.first_row.refund_amount_fen as bill_fen,
        bill_refunds.first_row.refund_status as refund_status,
        bill_refunds.first_row.archive_sha1 as archive_sha1,
        bill_refunds.first_row.line_no as line_no,
        bill_refunds.copies,
        local_refunds.amount_fen as local_fen,
        local_refunds.status as local_status,
        local_refunds.created_date,
        local_refunds.local_key,
        coverage.covered_through
    from bill_refunds
    full outer join local_refunds
        on bill_refunds.out_trade_no = local_refunds.out_trade_no
        and bill_refunds.out_refund_no = local_refunds.out_refund_no
    left join coverage
        on coalesce(bill_refunds.mchid, local_refunds.mchid) = coverage.mchid
),

classified as (
    select
        joined.*,
        case
            when bill_date is not null and copies > 1 then 'duplicate_in_bill'
            when bill_date is not null and local_fen is null then 'refund_missing_locally'
            when bill_date is not null and abs(bill_fen - local_fen) > params.tolerance_fen then 'refund_amount_mismatch'
            when bill_date is not null then 'matched'
            when local_status in ('SUCCESS', 'PROCESSING')
                and coalesce(covered_through, date '1970-01-01') >= created_date + params.pending_days
                then 'refund_missing_in_bill'
            when local_status in ('SUCCESS', 'PROCESSING') then 'pending'
        end as class,
        coalesce(bill_date, created_date) as recon_date
    from joined
    cross join params
)

select
    recon_date,
    mchid,
    'refund' as item_kind,
    out_trade_no || '/' || out_refund_no as item_key,
    class,
    case class when 'matched' then 'matched' when 'pending' then 'pending' else 'open' end as state,
    combine_out_trade_no,
    out_trade_no,
    out_refund_no,
    transaction_id,
    bill_fen,
    local_fen,
    cast(null as bigint) as notified_fen,
    bill_fen - local_fen as diff_fen,
    cast(null as bigint) as bill_fee_millifen,
    cast(null as bigint) as expected_fee_millifen,
    copies,
    bill_date,
    archive_sha1 as bill_archive_sha1,
    line_no as bill_line_no,
    cast(null as varchar) as notification_id,
    cast(null as varchar) as notification_log_file,
    cast(null as bigint) as notification_line_no,
    local_key,
    case class
        when 'duplicate_in_bill' then 'the bill lists this refund ' || copies || ' times'
        when 'refund_missing_locally' then 'the bill has a refund (' || coalesce(refund_status, '?')
            || ') the merchant has no record of'
        when 'refund_amount_mismatch' then 'bill ' || bill_fen || ' fen, local ' || local_fen || ' fen'
        when 'pending' then 'local refund of ' || created_date || ' not in a bill yet'
        when 'refund_missing_in_bill' then 'local refund of ' || created_date || ' not in any bill up to '
            || cast(covered_through as varchar)
    end as detail
from classified
cross join params
where class is not null
    and params.local_refunds
    and recon_date between params.window_start and params.as_of_date
