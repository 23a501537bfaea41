-- Reconciliation: the merchant's own records and the persistent results.
-- Units: *_fen BIGINT fen; fee_millifen BIGINT milli-fen; times TIMESTAMPTZ (instants); dates are Beijing days.
create schema if not exists recon;

-- The merchant's combine-order records (flows.sources canonical shape), latest import wins per key.
-- An import replaces every row of its window (created_at or paid_at inside it), so a record deleted
-- at the source disappears here too.
create table raw.local_orders (
    mchid varchar not null,                 -- the sub order's merchant
    out_trade_no varchar not null,          -- the sub order's number
    combine_out_trade_no varchar not null,
    amount_fen bigint not null,
    status varchar not null,                -- NOTPAY | SUCCESS | CLOSED | REFUND | PAYERROR
    created_at timestamptz not null,
    paid_at timestamptz,
    transaction_id varchar,
    attach varchar,
    description varchar,
    source_label varchar not null,          -- which configured source (never its URL)
    imported_at timestamptz not null,
    primary key (mchid, out_trade_no)
);

create table raw.local_refunds (
    out_refund_no varchar not null,
    out_trade_no varchar not null,
    mchid varchar,
    amount_fen bigint not null,
    status varchar not null,                -- SUCCESS | PROCESSING | CLOSED | ABNORMAL
    created_at timestamptz not null,
    succeeded_at timestamptz,
    source_label varchar not null,
    imported_at timestamptz not null,
    primary key (out_trade_no, out_refund_no)
);

create table recon.runs (
    run_id varchar primary key,
    as_of_date date not null,               -- the bill day reconciled
    window_start date not null,             -- first day recomputed (as_of_date - pending_days)
    merchants varchar[] not null,
    pending_days integer not null,
    tolerance_fen bigint not null,
    fee_tolerance_fen bigint not null,
    local_refunds boolean not null,         -- whether a local refund source took part
    started_at timestamptz not null,
    finished_at timestamptz,
    item_count bigint,
    exception_count bigint
);

-- The parameters of the run being computed: the intermediate models read them.
create table recon.params (
    run_id varchar not null,
    as_of_date date not null,
    window_start date not null,
    pending_days integer not null,
    tolerance_fen bigint not null,
    fee_tolerance_fen bigint not null,
    local_refunds boolean not null
);

create table recon.run_merchants (
    mchid varchar not null
);

-- Every exception (and pending item) of every (merchant, day), with its evidence; a run replaces the days it
-- recomputes. Matched items are counted per merchant-day in recon.daily_totals.
create table recon.items (
    recon_date date not null,               -- the bill day the item belongs to
    mchid varchar not null,                 -- merchant of the item (sub order / bill / receiver)
    item_kind varchar not null,             -- payment | refund | combine | notification | notification_line | fee
    item_key varchar not null,              -- out_trade_no, out_refund_no, combine_out_trade_no or log line hash
    class varchar not null,                 -- matched | amount_mismatch | ... (see README)
    state varchar not null,                 -- open | pending
    combine_out_trade_no varchar,
    out_trade_no varchar,
    out_refund_no varchar,
    transaction_id varchar,
    bill_fen bigint,
    local_fen bigint,
    notified_fen bigint,
    diff_fen bigint,                        -- bill - local; notification: notified - reference; refund: bill - local
    bill_fee_millifen bigint,               -- fee items: the fee the bill prints
    expected_fee_millifen bigint,           -- fee items: round_half_up(amount x rate), in milli-fen
    copies integer,                         -- bill rows / notification deliveries collapsed into the item
    bill_date date,
    bill_archive_sha1 varchar,
    bill_line_no bigint,
    notification_id varchar,
    notification_log_file varchar,
    notification_line_no bigint,
    local_key varchar,                      -- mchid/out_trade_no (or out_refund_no) of the local record
    detail varchar,
    run_id varchar not null
);

-- Matched items per merchant-day and kind (payment, notification, refund): how many, and their fen sums.
create table recon.daily_totals (
    recon_date date not null,
    mchid varchar not null,
    item_kind varchar not null,
    items bigint not null,
    bill_fen bigint not null,
    local_fen bigint not null,
    run_id varchar not null
);

-- Exceptions persist across runs with their state and age.
create table recon.exceptions (
    exception_id varchar primary key,       -- md5(item_kind | mchid | item_key)
    item_kind varchar not null,
    mchid varchar not null,
    item_key varchar not null,
    class varchar not null,
    state varchar not null,                 -- open | pending | resolved
    recon_date date not null,
    first_seen_run varchar not null,
    first_seen_at timestamptz not null,
    last_seen_run varchar not null,
    last_seen_at timestamptz not null,
    resolved_run varchar,
    resolved_at timestamptz,
    resolution varchar,                     -- matched (found agreeing by a later run) | cleared (no longer reported)
    combine_out_trade_no varchar,
    out_trade_no varchar,
    out_refund_no varchar,
    transaction_id varchar,
    bill_fen bigint,
    local_fen bigint,
    notified_fen bigint,
    diff_fen bigint,
    bill_fee_millifen bigint,
    expected_fee_millifen bigint,
    copies integer,
    bill_date date,
    bill_archive_sha1 varchar,
    bill_line_no bigint,
    notification_id varchar,
    notification_log_file varchar,
    notification_line_no bigint,
    local_key varchar,
    detail varchar
);

create table recon.exception_events (
    run_id varchar not null,
    event_at timestamptz not null,
    exception_id varchar not null,
    event varchar not null,                 -- opened | reclassified | resolved | reopened
    from_class varchar,
    to_class varchar,
    from_state varchar,
    to_state varchar
);
