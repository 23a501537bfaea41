-- The merchant's own refunds, with the Beijing day they were created (submitted).
with

local_refunds as (
    select
        out_refund_no,
        out_trade_no,
        mchid,
        amount_fen,
        status,
        created_at,
        succeeded_at,
        source_label
    from raw.local_refunds
)

select
    out_refund_no,
    out_trade_no,
    mchid,
    amount_fen,
    status,
    created_at,
    succeeded_at,
    cast(timezone('Asia/Shanghai', created_at) as date) as created_date,
    source_label,
    coalesce(mchid, '?') || '/' || out_refund_no as local_key
from local_refunds
