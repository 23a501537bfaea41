-- Payment rows (交易状态 SUCCESS, or REVOKED for micropay) of the trade bills that count, one per row of a
-- bill day. Amounts in fen, fee in milli-fen.
with

bill_rows as (
    select
        bill_mchid,
        bill_date,
        bill_type,
        trade_time,
        mchid,
        sub_mchid,
        appid,
        transaction_id,
        out_trade_no,
        combine_out_trade_no,
        trade_type,
        trade_state,
        bank_type,
        currency,
        order_amount_fen,
        legacy_total_amount_fen,
        settlement_amount_fen,
        coupon_amount_fen,
        fee_millifen,
        fee_rate_pct,
        description,
        attach,
        archive_sha1,
        line_no
    from staging.stg_trade_bill_rows
    where trade_state <> 'REFUND'
)

select
    bill_mchid,
    bill_date,
    bill_type,
    trade_time as paid_at,
    cast(timezone('Asia/Shanghai', trade_time) as date) as paid_date,
    mchid,
    nullif(sub_mchid, '0') as sub_mchid,
    appid,
    transaction_id,
    out_trade_no,
    combine_out_trade_no,
    trade_type,
    trade_state,
    bank_type,
    currency,
    coalesce(order_amount_fen, legacy_total_amount_fen) as order_amount_fen,
    settlement_amount_fen,
    coupon_amount_fen,
    fee_millifen,
    fee_rate_pct,
    description,
    attach,
    archive_sha1,
    line_no
from bill_rows
