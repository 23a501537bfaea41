-- Payer identifiers stay out of the warehouse: the bill's 用户标识 (openid) column is not stored.
-- The evidence is the raw bill archive, which keeps every bill exactly as downloaded (file mode 0600, directories
-- 0700); flows.finance.evidence shows an archived line with payer identifiers masked. Loads skip the column
-- (flows/bills/lineage.py: NOT_STORED); no model reads it.
alter table raw.trade_bill_rows drop column openid;
