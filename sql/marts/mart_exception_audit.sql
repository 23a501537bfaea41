-- The audit trail of the workbench: every action on an exception, oldest first, never updated — assigned,
-- resolved (with the kind), reopened (by a person), reopened_by_data (a run that contradicted a manual
-- resolution), queried (补单: WeChat Pay's answer as evidence and the resolution it proposes). Each row
-- carries the exception's class and amounts at the time of the action. acted_at is an instant (shown in
-- Beijing time); business_date is the Beijing day of the action.
with

actions as (
    select
        action_id,
        batch_id,
        exception_id,
        action,
        actor,
        acted_at,
        business_date,
        run_id,
        from_state,
        to_state,
        assignee,
        resolution,
        note,
        class,
        bill_fen,
        local_fen,
        notified_fen,
        diff_fen,
        exposure_fen,
        evidence
    from recon.exception_actions
),

exceptions as (
    select
        exception_id,
        item_kind,
        mchid,
        item_key,
        recon_date,
        combine_out_trade_no,
        out_trade_no
    from recon.exceptions
)

select
    actions.action_id,
    actions.batch_id,
    actions.exception_id,
    exceptions.item_kind,
    exceptions.mchid,
    exceptions.item_key,
    exceptions.recon_date,
    exceptions.combine_out_trade_no,
    exceptions.out_trade_no,
    actions.action,
    actions.actor,
    actions.acted_at,
    actions.business_date,
    actions.run_id,
    actions.from_state,
    actions.to_state,
    actions.assignee,
    actions.resolution,
    actions.note,
    actions.class,
    actions.bill_fen,
    actions.local_fen,
    actions.notified_fen,
    actions.diff_fen,
    actions.exposure_fen,
    actions.evidence
from actions
inner join exceptions
    on actions.exception_id = exceptions.exception_id
