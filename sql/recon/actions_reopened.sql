-- The exception state machine, step 2b (before the upsert changes the state): a manual resolution that
-- this run contradicts — the item is reported again with another class or other amounts than when it was
-- resolved — is reopened visibly: an audit row 'reopened_by_data' with the new data beside the old.
insert into recon.exception_actions (
    action_id, batch_id, exception_id, action, actor, acted_at, business_date, run_id, from_state, to_state,
    assignee, resolution, note, class, bill_fen, local_fen, notified_fen, diff_fen, exposure_fen, evidence
)
select
    md5($run_id || '|' || known.exception_id),
    $run_id,
    known.exception_id,
    'reopened_by_data',
    'wxrecon',
    $now,
    $as_of,
    $run_id,
    'resolved',
    case when known.assignee is null then 'open' else 'assigned' end,
    known.assignee,
    known.resolution,
    'resolved ' || known.resolution || ' by ' || known.resolved_by || ' as ' || known.class
    || ' (bill ' || coalesce(known.bill_fen::varchar, '-') || ', local ' || coalesce(known.local_fen::varchar, '-')
    || ', notified ' || coalesce(known.notified_fen::varchar, '-') || ' fen); now reported as ' || current.class,
    current.class,
    current.bill_fen,
    current.local_fen,
    current.notified_fen,
    current.diff_fen,
    current.exposure_fen,
    null
from current_exceptions as current
inner join recon.exceptions as known on current.exception_id = known.exception_id
where
    known.state = 'resolved'
    and known.resolved_by is not null
    and (
        known.class is distinct from current.class
        or known.bill_fen is distinct from current.bill_fen
        or known.local_fen is distinct from current.local_fen
        or known.notified_fen is distinct from current.notified_fen
        or known.diff_fen is distinct from current.diff_fen
        or known.exposure_fen is distinct from current.exposure_fen
        or known.bill_fee_millifen is distinct from current.bill_fee_millifen
    )
