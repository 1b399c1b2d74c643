-- The operator console (connector.console) reads the journal through connector.journal.views; these indexes keep
-- each of its pages an index range scan on a journal of ten million events (bench/console.py measures them).
--
-- Independent of every other migration after 0006: each index names only columns that 0001–0006 created, and
-- IF NOT EXISTS lets an operator build them beforehand with CREATE INDEX CONCURRENTLY (same names) on a large
-- journal, so this step then takes no lock at all. Its own "console_" names cannot collide with another
-- migration's, so it applies the same whether 0007 (summary vouchers) is applied before or after it.
--
-- Costs on the write path, kept to what the pages need: the event log (one row per consumed record) gets two
-- btree entries per row; vouchers get the document-number GIN entry at insert (fastupdate: appended to the pending
-- list) and, when the poster settles them, the posted / problem / Kingdee-number entries.

-- Sync status: the source systems of a consumer group (a loose index scan), each one's last event, and its events
-- since midnight by outcome (index-only: the event log is insert-only, so the visibility map stays set).
CREATE INDEX IF NOT EXISTS console_event_log_source_time
    ON {schema}.event_log (consumer_group, source_system, journaled_at) INCLUDE (outcome);

-- Trace by source primary key (with or without system and table): every change event of a row.
CREATE INDEX IF NOT EXISTS console_event_log_row
    ON {schema}.event_log (source_pk, source_system, source_table);

-- Trace by the Kingdee voucher number (FBillNo) the poster recorded.
CREATE INDEX IF NOT EXISTS console_vouchers_kingdee_number
    ON {schema}.vouchers (kingdee_number) WHERE kingdee_number IS NOT NULL;

-- Trace by document number (order, invoice, statement reference …): the words of the voucher's explanation, which
-- the rules write from the document ("POS SO20261105000042 销售收入"). 'simple': no stemming, no stop words, so
-- a document number is one exact token whatever the language around it.
CREATE INDEX IF NOT EXISTS console_vouchers_document
    ON {schema}.vouchers USING gin (to_tsvector('simple', explanation));

-- Sync status per source system and book: vouchers waiting (count and the oldest), settled problems, and the
-- (system, book) pairs that posted, with what they posted since midnight.
CREATE INDEX IF NOT EXISTS console_vouchers_unsettled
    ON {schema}.vouchers (source_system, book, journaled_at) WHERE status IN ('JOURNALED', 'POSTING');
CREATE INDEX IF NOT EXISTS console_vouchers_problems
    ON {schema}.vouchers (status, source_system, book) WHERE status IN ('REJECTED_BY_KINGDEE', 'NEEDS_ATTENTION');
CREATE INDEX IF NOT EXISTS console_vouchers_posted
    ON {schema}.vouchers (source_system, book, updated_at) WHERE status = 'POSTED';

-- Triage: rejections and dead letters over a time window, by source and reason (index-only scans).
CREATE INDEX IF NOT EXISTS console_rejections_time
    ON {schema}.rejections (created_at) INCLUDE (consumer_group, source_system, code);
CREATE INDEX IF NOT EXISTS console_dead_letters_time
    ON {schema}.dead_letters (created_at) INCLUDE (consumer_group, stage, topic, status);
CREATE INDEX IF NOT EXISTS console_dead_letters_undecodable
    ON {schema}.dead_letters (created_at) INCLUDE (consumer_group, stage, topic) WHERE stage <> 'TASK_PUT';

-- Reconciliation: the latest run per book and period.
CREATE INDEX IF NOT EXISTS console_reconciliations_period
    ON {schema}.reconciliations (book, period, run_at DESC);
