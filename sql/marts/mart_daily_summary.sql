-- Per merchant-day, item kind and class: how many items, and their fen sums (bill, local, notified,
-- |difference|, and exposure_fen: the money at stake, as sql/recon/items.sql counts it). Matched items come
-- from the daily totals, exceptions from the items.
with

matched as (
    select
        recon_date,
        mchid,
        item_kind,
        'matched' as class,
        'matched' as state,
        items,
        bill_fen,
        local_fen,
        0 as notified_fen,
        0 as abs_diff_fen,
        0 as exposure_fen
    from recon.daily_totals
),

exceptions as (
    select
        recon_date,
        mchid,
        item_kind,
        class,
        state,
        count(*) as items,
        coalesce(sum(bill_fen), 0) as bill_fen,
        coalesce(sum(local_fen), 0) as local_fen,
        coalesce(sum(notified_fen), 0) as notified_fen,
        coalesce(sum(abs(diff_fen)), 0) as abs_diff_fen,
        coalesce(sum(exposure_fen), 0) as exposure_fen
    from recon.items
    group by recon_date, mchid, item_kind, class, state
)

select
    recon_date,
    mchid,
    item_kind,
    class,
    state,
    items,
    bill_fen,
    local_fen,
    notified_fen,
    abs_diff_fen,
    exposure_fen
from matched
union all
select
    recon_date,
    mchid,
    item_kind,
    class,
    state,
    items,
    bill_fen,
    local_fen,
    notified_fen,
    abs_diff_fen,
    exposure_fen
from exceptions
