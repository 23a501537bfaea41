-- A bill line stored more than once for the same load key (a load that doubled instead of replacing).
with

bill_lines as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        line_no
    from raw.trade_bill_rows
    union all
    select
        bill_mchid,
        bill_type,
        bill_date,
        line_no
    from raw.fund_flow_rows
)

select
    bill_mchid,
    bill_type,
    bill_date,
    line_no,
    count(*) as copies
from bill_lines
group by bill_mchid, bill_type, bill_date, line_no
having count(*) > 1
