-- Per merchant-day: what the trade bill says should settle and what the fund-flow bill (BASIC account)
-- booked. Trade side: payments (应结订单金额) minus their fees, minus refunds plus the fees they returned,
-- in milli-fen because fees are. Fund-flow side: income and expense rows of the BASIC account, split into
-- trade movements (业务类型 交易 / 退款) and everything else (withdrawals, adjustments...). The difference
-- is NULL when no fund-flow bill of the day is loaded; a payment booked across midnight shows as a
-- difference on both days.
with

payments as (
    select
        bill_mchid as mchid,
        bill_date,
        count(*) as payment_rows,
        sum(order_amount_fen) as payment_order_fen,
        sum(coalesce(settlement_amount_fen, order_amount_fen)) as payment_settlement_fen,
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

flows as (
    select
        bill_mchid as mchid,
        bill_date,
        count(*) as flow_rows,
        sum(amount_fen) filter (where direction = '收入') as flow_income_fen,
        sum(amount_fen) filter (where direction = '支出') as flow_expense_fen,
        sum(signed_amount_fen) filter (where business_type in ('交易', '退款')) as flow_trade_net_fen,
        sum(signed_amount_fen) filter (where business_type not in ('交易', '退款')) as flow_other_net_fen
    from staging.stg_fundflow
    where account_type = 'BASIC'
    group by bill_mchid, bill_date
),

flow_days as (
    select mchid, bill_date from raw.bill_loads
    where bill_type = 'fundflow_basic'
    union
    select mchid, bill_date from raw.bill_fetches
    where bill_type = 'fundflow_basic' and outcome = 'no_statement'
),

days as (
    select mchid, bill_date from payments
    union
    select mchid, bill_date from refunds
    union
    select mchid, bill_date from flow_days
),

joined as (
    select
        days.mchid,
        days.bill_date,
        coalesce(payments.payment_rows, 0) as payment_rows,
        coalesce(payments.payment_order_fen, 0) as payment_order_fen,
        coalesce(payments.payment_settlement_fen, 0) as payment_settlement_fen,
        coalesce(payments.payment_fee_millifen, 0) as payment_fee_millifen,
        coalesce(refunds.refund_rows, 0) as refund_rows,
        coalesce(refunds.refund_fen, 0) as refund_fen,
        coalesce(refunds.refund_fee_millifen, 0) as refund_fee_millifen,
        flow_days.mchid is not null as fund_flow_loaded,
        coalesce(flows.flow_rows, 0) as flow_rows,
        coalesce(flows.flow_income_fen, 0) as flow_income_fen,
        coalesce(flows.flow_expense_fen, 0) as flow_expense_fen,
        coalesce(flows.flow_trade_net_fen, 0) as flow_trade_net_fen,
        coalesce(flows.flow_other_net_fen, 0) as flow_other_net_fen
    from days
    left join payments
        on days.mchid = payments.mchid and days.bill_date = payments.bill_date
    left join refunds
        on days.mchid = refunds.mchid and days.bill_date = refunds.bill_date
    left join flows
        on days.mchid = flows.mchid and days.bill_date = flows.bill_date
    left join flow_days
        on days.mchid = flow_days.mchid and days.bill_date = flow_days.bill_date
)

select
    mchid,
    bill_date,
    payment_rows,
    payment_order_fen,
    payment_settlement_fen,
    payment_fee_millifen,
    refund_rows,
    refund_fen,
    refund_fee_millifen,
    payment_settlement_fen * 1000 - payment_fee_millifen - refund_fen * 1000 - refund_fee_millifen
        as trade_net_millifen,
    fund_flow_loaded,
    flow_rows,
    flow_income_fen,
    flow_expense_fen,
    flow_trade_net_fen,
    flow_other_net_fen,
    case when fund_flow_loaded then
        flow_trade_net_fen * 1000
        - (payment_settlement_fen * 1000 - payment_fee_millifen - refund_fen * 1000 - refund_fee_millifen)
    end as settlement_diff_millifen
from joined
