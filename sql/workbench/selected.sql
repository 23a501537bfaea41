-- The exceptions an action (or `wxrecon exceptions list`) selects: by id, or by a filter — merchants, classes,
-- a range of bill days, a band of money at stake (fen), work states. A NULL parameter does not filter.
-- work_state is derived as in the marts: resolved, else assigned (someone has it), else open.
with

exceptions as (
    select
        exception_id,
        item_kind,
        mchid,
        item_key,
        class,
        state,
        case
            when state = 'resolved' then 'resolved'
            when assignee is not null then 'assigned'
            else 'open'
        end as work_state,
        recon_date,
        combine_out_trade_no,
        out_trade_no,
        bill_fen,
        local_fen,
        notified_fen,
        diff_fen,
        exposure_fen,
        assignee,
        resolution,
        resolved_by,
        resolved_run,
        resolution_note,
        detail
    from recon.exceptions
)

select *
from exceptions
where
    ($ids is null or list_contains($ids, exception_id))
    and ($mchids is null or list_contains($mchids, mchid))
    and ($classes is null or list_contains($classes, class))
    and ($start is null or recon_date >= $start)
    and ($end is null or recon_date <= $end)
    and ($min_fen is null or exposure_fen >= $min_fen)
    and ($max_fen is null or exposure_fen <= $max_fen)
    and ($work_states is null or list_contains($work_states, work_state))
order by recon_date, mchid, item_kind, item_key
