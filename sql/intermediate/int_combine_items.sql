-- Combine orders whose sub orders disagree: some paid, some not. WeChat Pay pays all sub orders of a
-- combine order or none, so a partial combine order means the merchant's records (or a bill) are wrong.
-- A sub order counts as paid by its local status when the merchant has a record, else by the bill.
-- Only combine orders with a sub order the merchant holds unpaid are candidates.
with

params as (
    select
        as_of_date,
        window_start
    from recon.params
),

candidates as (
    select distinct combine_out_trade_no
    from intermediate.int_sub_orders
    where in_local and not local_paid and combine_out_trade_no is not null
),

subs as (
    select
        subs.combine_out_trade_no,
        subs.mchid,
        subs.out_trade_no,
        case when subs.in_local then subs.local_paid else subs.in_bill end as paid,
        case when subs.class is not null then subs.recon_date end as recon_date,
        subs.local_fen
    from intermediate.int_sub_orders as subs
    inner join candidates
        on subs.combine_out_trade_no = candidates.combine_out_trade_no
),

combines as (
    select
        combine_out_trade_no,
        count(*) as sub_orders,
        count(*) filter (where paid) as paid_subs,
        min(recon_date) as recon_date,
        min(mchid) filter (where paid) as mchid,
        string_agg(mchid || '/' || out_trade_no || '=' || case when paid then 'paid' else 'unpaid' end, ', '
            order by out_trade_no) as states,
        sum(local_fen) filter (where not paid) as unpaid_fen
    from subs
    group by combine_out_trade_no
)

select
    combines.recon_date,
    combines.mchid,
    'combine' as item_kind,
    combines.combine_out_trade_no as item_key,
    'combine_partial' as class,
    'open' as state,
    combines.combine_out_trade_no,
    cast(null as varchar) as out_trade_no,
    cast(null as varchar) as out_refund_no,
    cast(null as varchar) as transaction_id,
    cast(null as bigint) as bill_fen,
    combines.unpaid_fen as local_fen,
    cast(null as bigint) as notified_fen,
    cast(null as bigint) as diff_fen,
    cast(null as bigint) as bill_fee_millifen,
    cast(null as bigint) as expected_fee_millifen,
    combines.sub_orders as copies,
    cast(null as date) as bill_date,
    cast(null as varchar) as bill_archive_sha1,
    cast(null as bigint) as bill_line_no,
    cast(null as varchar) as notification_id,
    cast(null as varchar) as notification_log_file,
    cast(null as bigint) as notification_line_no,
    cast(null as varchar) as local_key,
    combines.paid_subs || ' of ' || combines.sub_orders || ' sub orders paid: ' || combines.states as detail
from combines
cross join params
where combines.paid_subs > 0
    and combines.paid_subs < combines.sub_orders
    and combines.recon_date between params.window_start and params.as_of_date
