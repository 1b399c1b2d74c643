-- The poster's claim (connector.kingdee.poster, step 1) as index range scans that stop at the claim's limit.
--
-- Before: the claim read every JOURNALED/POSTING voucher (vouchers_pending, ordered by journaled_at) and sorted
-- them by seq to keep the first claim_limit, and its "no unsettled reversal of the same source change" test
-- probed, per candidate, the console's unsettled-vouchers index by source system alone (on a fresh journal the
-- planner has no statistics and takes it), filtering every unsettled voucher of that system: 0.7 ms per
-- candidate, 6 s of PostgreSQL CPU per 2,000 vouchers claimed out of a backlog of 10,000 (bench/poster.py).
--
-- Independent of 0007–0009: only columns of 0001–0006 (seq: 0005), IF [NOT] EXISTS throughout.

-- Fresh vouchers in journal order: the claim walks this index from the oldest and stops after claim_limit rows.
-- Replaces vouchers_pending at journal write (one entry per new voucher either way).
CREATE INDEX IF NOT EXISTS vouchers_claimable ON {schema}.vouchers (seq) WHERE status = 'JOURNALED';

-- Claimed vouchers (in flight, unknown outcomes waiting for their grace, claims of posters that died): the
-- look-up-first part of the claim reads only these, not the whole backlog.
CREATE INDEX IF NOT EXISTS vouchers_posting ON {schema}.vouchers (seq) WHERE status = 'POSTING';

-- "A correction's reversal goes first": one probe per candidate into the few reversals not settled yet.
CREATE INDEX IF NOT EXISTS vouchers_unsettled_reversals
    ON {schema}.vouchers (source_system, source_table, source_pk, source_position, source_op)
    WHERE kind = 'reversal' AND status IN ('JOURNALED', 'POSTING');

-- Its queries (backlog count and age: status IN ('JOURNALED', 'POSTING')) are served as well by
-- console_vouchers_unsettled (0008), which has the same condition.
DROP INDEX IF EXISTS {schema}.vouchers_pending;
