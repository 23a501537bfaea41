-- Every notification-log line: where it is, what the receiver answered, what our own re-verification
-- found, and (for verified lines) each sub order it reports, amounts in fen. No payer data.
with

lines as (
    select
        log_file,
        line_no,
        line_sha256,
        mchid,
        outcome,
        received_at,
        received_date,
        verified,
        failure,
        failure_detail,
        notification_id,
        combine_mchid,
        combine_out_trade_no
    from staging.stg_notification_lines
),

sub_orders as (
    select
        line_sha256,
        mchid,
        out_trade_no,
        transaction_id,
        trade_state,
        total_amount_fen,
        success_time
    from raw.notification_sub_orders
)

select
    lines.log_file,
    lines.line_no,
    lines.mchid as receiver_mchid,
    lines.outcome as receiver_outcome,
    lines.received_at,
    lines.received_date,
    lines.verified,
    lines.failure,
    lines.failure_detail,
    lines.notification_id,
    lines.combine_mchid,
    lines.combine_out_trade_no,
    sub_orders.mchid,
    sub_orders.out_trade_no,
    sub_orders.transaction_id,
    sub_orders.trade_state,
    sub_orders.total_amount_fen as notified_fen,
    sub_orders.success_time
from lines
left join sub_orders
    on lines.verified
    and lines.line_sha256 = sub_orders.line_sha256
