-- Control totals per merchant-day: the bill's summary line, the sums of its detail rows, and the
-- merchant's own records (sub orders it marks paid on that Beijing day). Differences are bill minus
-- local; a cross-midnight order shows up as a difference of a day and is explained by its item.
with

summaries as (
    select
        bill_mchid as mchid,
        bill_date,
        row_count,
        order_amount_fen,
        refund_amount_fen,
        fee_millifen
    from raw.trade_bill_summaries
    where bill_type = 'trade_all'
),

payments as (
    select
        bill_mchid as mchid,
        bill_date,
        count(*) as payment_rows,
        sum(order_amount_fen) as payment_fen,
        sum(fee_millifen) as payment_fee_millifen
    from staging.stg_trade_payments
    group by bill_mchid, bill_date
),

refunds as (
    select
        bill_mchid as mchid,
        bill_date,
        count(*) as refund_rows,
        sum(refund_amount_fen) as refund_fen,
        sum(fee_millifen) as refund_fee_millifen
    from staging.stg_trade_refunds
    group by bill_mchid, bill_date
),

local_paid as (
    select
        mchid,
        paid_date as bill_date,
        count(*) as local_paid_orders,
        sum(amount_fen) as local_paid_fen
    from staging.stg_local_orders
    where is_paid
    group by mchid, paid_date
),

days as (
    select mchid, bill_date from summaries
    union
    select mchid, bill_date from local_paid
    where (mchid, bill_date) in (
        select (mchid, recon_date) from recon.items
        union
        select (mchid, recon_date) from recon.daily_totals
    )
)

select
    days.mchid,
    days.bill_date,
    summaries.row_count as summary_rows,
    coalesce(payments.payment_rows, 0) + coalesce(refunds.refund_rows, 0) as detail_rows,
    summaries.order_amount_fen as summary_order_fen,
    coalesce(payments.payment_fen, 0) as detail_order_fen,
    summaries.refund_amount_fen as summary_refund_fen,
    coalesce(refunds.refund_fen, 0) as detail_refund_fen,
    summaries.fee_millifen as summary_fee_millifen,
    coalesce(payments.payment_fee_millifen, 0) + coalesce(refunds.refund_fee_millifen, 0) as detail_fee_millifen,
    coalesce(local_paid.local_paid_orders, 0) as local_paid_orders,
    coalesce(local_paid.local_paid_fen, 0) as local_paid_fen,
    summaries.order_amount_fen - coalesce(payments.payment_fen, 0) as summary_minus_detail_fen,
    coalesce(payments.payment_fen, 0) - coalesce(local_paid.local_paid_fen, 0) as bill_minus_local_fen
from days
left join summaries
    on days.mchid = summaries.mchid and days.bill_date = summaries.bill_date
left join payments
    on days.mchid = payments.mchid and days.bill_date = payments.bill_date
left join refunds
    on days.mchid = refunds.mchid and days.bill_date = refunds.bill_date
left join local_paid
    on days.mchid = local_paid.mchid and days.bill_date = local_paid.bill_date
