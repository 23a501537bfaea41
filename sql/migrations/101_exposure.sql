-- The money at stake of an item, computed once by the reconciliation (sql/recon/items.sql) and carried by
-- its exception: what alerts, reports and notebooks sum and sort by. Items and exceptions written before
-- this migration have NULL until a run recomputes them.
alter table recon.items add column exposure_fen bigint;
alter table recon.exceptions add column exposure_fen bigint;
