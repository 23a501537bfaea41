-- Fund-flow bill rows with a signed amount (收入 +, 支出 -). account_type: BASIC | OPERATION | FEES.
with

flow_rows as (
    select
        bill_mchid,
        bill_type,
        bill_date,
        archive_sha1,
        line_no,
        booked_at,
        business_no,
        flow_no,
        business_name,
        business_type,
        direction,
        amount_fen,
        balance_fen,
        applicant,
        remark,
        voucher_no
    from raw.fund_flow_rows
),

signed as (
    select
        bill_mchid,
        bill_date,
        upper(replace(bill_type, 'fundflow_', '')) as account_type,
        booked_at,
        business_no,
        flow_no,
        business_name,
        business_type,
        direction,
        amount_fen,
        case direction when '支出' then -amount_fen else amount_fen end as signed_amount_fen,
        balance_fen,
        applicant,
        remark,
        voucher_no,
        archive_sha1,
        line_no
    from flow_rows
)

select
    bill_mchid,
    bill_date,
    account_type,
    booked_at,
    business_no,
    flow_no,
    business_name,
    business_type,
    direction,
    amount_fen,
    signed_amount_fen,
    balance_fen,
    applicant,
    remark,
    voucher_no,
    archive_sha1,
    line_no
from signed
