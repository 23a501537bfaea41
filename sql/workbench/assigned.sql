-- Assign: the selected exceptions go to $assignee (work state assigned); their data is untouched.
update recon.exceptions
set assignee = $assignee
where list_contains($ids, exception_id)
