-- What happened when a bill was asked for: loaded, or a legitimate empty day (NO_STATEMENT_EXIST),
-- or not available (late / failed). An empty day counts as covered for the pending window.
create table raw.bill_fetches (
    mchid varchar not null,
    bill_type varchar not null,
    bill_date date not null,
    outcome varchar not null,               -- loaded | no_statement | not_ready | failed
    detail varchar,
    archive_sha1 varchar,
    fetched_at timestamptz not null,
    primary key (mchid, bill_type, bill_date)
);
