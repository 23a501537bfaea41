-- The combine orders whose notification is missing or says another amount than the bill, with the
-- notification's evidence (id, log file and line) and what differs per sub order.
-- Classes: notification_missing, notification_amount_mismatch. Only when the run expects notifications (some
-- merchant receives them: recon.params.check_notifications).
with

params as (
    select
        as_of_date,
        window_start,
        check_notifications
    from recon.params
),

problems as (
    select
        checks.combine_key,
        checks.combine_out_trade_no,
        checks.recon_date,
        checks.mchid,
        checks.sub_orders,
        checks.missing_subs,
        checks.differing_subs,
        checks.reference_fen,
        checks.notified_fen
    from intermediate.int_notification_checks as checks
    cross join params
    where (checks.missing_subs > 0 or checks.differing_subs > 0)
        and checks.recon_date between params.window_start and params.as_of_date
        and params.check_notifications
),

problem_subs as (
    select
        problems.combine_key,
        subs.mchid,
        subs.out_trade_no,
        subs.bill_fen,
        subs.notified_fen,
        subs.notified_fen is null or subs.notified_fen <> subs.bill_fen or subs.notified_amounts_differ as differs
    from intermediate.int_sub_orders as subs
    inner join problems
        on coalesce(subs.combine_out_trade_no, 'sub:' || subs.mchid || '/' || subs.out_trade_no)
            = problems.combine_key
    where subs.in_bill
),

differences as (
    select
        combine_key,
        string_agg(out_trade_no || ' ' || coalesce(cast(notified_fen as varchar), 'none') || ' vs ' || bill_fen,
            ', ' order by out_trade_no) as differences
    from problem_subs
    where differs
    group by combine_key
),

first_notice as (
    -- the earliest verified delivery that reports one of the problem sub orders
    select
        problem_subs.combine_key,
        min({
            'received_at': lines.received_at,
            'notification_id': checks.notification_id,
            'log_file': lines.log_file,
            'line_no': lines.line_no
        }) as notice
    from problem_subs
    inner join raw.notification_sub_orders as sub_orders
        on problem_subs.mchid = sub_orders.mchid
        and problem_subs.out_trade_no = sub_orders.out_trade_no
    inner join raw.notification_checks as checks
        on sub_orders.line_sha256 = checks.line_sha256
    inner join raw.notification_lines as lines
        on sub_orders.line_sha256 = lines.line_sha256
    where checks.verified
    group by problem_subs.combine_key
)

select
    problems.recon_date,
    problems.mchid,
    'notification' as item_kind,
    problems.combine_key as item_key,
    case when problems.missing_subs > 0 then 'notification_missing' else 'notification_amount_mismatch' end
        as class,
    'open' as state,
    problems.combine_out_trade_no,
    cast(null as varchar) as out_trade_no,
    cast(null as varchar) as out_refund_no,
    cast(null as varchar) as transaction_id,
    problems.reference_fen as bill_fen,
    cast(null as bigint) as local_fen,
    problems.notified_fen,
    problems.notified_fen - problems.reference_fen as diff_fen,
    cast(null as bigint) as bill_fee_millifen,
    cast(null as bigint) as expected_fee_millifen,
    problems.sub_orders as copies,
    cast(null as date) as bill_date,
    cast(null as varchar) as bill_archive_sha1,
    cast(null as bigint) as bill_line_no,
    first_notice.notice.notification_id as notification_id,
    first_notice.notice.log_file as notification_log_file,
    first_notice.notice.line_no as notification_line_no,
    cast(null as varchar) as local_key,
    case
        when problems.missing_subs > 0 then problems.missing_subs || ' of ' || problems.sub_orders
            || ' sub orders have no verified notification: ' || differences.differences
        else 'notified vs bill: ' || differences.differences
    end as detail
from problems
left join differences
    on problems.combine_key = differences.combine_key
left join first_notice
    on problems.combine_key = first_notice.combine_key
