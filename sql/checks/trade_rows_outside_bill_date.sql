-- Trade bill rows whose 交易时间 (Beijing) is not on the bill's day: a bill filed under the wrong date.
with

trade_rows as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        line_no,
        trade_time
    from raw.trade_bill_rows
)

select
    bill_mchid,
    bill_type,
    bill_date,
    line_no,
    trade_time
from trade_rows
where cast(timezone('Asia/Shanghai', trade_time) as date) <> bill_date
