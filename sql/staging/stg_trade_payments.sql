-- Payment rows (交易状态 SUCCESS, or REVOKED for micropay) of the trade bills, one per row of a bill day.
-- A day's ALL bill is the source; its SUCCESS bill is used only when no ALL bill of that day is loaded,
-- so loading both never counts a payment twice. Amounts in fen, fee in milli-fen.
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
        openid,
        trade_type,
        trade_state,
        bank_type,
        currency,
        settlement_amount_fen,
        coupon_amount_fen,
        order_amount_fen,
        legacy_total_amount_fen,
        fee_millifen,
        fee_rate_pct,
        description,
        attach
    from raw.trade_bill_rows
    where bill_type in ('trade_all', 'trade_success')
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
        trade_rows.appid,
        trade_rows.mchid,
        trade_rows.sub_mchid,
        trade_rows.device_info,
        trade_rows.transaction_id,
        trade_rows.out_trade_no,
        trade_rows.openid,
        trade_rows.trade_type,
        trade_rows.trade_state,
        trade_rows.bank_type,
        trade_rows.currency,
        trade_rows.settlement_amount_fen,
        trade_rows.coupon_amount_fen,
        trade_rows.order_amount_fen,
        trade_rows.legacy_total_amount_fen,
        trade_rows.fee_millifen,
        trade_rows.fee_rate_pct,
        trade_rows.description,
        trade_rows.attach
    from trade_rows
    left join all_bill_days
        on trade_rows.bill_mchid = all_bill_days.mchid
        and trade_rows.bill_date = all_bill_days.bill_date
    where trade_rows.bill_type = 'trade_all' or all_bill_days.mchid is null
),

payments as (
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
        nullif(regexp_extract(attach, '^cmb=([^;&,]+)', 1), '') as combine_out_trade_no,
        openid,
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
    from chosen_rows
    where trade_state <> 'REFUND'
)

select
    bill_mchid,
    bill_date,
    bill_type,
    paid_at,
    paid_date,
    mchid,
    sub_mchid,
    appid,
    transaction_id,
    out_trade_no,
    combine_out_trade_no,
    openid,
    trade_type,
    trade_state,
    bank_type,
    currency,
    order_amount_fen,
    settlement_amount_fen,
    coupon_amount_fen,
    fee_millifen,
    fee_rate_pct,
    description,
    attach,
    archive_sha1,
    line_no
from payments
