-- Resolve by hand: state resolved with the kind, who, why and the Beijing business day. resolved_run stays NULL
-- (no run resolved it); resolved_at is the audit stamp. A later run that reports the item with another class or
-- other amounts reopens it (sql/recon/actions_reopened.sql).
update recon.exceptions
set
    state = 'resolved',
    resolution = $resolution,
    resolved_by = $actor,
    resolution_note = $note,
    resolved_on = $business_date,
    resolved_at = $acted_at,
    resolved_run = null
where list_contains($ids, exception_id)
