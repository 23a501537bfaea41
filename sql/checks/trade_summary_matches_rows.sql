-- Every trade bill load whose summary line disagrees with COUNT/SUM of its detail rows.
-- A total the bill did not print (NULL, e.g. the 4-column SUCCESS summary) is not compared.
-- Generated from wxpay.billformat.SUMMARY_COLUMNS by flows.bills.summaries (the rule a load checks):
-- change the catalog, then run `python -m flows.bills`.
with

summaries as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        row_count,
        settlement_amount_fen,
        refund_amount_fen,
        recharge_coupon_refund_fen,
        fee_millifen,
        order_amount_fen,
        requested_refund_fen,
        legacy_total_amount_fen,
        legacy_red_packet_refund_fen
    from raw.trade_bill_summaries
),

detail_totals as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        count(*) as row_count,
        coalesce(sum(settlement_amount_fen), 0) as settlement_amount_fen,
        coalesce(sum(refund_amount_fen), 0) as refund_amount_fen,
        coalesce(sum(recharge_coupon_refund_fen), 0) as recharge_coupon_refund_fen,
        coalesce(sum(fee_millifen), 0) as fee_millifen,
        coalesce(sum(order_amount_fen), 0) as order_amount_fen,
        coalesce(sum(requested_refund_fen), 0) as requested_refund_fen,
        coalesce(sum(legacy_total_amount_fen), 0) as legacy_total_amount_fen,
        coalesce(sum(legacy_red_packet_refund_fen), 0) as legacy_red_packet_refund_fen
    from raw.trade_bill_rows
    group by bill_mchid, bill_type, bill_date
),

compared as (
    select
        summaries.bill_mchid,
        summaries.bill_type,
        summaries.bill_date,
        summaries.row_count as summary_row_count,
        coalesce(detail_totals.row_count, 0) as detail_row_count,
        summaries.settlement_amount_fen as summary_settlement_amount_fen,
        coalesce(detail_totals.settlement_amount_fen, 0) as detail_settlement_amount_fen,
        summaries.refund_amount_fen as summary_refund_amount_fen,
        coalesce(detail_totals.refund_amount_fen, 0) as detail_refund_amount_fen,
        summaries.recharge_coupon_refund_fen as summary_recharge_coupon_refund_fen,
        coalesce(detail_totals.recharge_coupon_refund_fen, 0) as detail_recharge_coupon_refund_fen,
        summaries.fee_millifen as summary_fee_millifen,
        coalesce(detail_totals.fee_millifen, 0) as detail_fee_millifen,
        summaries.order_amount_fen as summary_order_amount_fen,
        coalesce(detail_totals.order_amount_fen, 0) as detail_order_amount_fen,
        summaries.requested_refund_fen as summary_requested_refund_fen,
        coalesce(detail_totals.requested_refund_fen, 0) as detail_requested_refund_fen,
        summaries.legacy_total_amount_fen as summary_legacy_total_amount_fen,
        coalesce(detail_totals.legacy_total_amount_fen, 0) as detail_legacy_total_amount_fen,
        summaries.legacy_red_packet_refund_fen as summary_legacy_red_packet_refund_fen,
        coalesce(detail_totals.legacy_red_packet_refund_fen, 0) as detail_legacy_red_packet_refund_fen
    from summaries
    left join detail_totals
        on summaries.bill_mchid = detail_totals.bill_mchid
        and summaries.bill_type = detail_totals.bill_type
        and summaries.bill_date = detail_totals.bill_date
)

select
    bill_mchid,
    bill_type,
    bill_date,
    summary_row_count,
    detail_row_count,
    summary_settlement_amount_fen,
    detail_settlement_amount_fen,
    summary_refund_amount_fen,
    detail_refund_amount_fen,
    summary_recharge_coupon_refund_fen,
    detail_recharge_coupon_refund_fen,
    summary_fee_millifen,
    detail_fee_millifen,
    summary_order_amount_fen,
    detail_order_amount_fen,
    summary_requested_refund_fen,
    detail_requested_refund_fen,
    summary_legacy_total_amount_fen,
    detail_legacy_total_amount_fen,
    summary_legacy_red_packet_refund_fen,
    detail_legacy_red_packet_refund_fen
from compared
where summary_row_count <> detail_row_count
    or summary_settlement_amount_fen <> detail_settlement_amount_fen
    or summary_refund_amount_fen <> detail_refund_amount_fen
    or summary_recharge_coupon_refund_fen <> detail_recharge_coupon_refund_fen
    or summary_fee_millifen <> detail_fee_millifen
    or summary_order_amount_fen <> detail_order_amount_fen
    or summary_requested_refund_fen <> detail_requested_refund_fen
    or summary_legacy_total_amount_fen <> detail_legacy_total_amount_fen
    or summary_legacy_red_packet_refund_fen <> detail_legacy_red_packet_refund_fen
