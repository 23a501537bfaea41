-- The exception state machine, step 2: an event for every exception this run opened, reopened (it had been
-- resolved) or reclassified (class or state changed). Written first: it needs each exception's state
-- before this run. event_at is the wall-clock audit stamp; the business day is the run's as_of_date.
-- A manual resolution (resolved_by set) stays resolved while the run reports the same class and amounts it
-- was resolved on; only a contradiction reopens it (as in actions_reopened.sql).
insert into recon.exception_events (
    run_id, event_at, exception_id, event, from_class, to_class, from_state, to_state
)
select
    $run_id,
    $now,
    current_exceptions.exception_id,
    case
        when known.exception_id is null then 'opened'
        when known.state = 'resolved' then 'reopened'
        else 'reclassified'
    end,
    known.class,
    current_exceptions.class,
    known.state,
    current_exceptions.state
from current_exceptions
left join recon.exceptions as known on current_exceptions.exception_id = known.exception_id
where
    (
        known.exception_id is null
        or known.state = 'resolved'
        or known.class <> current_exceptions.class
        or known.state <> current_exceptions.state
    )
    and not (
        known.state = 'resolved'
        and known.resolved_by is not null
        and known.class is not distinct from current_exceptions.class
        and known.bill_fen is not distinct from current_exceptions.bill_fen
        and known.local_fen is not distinct from current_exceptions.local_fen
        and known.notified_fen is not distinct from current_exceptions.notified_fen
        and known.diff_fen is not distinct from current_exceptions.diff_fen
        and known.exposure_fen is not distinct from current_exceptions.exposure_fen
        and known.bill_fee_millifen is not distinct from current_exceptions.bill_fee_millifen
    )
