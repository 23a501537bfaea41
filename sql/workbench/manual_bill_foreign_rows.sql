-- The rows of a manual bill (loaded into a scratch warehouse first) that name another merchant (商户号) or
-- another day (交易时间, Beijing) than the merchant and day it is loaded as: any row refuses the file.
select
    line_no,
    mchid,
    cast(timezone('Asia/Shanghai', trade_time) as date) as trade_day
from raw.trade_bill_rows
where
    bill_mchid = $mchid
    and bill_type = $bill_type
    and bill_date = $bill_date
    and (
        mchid is distinct from $mchid
        or cast(timezone('Asia/Shanghai', trade_time) as date) <> $bill_date
    )
order by line_no
