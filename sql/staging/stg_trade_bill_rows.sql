-- The trade bill rows that count for each (merchant, day): the day's ALL bill when it is loaded, else its
-- SUCCESS and REFUND bills (which split the same rows between them), so loading several kinds of one day
-- never counts a row twice. Amounts in fen, the fee in milli-fen.
with

trade_rows as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        archive_sha1,
        line_no,
        trade_time,
        appid,
        mchid,
        sub_mchid,
        device_info,
        transaction_id,
        out_trade_no,
        trade_type,
        trade_state,
        bank_type,
        currency,
        settlement_amount_fen,
        coupon_amount_fen,
        order_amount_fen,
        legacy_total_amount_fen,
        refund_applied_at,
        refund_succeeded_at,
        refund_id,
        out_refund_no,
        refund_amount_fen,
        recharge_coupon_refund_fen,
        requested_refund_fen,
        refund_type,
        refund_status,
        fee_millifen,
        fee_rate_pct,
        description,
        attach
    from raw.trade_bill_rows
),

all_bill_days as (
    select
        mchid,
        bill_date
    from raw.bill_loads
    where bill_type = 'trade_all'
)

select
    trade_rows.bill_mchid,
    trade_rows.bill_type,
    trade_rows.bill_date,
    trade_rows.archive_sha1,
    trade_rows.line_no,
    trade_rows.trade_time,
    trade_rows.appid,
    trade_rows.mchid,
    trade_rows.sub_mchid,
    trade_rows.device_info,
    trade_rows.transaction_id,
    trade_rows.out_trade_no,
    nullif(regexp_extract(trade_rows.attach, '^cmb=([^;&,]+)', 1), '') as combine_out_trade_no,
    trade_rows.trade_type,
    trade_rows.trade_state,
    trade_rows.bank_type,
    trade_rows.currency,
    trade_rows.settlement_amount_fen,
    trade_rows.coupon_amount_fen,
    trade_rows.order_amount_fen,
    trade_rows.legacy_total_amount_fen,
    trade_rows.refund_applied_at,
    trade_rows.refund_succeeded_at,
    trade_rows.refund_id,
    trade_rows.out_refund_no,
    trade_rows.refund_amount_fen,
    trade_rows.recharge_coupon_refund_fen,
    trade_rows.requested_refund_fen,
    trade_rows.refund_type,
    trade_rows.refund_status,
    trade_rows.fee_millifen,
    trade_rows.fee_rate_pct,
    trade_rows.description,
    trade_rows.attach
from trade_rows
left join all_bill_days
    on trade_rows.bill_mchid = all_bill_days.mchid
    and trade_rows.bill_date = all_bill_days.bill_date
where trade_rows.bill_type = 'trade_all' or all_bill_days.mchid is null
