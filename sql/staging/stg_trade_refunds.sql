-- Refund rows (交易状态 REFUND) of the trade bills: the bill day is the day the refund was submitted.
-- A day's ALL bill is the source; its REFUND bill is used only when no ALL bill of that day is loaded.
-- 退款状态 is a snapshot taken when the bill was generated. Amounts in fen, fee (negative) in milli-fen.
with

trade_rows as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        archive_sha1,
        line_no,
        trade_time,
        refund_applied_at,
        refund_succeeded_at,
        mchid,
        transaction_id,
        out_trade_no,
        trade_state,
        refund_id,
        out_refund_no,
        refund_amount_fen,
        recharge_coupon_refund_fen,
        requested_refund_fen,
        refund_type,
        refund_status,
        fee_millifen,
        fee_rate_pct,
        attach
    from raw.trade_bill_rows
    where bill_type in ('trade_all', 'trade_refund')
),

all_bill_days as (
    select
        mchid,
        bill_date
    from raw.bill_loads
    where bill_type = 'trade_all'
),

chosen_rows as (
    select
        trade_rows.bill_mchid,
        trade_rows.bill_type,
        trade_rows.bill_date,
        trade_rows.archive_sha1,
        trade_rows.line_no,
        trade_rows.trade_time,
        trade_rows.refund_applied_at,
        trade_rows.refund_succeeded_at,
        trade_rows.mchid,
        trade_rows.transaction_id,
        trade_rows.out_trade_no,
        trade_rows.trade_state,
        trade_rows.refund_id,
        trade_rows.out_refund_no,
        trade_rows.refund_amount_fen,
        trade_rows.recharge_coupon_refund_fen,
        trade_rows.requested_refund_fen,
        trade_rows.refund_type,
        trade_rows.refund_status,
        trade_rows.fee_millifen,
        trade_rows.fee_rate_pct,
        trade_rows.attach
    from trade_rows
    left join all_bill_days
        on trade_rows.bill_mchid = all_bill_days.mchid
        and trade_rows.bill_date = all_bill_days.bill_date
    where trade_rows.bill_type = 'trade_all' or all_bill_days.mchid is null
),

refunds as (
    select
        bill_mchid,
        bill_date,
        bill_type,
        trade_time as refund_submitted_at,
        refund_applied_at,
        refund_succeeded_at,
        mchid,
        transaction_id,
        out_trade_no,
        nullif(regexp_extract(attach, '^cmb=([^;&,]+)', 1), '') as combine_out_trade_no,
        refund_id,
        out_refund_no,
        refund_amount_fen,
        recharge_coupon_refund_fen,
        requested_refund_fen,
        refund_type,
        refund_status,
        fee_millifen,
        fee_rate_pct,
        archive_sha1,
        line_no
    from chosen_rows
    where trade_state = 'REFUND'
)

select
    bill_mchid,
    bill_date,
    bill_type,
    refund_submitted_at,
    refund_applied_at,
    refund_succeeded_at,
    mchid,
    transaction_id,
    out_trade_no,
    combine_out_trade_no,
    refund_id,
    out_refund_no,
    refund_amount_fen,
    recharge_coupon_refund_fen,
    requested_refund_fen,
    refund_type,
    refund_status,
    fee_millifen,
    fee_rate_pct,
    archive_sha1,
    line_no
from refunds
