-- Whether a run expects a notification for every paid combine order: only when some merchant receives
-- WeChat Pay's callbacks (a receiver logs them). Without one, "notification_missing" would be every order.
-- Runs before this migration did expect them. (No column default: a DuckLake cannot add a column with one.)
alter table recon.params add column check_notifications boolean;
update recon.params set check_notifications = true;
alter table recon.runs add column check_notifications boolean;
update recon.runs set check_notifications = true;
