-- Source transactions (rules with lines:): a document line whose change is carried by its header's voucher
-- is journaled as GROUPED, with the header's voucher keys in voucher_keys.
ALTER TABLE {schema}.event_log DROP CONSTRAINT IF EXISTS event_log_outcome_check;
ALTER TABLE {schema}.event_log ADD CONSTRAINT event_log_outcome_check
    CHECK (outcome IN ('VOUCHERED', 'REJECTED', 'DEAD_LETTERED', 'SKIPPED', 'DUPLICATE', 'GROUPED'));
