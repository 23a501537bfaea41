-- The open backlog: exceptions nobody has resolved yet (work state open or assigned; pending items, which
-- wait for the next bill, are not work), per merchant, class and work state, with their money at stake, the
-- age of the oldest (business days, as in mart_exceptions) and how many are past their class's SLA.
-- as_of_date is the newest reconciled day the ages are counted to.
with

exceptions as (
    select
        mchid,
        class,
        work_state,
        age_days,
        exposure_fen,
        overdue
    from marts.mart_exceptions
    where state = 'open'
),

newest as (
    select max(as_of_date) as as_of_date from recon.runs
)

select
    newest.as_of_date,
    exceptions.mchid,
    exceptions.class,
    exceptions.work_state,
    count(*) as items,
    sum(exceptions.exposure_fen)::bigint as exposure_fen,
    max(exceptions.age_days) as oldest_age_days,
    count(*) filter (where exceptions.overdue) as overdue_items
from exceptions
cross join newest
group by newest.as_of_date, exceptions.mchid, exceptions.class, exceptions.work_state
