-- The exception state machine, step 5: every current exception is written with its evidence. A new one
-- gets its first-seen run; a known one keeps it and takes the new class, state, day and evidence (a
-- reopened one loses its resolution). A manual resolution (resolved_by set) that this run does not contradict
-- (same class and amounts, as in actions_reopened.sql) keeps its state, resolution and note and takes only the
-- new sighting and evidence (keeps_resolution); a contradicted one is reopened like any other (its assignee
-- stays). A MERGE, so it needs no key constraint (a DuckLake has none), with one UPDATE action (all a DuckLake
-- MERGE takes).
merge into recon.exceptions as known
using (
    select
        current_exceptions.exception_id,
        current_exceptions.item_kind,
        current_exceptions.mchid,
        current_exceptions.item_key,
        current_exceptions.class,
        current_exceptions.state,
        current_exceptions.recon_date,
        current_exceptions.combine_out_trade_no,
        current_exceptions.out_trade_no,
        current_exceptions.out_refund_no,
        current_exceptions.transaction_id,
        current_exceptions.bill_fen,
        current_exceptions.local_fen,
        current_exceptions.notified_fen,
        current_exceptions.diff_fen,
        current_exceptions.exposure_fen,
        current_exceptions.bill_fee_millifen,
        current_exceptions.expected_fee_millifen,
        current_exceptions.copies,
        current_exceptions.bill_date,
        current_exceptions.bill_archive_sha1,
        current_exceptions.bill_line_no,
        current_exceptions.notification_id,
        current_exceptions.notification_log_file,
        current_exceptions.notification_line_no,
        current_exceptions.local_key,
        current_exceptions.detail,
        coalesce(
            earlier.state = 'resolved'
            and earlier.resolved_by is not null
            and earlier.class is not distinct from current_exceptions.class
            and earlier.bill_fen is not distinct from current_exceptions.bill_fen
            and earlier.local_fen is not distinct from current_exceptions.local_fen
            and earlier.notified_fen is not distinct from current_exceptions.notified_fen
            and earlier.diff_fen is not distinct from current_exceptions.diff_fen
            and earlier.exposure_fen is not distinct from current_exceptions.exposure_fen
            and earlier.bill_fee_millifen is not distinct from current_exceptions.bill_fee_millifen,
            false
        ) as keeps_resolution
    from current_exceptions
    left join recon.exceptions as earlier on current_exceptions.exception_id = earlier.exception_id
) as current
on known.exception_id = current.exception_id
when matched then update set
    last_seen_run = $run_id,
    last_seen_at = $now,
    resolved_run = null,
    resolved_at = case when current.keeps_resolution then known.resolved_at end,
    resolution = case when current.keeps_resolution then known.resolution end,
    resolved_by = case when current.keeps_resolution then known.resolved_by end,
    resolution_note = case when current.keeps_resolution then known.resolution_note end,
    resolved_on = case when current.keeps_resolution then known.resolved_on end,
    class = current.class,
    state = case when current.keeps_resolution then known.state else current.state end,
    recon_date = current.recon_date,
    combine_out_trade_no = current.combine_out_trade_no,
    out_trade_no = current.out_trade_no,
    out_refund_no = current.out_refund_no,
    transaction_id = current.transaction_id,
    bill_fen = current.bill_fen,
    local_fen = current.local_fen,
    notified_fen = current.notified_fen,
    diff_fen = current.diff_fen,
    exposure_fen = current.exposure_fen,
    bill_fee_millifen = current.bill_fee_millifen,
    expected_fee_millifen = current.expected_fee_millifen,
    copies = current.copies,
    bill_date = current.bill_date,
    bill_archive_sha1 = current.bill_archive_sha1,
    bill_line_no = current.bill_line_no,
    notification_id = current.notification_id,
    notification_log_file = current.notification_log_file,
    notification_line_no = current.notification_line_no,
    local_key = current.local_key,
    detail = current.detail
when not matched then insert (
    exception_id, item_kind, mchid, item_key, class, state, recon_date,
    first_seen_run, first_seen_at, last_seen_run, last_seen_at,
    combine_out_trade_no, out_trade_no, out_refund_no, transaction_id, bill_fen, local_fen,
    notified_fen, diff_fen, exposure_fen, bill_fee_millifen, expected_fee_millifen, copies, bill_date,
    bill_archive_sha1, bill_line_no, notification_id, notification_log_file, notification_line_no,
    local_key, detail
) values (
    current.exception_id,
    current.item_kind,
    current.mchid,
    current.item_key,
    current.class,
    current.state,
    current.recon_date,
    $run_id,
    $now,
    $run_id,
    $now,
    current.combine_out_trade_no,
    current.out_trade_no,
    current.out_refund_no,
    current.transaction_id,
    current.bill_fen,
    current.local_fen,
    current.notified_fen,
    current.diff_fen,
    current.exposure_fen,
    current.bill_fee_millifen,
    current.expected_fee_millifen,
    current.copies,
    current.bill_date,
    current.bill_archive_sha1,
    current.bill_line_no,
    current.notification_id,
    current.notification_log_file,
    current.notification_line_no,
    current.local_key,
    current.detail
)
