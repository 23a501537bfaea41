-- The merchant's own sub orders, with the Beijing day of payment. A sub order counts as paid when its
-- local status is SUCCESS or REFUND (refunded after payment).
with

local_orders as (
    select
        mchid,
        out_trade_no,
        combine_out_trade_no,
        amount_fen,
        status,
        created_at,
        paid_at,
        transaction_id,
        attach,
        description,
        source_label
    from raw.local_orders
)

select
    mchid,
    out_trade_no,
    combine_out_trade_no,
    amount_fen,
    status,
    status in ('SUCCESS', 'REFUND') as is_paid,
    created_at,
    paid_at,
    cast(timezone('Asia/Shanghai', paid_at) as date) as paid_date,
    cast(timezone('Asia/Shanghai', created_at) as date) as created_date,
    transaction_id,
    attach,
    description,
    source_label,
    mchid || '/' || out_trade_no as local_key
from local_orders
