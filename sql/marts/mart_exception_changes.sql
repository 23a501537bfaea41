-- What each run changed: exceptions opened, reclassified (e.g. pending -> missing_in_bill), resolved or
-- reopened. The newest run's changes are "what opened and closed since the previous run".
with

events as (
    select
        run_id,
        event_at,
        exception_id,
        event,
        from_class,
        to_class,
        from_state,
        to_state
    from recon.exception_events
),

exceptions as (
    select
        exception_id,
        item_kind,
        mchid,
        item_key,
        recon_date,
        resolution,
        bill_fen,
        local_fen,
        diff_fen
    from recon.exceptions
),

runs as (
    select
        run_id,
        as_of_date,
        row_number() over (order by started_at desc) = 1 as is_latest
    from recon.runs
)

select
    events.exception_id,
    events.run_id,
    runs.as_of_date,
    runs.is_latest,
    events.event_at,
    events.event,
    exceptions.item_kind,
    exceptions.mchid,
    exceptions.item_key,
    exceptions.recon_date,
    events.from_class,
    events.to_class,
    events.from_state,
    events.to_state,
    case when events.event = 'resolved' then exceptions.resolution end as resolution,
    exceptions.bill_fen,
    exceptions.local_fen,
    exceptions.diff_fen
from events
inner join exceptions
    on events.exception_id = exceptions.exception_id
inner join runs
    on events.run_id = runs.run_id
