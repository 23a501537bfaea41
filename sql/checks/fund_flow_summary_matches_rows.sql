-- Every fund-flow bill load whose summary line disagrees with the counts/sums of its rows by 收支类型.
-- Generated from wxpay.billformat.SUMMARY_COLUMNS by flows.bills.summaries (the rule a load checks):
-- change the catalog, then run `python -m flows.bills`.
with

summaries as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        row_count,
        income_count,
        income_amount_fen,
        expense_count,
        expense_amount_fen
    from raw.fund_flow_summaries
),

detail_totals as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        count(*) as row_count,
        count(*) filter (where direction = '收入') as income_count,
        coalesce(sum(amount_fen) filter (where direction = '收入'), 0) as income_amount_fen,
        count(*) filter (where direction = '支出') as expense_count,
        coalesce(sum(amount_fen) filter (where direction = '支出'), 0) as expense_amount_fen
    from raw.fund_flow_rows
    group by bill_mchid, bill_type, bill_date
),

compared as (
    select
        summaries.bill_mchid,
        summaries.bill_type,
        summaries.bill_date,
        summaries.row_count as summary_row_count,
        coalesce(detail_totals.row_count, 0) as detail_row_count,
        summaries.income_count as summary_income_count,
        coalesce(detail_totals.income_count, 0) as detail_income_count,
        summaries.income_amount_fen as summary_income_amount_fen,
        coalesce(detail_totals.income_amount_fen, 0) as detail_income_amount_fen,
        summaries.expense_count as summary_expense_count,
        coalesce(detail_totals.expense_count, 0) as detail_expense_count,
        summaries.expense_amount_fen as summary_expense_amount_fen,
        coalesce(detail_totals.expense_amount_fen, 0) as detail_expense_amount_fen
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
    summary_income_count,
    detail_income_count,
    summary_income_amount_fen,
    detail_income_amount_fen,
    summary_expense_count,
    detail_expense_count,
    summary_expense_amount_fen,
    detail_expense_amount_fen
from compared
where summary_row_count <> detail_row_count
    or summary_income_count <> detail_income_count
    or summary_income_amount_fen <> detail_income_amount_fen
    or summary_expense_count <> detail_expense_count
    or summary_expense_amount_fen <> detail_expense_amount_fen
