-- Matched items per merchant-day and kind, counted and summed (matched items are not stored one by one:
-- the bill rows and the merchant's records they pair are already kept with their lineage).
with

params as (
    select
        as_of_date,
        window_start
    from recon.params
),

merchants as (
    select mchid from recon.run_merchants
),

matched as (
    select recon_date, mchid, 'payment' as item_kind, bill_fen, local_fen
    from intermediate.int_sub_orders
    where class = 'matched'
    union all
    select recon_date, mchid, 'notification' as item_kind, reference_fen as bill_fen, cast(null as bigint) as local_fen
    from intermediate.int_notification_checks
    where missing_subs = 0 and differing_subs = 0
    union all
    select recon_date, mchid, 'refund' as item_kind, bill_fen, local_fen
    from intermediate.int_refund_items
    where class = 'matched'
)

select
    matched.recon_date,
    matched.mchid,
    matched.item_kind,
    count(*) as items,
    coalesce(sum(matched.bill_fen), 0) as bill_fen,
    coalesce(sum(matched.local_fen), 0) as local_fen
from matched
inner join merchants
    on matched.mchid = merchants.mchid
cross join params
where matched.recon_date between params.window_start and params.as_of_date
group by matched.recon_date, matched.mchid, matched.item_kind
