-- Every notification-log line with the result of our own re-verification. A line is trusted only when
-- we verified it ourselves, whatever the receiver answered at the time.
with

lines as (
    select
        log_file,
        line_no,
        line_sha256,
        mchid,
        outcome,
        received_at,
        claimed_notification_id
    from raw.notification_lines
),

checks as (
    select
        line_sha256,
        verified,
        failure,
        failure_detail,
        notification_id,
        combine_mchid,
        combine_out_trade_no
    from raw.notification_checks
)

select
    lines.log_file,
    lines.line_no,
    lines.line_sha256,
    -- a callback to a path no merchant is configured for is filed under _unrouted, whatever it claims (format 2
    -- writes mchid '_unrouted' in its record under _rejected/; format 1 used an _unrouted/ directory); an
    -- unreadable line of _rejected/ names no merchant either
    case
        when starts_with(lines.log_file, '_unrouted/') then '_unrouted'
        when lines.mchid is null and starts_with(lines.log_file, '_rejected/') then '_unrouted'
        else coalesce(lines.mchid, split_part(lines.log_file, '/', 1))
    end as mchid,
    lines.outcome,
    lines.received_at,
    -- an unreadable line has no received_at: it belongs to the day of its log file
    coalesce(
        cast(timezone('Asia/Shanghai', lines.received_at) as date),
        try_cast(regexp_extract(lines.log_file, '(\d{4}-\d{2}-\d{2})\.jsonl$', 1) as date)
    ) as received_date,
    coalesce(checks.verified, false) as verified,
    case
        when lines.line_sha256 is null then 'UnreadableLine'
        when checks.line_sha256 is null then 'NotChecked'
        else checks.failure
    end as failure,
    checks.failure_detail,
    coalesce(checks.notification_id, lines.claimed_notification_id) as notification_id,
    checks.combine_mchid,
    checks.combine_out_trade_no
from lines
left join checks
    on lines.line_sha256 = checks.line_sha256
