-- Which run made each attempt, and what kind of problem a failed one was (flows/outcome.py: late, configuration,
-- integrity, unavailable, storage, failed): a night's merchants are fetched by units that may run on other
-- machines, and the nightly reads their outcomes back from here.
alter table raw.bill_fetch_log add column run_id varchar;
alter table raw.bill_fetch_log add column problem varchar;
