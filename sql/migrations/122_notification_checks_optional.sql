-- Whether a run expects a notification for every paid combine order: only when some merchant receives
-- WeChat Pay's callbacks (a receiver logs them). Without one, "notification_missing" would be every order.
alter table recon.params add column check_notifications boolean default true;
alter table recon.runs add column check_notifications boolean;
