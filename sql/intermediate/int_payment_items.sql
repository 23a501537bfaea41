-- The payment exceptions of the recomputed days (every class but matched), with their evidence: the bill
-- line (archive SHA1 + line number), transaction ids and the local record key.
with

params as (
    select
        as_of_date,
        window_start
    from recon.params
),

exceptions as (
    select
        subs.mchid,
        subs.out_trade_no,
        subs.combine_out_trade_no,
        subs.class,
        subs.recon_date,
        subs.in_local,
        subs.local_status,
        subs.bill_trade_state,
        subs.copies,
        subs.bill_date,
        subs.bill_line_no,
        subs.bill_fen,
        subs.local_fen,
        subs.covered_through
    from intermediate.int_sub_orders as subs
    cross join params
    where subs.class is not null
        and subs.class <> 'matched'
        and subs.recon_date between params.window_start and params.as_of_date
),

bill_lines as (
    -- the bill rows the exceptions point at (a day's ALL bill, else its SUCCESS bill, as staging chooses)
    select
        rows.bill_date,
        rows.line_no,
        coalesce(rows.mchid, rows.bill_mchid) as mchid,
        rows.archive_sha1,
        rows.transaction_id
    from raw.trade_bill_rows as rows
    inner join (select distinct bill_date, bill_line_no from exceptions) as wanted
        on rows.bill_date = wanted.bill_date
        and rows.line_no = wanted.bill_line_no
    where rows.bill_type in ('trade_all', 'trade_success')
    qualify row_number() over (
        partition by rows.bill_date, rows.line_no, coalesce(rows.mchid, rows.bill_mchid) order by rows.bill_type
    ) = 1
),

evidence as (
    select
        exceptions.mchid,
        exceptions.out_trade_no,
        exceptions.combine_out_trade_no,
        exceptions.class,
        exceptions.recon_date,
        exceptions.local_status,
        exceptions.bill_trade_state,
        exceptions.copies,
        exceptions.bill_date,
        exceptions.bill_line_no,
        exceptions.bill_fen,
        exceptions.local_fen,
        exceptions.covered_through,
        bill_lines.archive_sha1,
        bill_lines.transaction_id as bill_transaction_id,
        local.transaction_id as local_transaction_id,
        local.mchid || '/' || local.out_trade_no as local_key
    from exceptions
    left join bill_lines
        on exceptions.bill_date = bill_lines.bill_date
        and exceptions.bill_line_no = bill_lines.line_no
        and exceptions.mchid = bill_lines.mchid
    left join raw.local_orders as local
        on exceptions.mchid = local.mchid
        and exceptions.out_trade_no = local.out_trade_no
)

select
    recon_date,
    mchid,
    'payment' as item_kind,
    out_trade_no as item_key,
    class,
    case class when 'pending' then 'pending' else 'open' end as state,
    combine_out_trade_no,
    out_trade_no,
    cast(null as varchar) as out_refund_no,
    coalesce(bill_transaction_id, local_transaction_id) as transaction_id,
    bill_fen,
    local_fen,
    cast(null as bigint) as notified_fen,
    bill_fen - local_fen as diff_fen,
    cast(null as bigint) as bill_fee_millifen,
    cast(null as bigint) as expected_fee_millifen,
    copies,
    bill_date,
    archive_sha1 as bill_archive_sha1,
    bill_line_no,
    cast(null as varchar) as notification_id,
    cast(null as varchar) as notification_log_file,
    cast(null as bigint) as notification_line_no,
    local_key,
    case class
        when 'duplicate_in_bill' then 'the bill lists this sub order ' || copies || ' times'
        when 'missing_locally' then 'the bill has a payment the merchant has no record of'
        when 'status_mismatch' then 'bill ' || bill_trade_state || ', local ' || coalesce(local_status, '?')
        when 'amount_mismatch' then 'bill ' || bill_fen || ' fen, local ' || local_fen || ' fen'
        when 'transaction_mismatch' then 'bill transaction_id ' || bill_transaction_id
            || ', local ' || local_transaction_id
        when 'pending' then 'locally paid on ' || recon_date || '; no bill up to '
            || coalesce(cast(covered_through as varchar), 'now') || ' has it yet'
        when 'missing_in_bill' then 'locally paid on ' || recon_date || '; not in any bill up to '
            || cast(covered_through as varchar)
    end as detail
from evidence
