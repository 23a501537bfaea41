-- Every exception ever found, with its state (open, pending, resolved), age and evidence. Age is business
-- time: days from the item's bill day to the newest reconciled day, or, for a resolved one, to the reconciled
-- day of the run that resolved it (never the wall-clock resolved_at, which is an audit stamp only).
-- exposure_fen and bill_archive_path mean what they mean in mart_recon_items.
with

exceptions as (
    select
        exception_id,
        item_kind,
        mchid,
        item_key,
        class,
        state,
        recon_date,
        first_seen_run,
        first_seen_at,
        last_seen_run,
        last_seen_at,
        resolved_run,
        resolved_at,
        resolution,
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
    from recon.exceptions
),

runs as (
    select run_id, as_of_date from recon.runs
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

newest as (
    select max(as_of_date) as as_of_date from runs
)

select
    exceptions.exception_id,
    exceptions.item_kind,
    exceptions.mchid,
    exceptions.item_key,
    exceptions.class,
    exceptions.state,
    exceptions.recon_date,
    case
        when exceptions.state = 'resolved'
            then resolving.as_of_date - exceptions.recon_date
        else newest.as_of_date - exceptions.recon_date
    end as age_days,
    exceptions.first_seen_run,
    exceptions.first_seen_at,
    exceptions.last_seen_run,
    exceptions.last_seen_at,
    exceptions.resolved_run,
    exceptions.resolved_at,
    exceptions.resolution,
    exceptions.combine_out_trade_no,
    exceptions.out_trade_no,
    exceptions.out_refund_no,
    exceptions.transaction_id,
    exceptions.bill_fen,
    exceptions.local_fen,
    exceptions.notified_fen,
    exceptions.diff_fen,
    exceptions.exposure_fen,
    exceptions.bill_fee_millifen,
    exceptions.expected_fee_millifen,
    exceptions.copies,
    exceptions.bill_date,
    loads.bill_type,
    exceptions.bill_archive_sha1,
    exceptions.bill_line_no,
    loads.archive_path as bill_archive_path,
    exceptions.notification_id,
    exceptions.notification_log_file,
    exceptions.notification_line_no,
    exceptions.local_key,
    exceptions.detail
from exceptions
cross join newest
left join runs as resolving on exceptions.resolved_run = resolving.run_id
left join loads
    on exceptions.bill_date = loads.bill_date
    and exceptions.bill_archive_sha1 = loads.archive_sha1
