-- Reopen a manual resolution: back to the state its class says (pending for a pending item, else open), the
-- resolution cleared; the assignee (if any) keeps it. The audit keeps what the resolution was.
update recon.exceptions
set
    state = case when class = 'pending' then 'pending' else 'open' end,
    resolution = null,
    resolved_by = null,
    resolution_note = null,
    resolved_on = null,
    resolved_at = null,
    resolved_run = null
where list_contains($ids, exception_id)
