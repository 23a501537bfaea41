-- The exception state machine, step 3: a 'resolved' event for every open or pending exception of the
-- recomputed days (this run's merchants) that this run no longer reports.
insert into recon.exception_events (
    run_id, event_at, exception_id, event, from_class, to_class, from_state, to_state
)
select
    $run_id,
    $now,
    exception_id,
    'resolved',
    class,
    null,
    state,
    'resolved'
from recon.exceptions
where
    state in ('open', 'pending')
    and list_contains($merchants, mchid)
    and recon_date between $window_start and $as_of
    and exception_id not in (select exception_id from current_exceptions)
