-- The exception state machine, step 4: those exceptions become resolved, by this run. The resolution says
-- how: 'matched' when this run found the item agreeing (its sub order, refund or combine order is matched
-- now), 'cleared' when it is simply no longer reported. Its age ends at this run's as_of_date (mart).
update recon.exceptions as e
set
    state = 'resolved',
    resolved_run = $run_id,
    resolved_at = $now,
    resolution = case
        when e.item_kind = 'payment' and exists (
            select 1 from intermediate.int_sub_orders as s
            where s.mchid = e.mchid and s.out_trade_no = e.item_key and s.class = 'matched'
        ) then 'matched'
        when e.item_kind = 'refund' and exists (
            select 1 from intermediate.int_refund_items as r
            where r.mchid = e.mchid and r.item_key = e.item_key and r.class = 'matched'
        ) then 'matched'
        when e.item_kind = 'notification' and exists (
            select 1 from intermediate.int_notification_checks as n
            where n.combine_key = e.item_key and n.missing_subs = 0 and n.differing_subs = 0
        ) then 'matched'
        else 'cleared'
    end
where
    e.state in ('open', 'pending')
    and list_contains($merchants, e.mchid)
    and e.recon_date between $window_start and $as_of
    and e.exception_id not in (select exception_id from current_exceptions)
