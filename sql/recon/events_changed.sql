-- The exception state machine, step 2: an event for every exception this run opened, reopened (it had been
-- resolved) or reclassified (class or state changed). Written first: it needs each exception's state
-- before this run. event_at is the wall-clock audit stamp; the business day is the run's as_of_date.
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
    known.exception_id is null
    or known.state = 'resolved'
    or known.class <> current_exceptions.class
    or known.state <> current_exceptions.state
