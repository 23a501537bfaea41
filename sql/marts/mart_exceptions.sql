-- Every exception ever found, with its state (open, pending, resolved), age and evidence. Age is business
-- time: days from the item's bill day to the newest reconciled day, or, for a resolved one, to the reconciled
-- day of the run that resolved it, or for a manual resolution to its Beijing business day (at most the newest
-- reconciled day); never the wall-clock resolved_at, which is an audit stamp only.
-- exposure_fen and bill_archive_path mean what they mean in mart_recon_items.
--
-- The workbench: work_state is what finance sees (open -> assigned -> resolved; reopened items are open or
-- assigned again), assignee, who resolved it by hand (resolved_by, NULL for a run) and why; the SLA of its
-- class in days (sla_days; 5 for a class not listed) and whether an unresolved one is past it (overdue); the
-- resolution the newest 补单 query proposes (proposed_resolution) until someone resolves it.
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
        detail,
        assignee,
        resolved_by,
        resolution_note,
        resolved_on
    from recon.exceptions
),

sla as (
    select * from (
        values
        ('amount_mismatch', 3),
        ('missing_in_bill', 3),
        ('missing_locally', 3),
        ('status_mismatch', 2),
        ('transaction_mismatch', 3),
        ('duplicate_in_bill', 5),
        ('combine_partial', 2),
        ('notification_missing', 5),
        ('notification_unverified', 2),
        ('notification_amount_mismatch', 2),
        ('notification_duplicate', 10),
        ('fee_mismatch', 10),
        ('refund_missing_locally', 3),
        ('refund_amount_mismatch', 3),
        ('refund_missing_in_bill', 3),
        ('pending', 5)
    ) as t (class, sla_days)
),

proposals as (
    select
        exception_id,
        arg_max(resolution, acted_at) as proposed_resolution,
        max(acted_at) as queried_at
    from recon.exception_actions
    where action = 'queried'
    group by exception_id
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
            then coalesce(resolving.as_of_date, least(exceptions.resolved_on, newest.as_of_date))
            - exceptions.recon_date
        else newest.as_of_date - exceptions.recon_date
    end as age_days,
    case
        when exceptions.state = 'resolved' then 'resolved'
        when exceptions.assignee is not null then 'assigned'
        else 'open'
    end as work_state,
    exceptions.assignee,
    exceptions.resolved_by,
    exceptions.resolution_note,
    exceptions.resolved_on,
    coalesce(sla.sla_days, 5) as sla_days,
    exceptions.state <> 'resolved'
    and newest.as_of_date - exceptions.recon_date > coalesce(sla.sla_days, 5) as overdue,
    case
        when exceptions.state <> 'resolved' then proposals.proposed_resolution
    end as proposed_resolution,
    proposals.queried_at,
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
left join sla on exceptions.class = sla.class
left join proposals on exceptions.exception_id = proposals.exception_id
left join loads
    on exceptions.bill_date = loads.bill_date
    and exceptions.bill_archive_sha1 = loads.archive_sha1
