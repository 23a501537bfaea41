-- Every reconciliation run: which day, which merchants, when, how many items and exceptions.
with

runs as (
    select
        run_id,
        as_of_date,
        window_start,
        merchants,
        pending_days,
        tolerance_fen,
        fee_tolerance_fen,
        local_refunds,
        started_at,
        finished_at,
        item_count,
        exception_count
    from recon.runs
)

select
    run_id,
    as_of_date,
    window_start,
    merchants,
    pending_days,
    tolerance_fen,
    fee_tolerance_fen,
    local_refunds,
    started_at,
    finished_at,
    item_count,
    exception_count,
    finished_at is not null as finished
from runs
