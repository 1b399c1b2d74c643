-- Fewer index insertions per journaled voucher (the journal write is the pipeline's dominant cost):
-- vouchers_source_change (system, table, pk, position, op) already serves lookups by source row, and no
-- query of the product filters entries by account alone (reconciliation joins entries by voucher key).
DROP INDEX IF EXISTS {schema}.vouchers_row;
DROP INDEX IF EXISTS {schema}.entries_account;
