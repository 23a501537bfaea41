-- One row per combine order that WeChat Pay's bills show paid: did a notification we verified ourselves
-- arrive for every sub order, and does it carry the amount the bill shows? (A sub order whose combine
-- number is unknown counts as a combine order of its own.)
with

subs as (
    select
        coalesce(combine_out_trade_no, 'sub:' || mchid || '/' || out_trade_no) as combine_key,
        combine_out_trade_no,
        recon_date,
        mchid,
        notified_combine_mchid,
        bill_fen,
        notified_fen,
        notified_amounts_differ
    from intermediate.int_sub_orders
    where in_bill
)

select
    combine_key,
    any_value(combine_out_trade_no) as combine_out_trade_no,
    min(recon_date) as recon_date,
    coalesce(min(notified_combine_mchid), min(mchid)) as mchid,
    count(*) as sub_orders,
    count(*) filter (where notified_fen is null) as missing_subs,
    count(*) filter (where notified_fen <> bill_fen or notified_amounts_differ) as differing_subs,
    sum(bill_fen) as reference_fen,
    sum(notified_fen) as notified_fen
from subs
group by combine_key
