-- Every sub order a bill shows paid or the merchant's records hold, one narrow row each: the payment class
-- and the facts the combine and notification checks need. Bill payments are matched to the merchant's sub
-- orders on (mchid, out_trade_no), confirmed by transaction_id when the local record has one, and to the
-- notifications we verified ourselves. Evidence is looked up later, for exceptions only.
-- Payment classes: duplicate_in_bill, missing_locally, status_mismatch, amount_mismatch,
-- transaction_mismatch, matched, pending (locally paid, no bill has it yet, inside the pending window),
-- missing_in_bill; NULL for an unpaid local sub order that no bill shows (not an item).
with

params as (
    select
        as_of_date,
        window_start,
        pending_days,
        tolerance_fen
    from recon.params
),

merchants as (
    select mchid from recon.run_merchants
),

bill_rows as (
    select
        coalesce(payments.mchid, payments.bill_mchid) as mchid,
        payments.out_trade_no,
        payments.bill_date,
        payments.line_no,
        payments.order_amount_fen,
        payments.transaction_id,
        payments.trade_state,
        payments.combine_out_trade_no
    from staging.stg_trade_payments as payments
    inner join merchants
        on payments.bill_mchid = merchants.mchid
    cross join params
    where payments.bill_date between params.window_start - 3 and params.as_of_date + params.pending_days
),

repeated_keys as (
    -- the rare sub orders a bill lists more than once
    select mchid, out_trade_no, count(*) as copies
    from bill_rows
    group by mchid, out_trade_no
    having count(*) > 1
),

bills as (
    -- one row per sub order: its bill row, or the first line of one the bill repeats
    select bill_rows.*, 1 as copies
    from bill_rows
    left join repeated_keys
        on bill_rows.mchid = repeated_keys.mchid
        and bill_rows.out_trade_no = repeated_keys.out_trade_no
    where repeated_keys.mchid is null
    union all
    select bill_rows.*, repeated_keys.copies
    from bill_rows
    inner join repeated_keys
        on bill_rows.mchid = repeated_keys.mchid
        and bill_rows.out_trade_no = repeated_keys.out_trade_no
    qualify row_number() over (
        partition by bill_rows.mchid, bill_rows.out_trade_no order by bill_rows.bill_date, bill_rows.line_no
    ) = 1
),

local_orders as (
    select
        local.mchid,
        local.out_trade_no,
        local.combine_out_trade_no,
        local.amount_fen,
        local.status,
        local.is_paid,
        coalesce(local.paid_date, local.created_date) as paid_date,
        local.transaction_id
    from staging.stg_local_orders as local
    inner join merchants
        on local.mchid = merchants.mchid
),

notified as (
    -- the sub orders of notifications we verified; retries and duplicates of one notification collapse
    select
        sub_orders.mchid,
        sub_orders.out_trade_no,
        min(sub_orders.total_amount_fen) as notified_fen,
        min(sub_orders.total_amount_fen) <> max(sub_orders.total_amount_fen) as notified_amounts_differ,
        min(hash(checks.notification_id)) <> max(hash(checks.notification_id)) as several_notifications,
        min(checks.combine_mchid) as combine_mchid
    from raw.notification_sub_orders as sub_orders
    inner join raw.notification_checks as checks
        on sub_orders.line_sha256 = checks.line_sha256
    where checks.verified
    group by sub_orders.mchid, sub_orders.out_trade_no
),

coverage as (
    select
        mchid,
        max(covered_through) as covered_through
    from staging.stg_bill_coverage
    where bill_type in ('trade_all', 'trade_success')
    group by mchid
),

joined as (
    select
        coalesce(bills.mchid, local_orders.mchid) as mchid,
        coalesce(bills.out_trade_no, local_orders.out_trade_no) as out_trade_no,
        coalesce(local_orders.combine_out_trade_no, bills.combine_out_trade_no) as combine_out_trade_no,
        bills.mchid is not null as in_bill,
        local_orders.mchid is not null as in_local,
        coalesce(local_orders.is_paid, false) as local_paid,
        local_orders.status as local_status,
        local_orders.paid_date as local_paid_date,
        bills.copies,
        bills.bill_date,
        bills.line_no as bill_line_no,
        bills.order_amount_fen as bill_fen,
        bills.trade_state as bill_trade_state,
        local_orders.amount_fen as local_fen,
        local_orders.transaction_id is not null and local_orders.transaction_id <> bills.transaction_id
            as transaction_differs,
        notified.notified_fen,
        notified.notified_amounts_differ,
        notified.several_notifications,
        notified.combine_mchid as notified_combine_mchid,
        coverage.covered_through
    from bills
    full outer join local_orders
        on bills.mchid = local_orders.mchid
        and bills.out_trade_no = local_orders.out_trade_no
    left join coverage
        on coalesce(bills.mchid, local_orders.mchid) = coverage.mchid
    left join notified
        on coalesce(bills.mchid, local_orders.mchid) = notified.mchid
        and coalesce(bills.out_trade_no, local_orders.out_trade_no) = notified.out_trade_no
)

select
    joined.mchid,
    joined.out_trade_no,
    joined.combine_out_trade_no,
    case
        when in_bill and copies > 1 then 'duplicate_in_bill'
        when in_bill and not in_local then 'missing_locally'
        when in_bill and not local_paid then 'status_mismatch'
        when in_bill and bill_trade_state <> 'SUCCESS' then 'status_mismatch'
        when in_bill and abs(bill_fen - local_fen) > params.tolerance_fen then 'amount_mismatch'
        when in_bill and transaction_differs then 'transaction_mismatch'
        when in_bill then 'matched'
        when local_paid and coalesce(covered_through, date '1970-01-01') >= local_paid_date + params.pending_days
            then 'missing_in_bill'
        when local_paid then 'pending'
    end as class,
    coalesce(bill_date, local_paid_date) as recon_date,
    in_bill,
    in_local,
    local_paid,
    local_status,
    bill_trade_state,
    copies,
    bill_date,
    bill_line_no,
    bill_fen,
    local_fen,
    notified_fen,
    notified_amounts_differ,
    several_notifications,
    notified_combine_mchid,
    covered_through
from joined
cross join params
