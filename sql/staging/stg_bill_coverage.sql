-- How far each merchant's bills of each type are known: the latest day loaded, or known to have no trades
-- (NO_STATEMENT_EXIST). A payment the merchant says it took that no bill shows is pending until the
-- coverage passes its day plus the pending window.
with

known_days as (
    select mchid, bill_type, bill_date from raw.bill_loads
    union all
    select mchid, bill_type, bill_date from raw.bill_fetches where outcome in ('loaded', 'no_statement')
)

select
    mchid,
    bill_type,
    max(bill_date) as covered_through
from known_days
group by mchid, bill_type
