-- Bill rows whose fee differs from round_half_up(amount x rate) to the fen (spec §6.3; the rule is
-- inferred, so fee_tolerance_fen allows a per-row tolerance). Payments: fee on 应结订单金额; refunds: the
-- returned fee on 退款金额, negative. Only mismatches are items.
with

params as (
    select
        as_of_date,
        window_start,
        fee_tolerance_fen
    from recon.params
),

merchants as (
    select mchid from recon.run_merchants
),

charged as (
    select
        bill_mchid,
        bill_date,
        'pay:' || out_trade_no as item_key,
        out_trade_no,
        cast(null as varchar) as out_refund_no,
        transaction_id,
        combine_out_trade_no,
        coalesce(settlement_amount_fen, order_amount_fen) as base_fen,
        fee_millifen,
        fee_rate_pct,
        archive_sha1,
        line_no
    from staging.stg_trade_payments
    union all
    select
        bill_mchid,
        bill_date,
        'ref:' || out_refund_no as item_key,
        out_trade_no,
        out_refund_no,
        transaction_id,
        combine_out_trade_no,
        -refund_amount_fen as base_fen,
        fee_millifen,
        fee_rate_pct,
        archive_sha1,
        line_no
    from staging.stg_trade_refunds
),

expected as (
    select
        charged.*,
        -- round half up (away from zero) in integers: fee_fen = base_fen x rate_pct / 100, rate_pct has 4 decimals
        sign(charged.base_fen) * ((abs(charged.base_fen) * cast(charged.fee_rate_pct * 10000 as bigint) + 500000)
            // 1000000) * 1000 as expected_fee_millifen
    from charged
    inner join merchants
        on charged.bill_mchid = merchants.mchid
    cross join params
    where charged.bill_date between params.window_start and params.as_of_date
        and charged.fee_rate_pct is not null
)

select
    expected.bill_date as recon_date,
    expected.bill_mchid as mchid,
    'fee' as item_kind,
    expected.item_key,
    'fee_mismatch' as class,
    'open' as state,
    expected.combine_out_trade_no,
    expected.out_trade_no,
    expected.out_refund_no,
    expected.transaction_id,
    expected.base_fen as bill_fen,
    cast(null as bigint) as local_fen,
    cast(null as bigint) as notified_fen,
    cast(null as bigint) as diff_fen,
    expected.fee_millifen as bill_fee_millifen,
    expected.expected_fee_millifen,
    1 as copies,
    expected.bill_date,
    expected.archive_sha1 as bill_archive_sha1,
    expected.line_no as bill_line_no,
    cast(null as varchar) as notification_id,
    cast(null as varchar) as notification_log_file,
    cast(null as bigint) as notification_line_no,
    cast(null as varchar) as local_key,
    'fee ' || expected.fee_millifen || ' milli-fen; ' || expected.base_fen || ' fen x ' || expected.fee_rate_pct
        || '% rounds to ' || expected.expected_fee_millifen || ' milli-fen' as detail
from expected
cross join params
where abs(expected.fee_millifen - expected.expected_fee_millifen) > params.fee_tolerance_fen * 1000
-- a row the bill lists twice is one fee item (duplicate_in_bill reports the doubling)
qualify row_number() over (
    partition by expected.bill_mchid, expected.item_key order by expected.bill_date, expected.line_no
) = 1
