-- What each attempt to get a bill gave, appended and never updated, so that workers on many machines
-- record their merchants' bills side by side without conflicting (a DuckLake conflicts per table on
-- deletes and updates, never on appends). raw.bill_fetches, the latest attempt per (mchid, bill_type,
-- bill_date), becomes a view over it: its readers are unchanged.
create table raw.bill_fetch_log (
    mchid varchar not null,
    bill_type varchar not null,
    bill_date date not null,
    outcome varchar not null,               -- loaded | no_statement | not_ready | failed
    detail varchar,
    archive_sha1 varchar,
    fetched_at timestamptz not null
);

insert into raw.bill_fetch_log (mchid, bill_type, bill_date, outcome, detail, archive_sha1, fetched_at)
select mchid, bill_type, bill_date, outcome, detail, archive_sha1, fetched_at
from raw.bill_fetches;

drop table raw.bill_fetches;

create view raw.bill_fetches as
select mchid, bill_type, bill_date, outcome, detail, archive_sha1, fetched_at
from raw.bill_fetch_log
qualify row_number() over (partition by mchid, bill_type, bill_date order by fetched_at desc) = 1;
