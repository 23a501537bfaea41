-- Every exception of this run (pending items included), all kinds, in the shape of recon.items without
-- run_id: what the runner inserts. Matched items are counted in intermediate.int_daily_totals.
--
-- exposure_fen is the money at stake, the one figure alerts, reports and notebooks sum and sort by:
--   amount differences (amount_mismatch, refund_amount_mismatch, notification_amount_mismatch): |difference|
--   one side only (missing_locally, missing_in_bill, pending, refund_missing_*, notification_missing, ...):
--     the amount on the side that has it
--   status_mismatch, transaction_mismatch, combine_partial: the whole amount in question (the larger side)
--   duplicate_in_bill: the amount listed again (amount x (copies - 1))
--   fee_mismatch: |bill fee - expected fee|, rounded half up to whole fen
--   notification_duplicate (the same callback twice moves no money), and anything without an amount: 0
with

items as (
    select * from intermediate.int_payment_items
    union all by name
    select * from intermediate.int_combine_items
    union all by name
    select * from intermediate.int_notification_items
    union all by name
    select * from intermediate.int_notification_line_items
    union all by name
    select * from intermediate.int_fee_items
    union all by name
    select * from intermediate.int_refund_items where class <> 'matched'
),

merchants as (
    select mchid from recon.run_merchants
)

select
    items.recon_date,
    items.mchid,
    items.item_kind,
    items.item_key,
    items.class,
    items.state,
    items.combine_out_trade_no,
    items.out_trade_no,
    items.out_refund_no,
    items.transaction_id,
    items.bill_fen,
    items.local_fen,
    items.notified_fen,
    items.diff_fen,
    case
        when items.class = 'notification_duplicate' then 0
        when items.class = 'fee_mismatch'
            then (abs(items.bill_fee_millifen - items.expected_fee_millifen) + 500) // 1000
        when items.class = 'duplicate_in_bill' then abs(items.bill_fen) * (items.copies - 1)
        when items.class in ('status_mismatch', 'transaction_mismatch', 'combine_partial')
            then coalesce(greatest(abs(items.bill_fen), abs(items.local_fen), abs(items.notified_fen)), 0)
        else coalesce(abs(items.diff_fen), abs(items.bill_fen), abs(items.local_fen), abs(items.notified_fen), 0)
    end as exposure_fen,
    items.bill_fee_millifen,
    items.expected_fee_millifen,
    items.copies,
    items.bill_date,
    items.bill_archive_sha1,
    items.bill_line_no,
    items.notification_id,
    items.notification_log_file,
    items.notification_line_no,
    items.local_key,
    items.detail
from items
inner join merchants
    on items.mchid = merchants.mchid
