-- Refund rows (交易状态 REFUND) of the trade bills that count: the bill day is the day the refund was
-- submitted. 退款状态 is a snapshot taken when the bill was generated. Amounts in fen, fee (negative) in
-- milli-fen.
with

bill_rows as (
    select
        bill_mchid,
        bill_date,
        bill_type,
        trade_time,
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
    from staging.stg_trade_bill_rows
    where trade_state = 'REFUND'
)

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
from bill_rows
