-- Every exception of every day (pending items included) with its evidence: the archived bill file and line,
-- the notification log line, the local record key. One row per (recon_date, mchid, item_kind, item_key).
-- Matched items are counted in mart_daily_summary. exposure_fen is the money at stake (sql/recon/items.sql
-- says how each class counts it). bill_archive_path is where the load recorded the bill it read (its path in
-- the archive: raw.bill_loads.source_label), so an item of a day loaded from the SUCCESS + REFUND bills
-- points at the right file. exception_id and work_state (open | assigned | resolved) join the item to its
-- exception in mart_exceptions: an item finance resolved by hand is still an item of its day, but resolved.
with

items as (
    select
        recon_date,
        mchid,
        item_kind,
        item_key,
        class,
        state,
        combine_out_trade_no,
        out_trade_no,
        out_refund_no,
        transaction_id,
        bill_fen,
        local_fen,
        notified_fen,
        diff_fen,
        exposure_fen,
        bill_fee_millifen,
        expected_fee_millifen,
        copies,
        bill_date,
        bill_archive_sha1,
        bill_line_no,
        notification_id,
        notification_log_file,
        notification_line_no,
        local_key,
        detail,
        run_id
    from recon.items
),

loads as (
    select
        mchid,
        bill_type,
        bill_date,
        archive_sha1,
        nullif(source_label, '') as archive_path
    from raw.bill_loads
),

exceptions as (
    select
        exception_id,
        case
            when state = 'resolved' then 'resolved'
            when assignee is not null then 'assigned'
            else 'open'
        end as work_state
    from recon.exceptions
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
    items.exposure_fen,
    items.bill_fee_millifen,
    items.expected_fee_millifen,
    items.copies,
    items.bill_date,
    loads.bill_type,
    items.bill_archive_sha1,
    items.bill_line_no,
    loads.archive_path as bill_archive_path,
    items.notification_id,
    items.notification_log_file,
    items.notification_line_no,
    items.local_key,
    items.detail,
    items.run_id,
    md5(items.item_kind || '|' || items.mchid || '|' || items.item_key) as exception_id,
    coalesce(exceptions.work_state, 'open') as work_state
from items
left join loads
    on items.bill_date = loads.bill_date
    and items.bill_archive_sha1 = loads.archive_sha1
left join exceptions
    on md5(items.item_kind || '|' || items.mchid || '|' || items.item_key) = exceptions.exception_id
