-- The exception state machine, step 1: this run's exceptions (every item that is not matched), under the
-- exception_id that stays the same across runs. The runner keeps it as the temp table current_exceptions.
select
    md5(item_kind || '|' || mchid || '|' || item_key) as exception_id,
    item_kind,
    mchid,
    item_key,
    class,
    state,
    recon_date,
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
    detail
from recon.items
where run_id = $run_id and state <> 'matched'
