-- Notification log re-verification (flows/notifications.py: verify_log).
-- Every line of the receiver's log (flows/notifylog.py) is recorded with where it is, and every distinct
-- line content (SHA-256 of the line's bytes without its '\n') is re-verified once: signature (window judged
-- at the line's received_at), algorithm, AEAD decryption with the merchant's APIv3 key, and a strict check
-- of the decrypted payload. Units: *_fen BIGINT fen; times TIMESTAMPTZ (instants).
-- Never stored: the APIv3 key, the decrypted payload as such, payer identifiers (openid).
create schema if not exists raw;

-- One row per line occurrence. A re-run adds only occurrences not recorded yet: readable lines are unique on
-- (log_file, line_no, line_sha256); unreadable lines (line_sha256 NULL) are re-derived on every run.
create table raw.notification_lines (
    log_file varchar not null,               -- path under the log root: <mchid>/YYYY-MM-DD.jsonl or _unrouted/...
    line_no bigint not null,                 -- 1-based line number in log_file
    line_sha256 varchar,                     -- lowercase hex SHA-256 of the line without '\n'; NULL if unreadable
    mchid varchar,                           -- the merchant whose receiver got the callback (NULL if unreadable)
    outcome varchar not null,                -- the receiver's accepted | duplicate | rejected, or unreadable
    received_at timestamptz,
    claimed_notification_id varchar,         -- the id the body claims, as the receiver logged it (unverified)
    reply_status integer,                    -- the HTTP status the receiver answered
    receiver_reason varchar,                 -- the receiver's reason for a rejected line
    unreadable_reason varchar,               -- the log reader's reason for an unreadable line
    line_bytes bigint not null,              -- size of the line without '\n'
    recorded_at timestamptz not null         -- when verify_log recorded the row
);

-- One row per distinct line content: the result of re-verifying it.
create table raw.notification_checks (
    line_sha256 varchar primary key,
    verified boolean not null,               -- signature, window, algorithm, decryption and payload all good
    failure varchar,                         -- NULL if verified, else the exception class name, e.g. SignatureMismatchError
    failure_detail varchar,                  -- the exception message (never a key, never payer data)
    serial varchar,                          -- Wechatpay-Serial as sent (the key that verified it, when verified)
    notification_id varchar,                 -- the envelope id: set once the signature verified
    event_type varchar,
    create_time timestamptz,
    combine_appid varchar,                   -- from the decrypted payload (set when verified)
    combine_mchid varchar,
    combine_out_trade_no varchar,
    combine_transaction_id varchar,
    sub_order_count integer,
    checker_version integer not null,        -- flows.notifications.CHECKER_VERSION that made this row
    checked_at timestamptz not null
);

-- One row per sub order of each verified notification (payer identifiers are not kept).
create table raw.notification_sub_orders (
    line_sha256 varchar not null,            -- the verified line (raw.notification_checks)
    sub_order_no integer not null,           -- 1-based position in sub_orders
    mchid varchar not null,
    out_trade_no varchar not null,
    transaction_id varchar,
    trade_state varchar not null,
    total_amount_fen bigint not null,
    payer_amount_fen bigint,
    currency varchar,
    success_time timestamptz,
    attach varchar
);
