-- Notification-log lines that we could not verify ourselves (forged, tampered, probes, stale, unreadable):
-- each is a finding, because an upstream system may have trusted it. And notifications delivered more
-- than once (same notification id, or the same transaction_id under two ids): collapsed and counted.
with

params as (
    select
        as_of_date,
        window_start
    from recon.params
),

merchants as (
    select mchid from recon.run_merchants
),

lines as (
    select
        lines.log_file,
        lines.line_no,
        lines.line_sha256,
        lines.mchid,
        lines.outcome,
        lines.received_date,
        lines.verified,
        lines.failure,
        lines.failure_detail,
        lines.notification_id
    from staging.stg_notification_lines as lines
    inner join merchants
        on lines.mchid = merchants.mchid
    cross join params
    where lines.received_date between params.window_start and params.as_of_date
),

unverified_lines as (
    select
        received_date,
        mchid,
        coalesce(line_sha256, log_file || ':' || line_no) as item_key,
        notification_id,
        log_file,
        line_no,
        failure || coalesce(': ' || failure_detail, '')
            || case outcome when 'rejected' then ' (the receiver rejected it too)'
                when 'unreadable' then ''
                else ' (the receiver ACCEPTED it: check what trusted it)' end as detail
    from lines
    where not verified
),

unverified as (
    -- the same line content logged twice is one finding
    select
        min(received_date) as recon_date,
        mchid,
        'notification_line' as item_kind,
        item_key,
        'notification_unverified' as class,
        arg_min(notification_id, log_file || lpad(cast(line_no as varchar), 12, '0')) as notification_id,
        min(log_file) as log_file,
        arg_min(line_no, log_file || lpad(cast(line_no as varchar), 12, '0')) as line_no,
        count(*) as copies,
        arg_min(detail, log_file || lpad(cast(line_no as varchar), 12, '0')) as detail
    from unverified_lines
    group by mchid, item_key
),

verified_deliveries as (
    select
        notification_id,
        min(received_date) as recon_date,
        min(mchid) as mchid,
        count(*) as copies,
        min(log_file) as log_file,
        min(line_no) as line_no
    from lines
    where verified
    group by notification_id
),

same_transaction as (
    -- one sub order reported by more than one notification id
    select
        subs.mchid,
        subs.out_trade_no,
        subs.recon_date
    from intermediate.int_sub_orders as subs
    cross join params
    where subs.several_notifications
        and subs.recon_date between params.window_start and params.as_of_date
),

duplicates as (
    select
        recon_date,
        mchid,
        'notification_delivery' as item_kind,
        notification_id as item_key,
        'notification_duplicate' as class,
        notification_id,
        log_file,
        line_no,
        copies,
        'delivered ' || copies || ' times' as detail
    from verified_deliveries
    where copies > 1
    union all
    select
        recon_date,
        mchid,
        'notification_delivery' as item_kind,
        'sub:' || mchid || '/' || out_trade_no as item_key,
        'notification_duplicate' as class,
        cast(null as varchar) as notification_id,
        cast(null as varchar) as log_file,
        cast(null as bigint) as line_no,
        2 as copies,
        'sub order ' || out_trade_no || ' reported under more than one notification id' as detail
    from same_transaction
),

findings as (
    select * from unverified
    union all
    select * from duplicates
)

select
    recon_date,
    mchid,
    item_kind,
    item_key,
    class,
    'open' as state,
    cast(null as varchar) as combine_out_trade_no,
    cast(null as varchar) as out_trade_no,
    cast(null as varchar) as out_refund_no,
    cast(null as varchar) as transaction_id,
    cast(null as bigint) as bill_fen,
    cast(null as bigint) as local_fen,
    cast(null as bigint) as notified_fen,
    cast(null as bigint) as diff_fen,
    cast(null as bigint) as bill_fee_millifen,
    cast(null as bigint) as expected_fee_millifen,
    copies,
    cast(null as date) as bill_date,
    cast(null as varchar) as bill_archive_sha1,
    cast(null as bigint) as bill_line_no,
    notification_id,
    log_file as notification_log_file,
    line_no as notification_line_no,
    cast(null as varchar) as local_key,
    detail
from findings
