-- One audit row per selected exception for an action, written in the action's transaction before the
-- exception changes (from_state is its work state before). Never updated afterwards.
insert into recon.exception_actions (
    action_id, batch_id, exception_id, action, actor, acted_at, business_date, run_id, from_state, to_state,
    assignee, resolution, note, class, bill_fen, local_fen, notified_fen, diff_fen, exposure_fen, evidence
)
select
    md5($batch_id || '|' || exception_id),
    $batch_id,
    exception_id,
    $action,
    $actor,
    $acted_at,
    $business_date,
    null,
    work_state,
    coalesce($to_state, case when assignee is null then 'open' else 'assigned' end),
    coalesce($assignee, assignee),
    $resolution,
    $note,
    class,
    bill_fen,
    local_fen,
    notified_fen,
    diff_fen,
    exposure_fen,
    $evidence
from (
    select
        *,
        case
            when state = 'resolved' then 'resolved'
            when assignee is not null then 'assigned'
            else 'open'
        end as work_state
    from recon.exceptions
    where list_contains($ids, exception_id)
)
