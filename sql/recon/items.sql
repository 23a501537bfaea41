-- Every exception of this run (pending items included), all kinds, in the shape of recon.items without
-- run_id: what the runner inserts. Matched items are counted in intermediate.int_daily_totals.
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
