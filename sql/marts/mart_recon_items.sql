-- Every exception of every day (pending items included) with its evidence: the archived bill file and line,
-- the notification log line, the local record key. One row per (recon_date, mchid, item_kind, item_key).
-- Matched items are counted in mart_daily_summary.
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
)

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
    bill_fee_millifen,
    expected_fee_millifen,
    copies,
    bill_date,
    bill_archive_sha1,
    bill_line_no,
    case when bill_archive_sha1 is not null then
        'mchid=' || mchid || '/bill_type=trade_all/bill_date=' || bill_date || '/' || bill_archive_sha1 || '.csv.gz'
    end as bill_archive_path,
    notification_id,
    notification_log_file,
    notification_line_no,
    local_key,
    detail,
    run_id
from items
