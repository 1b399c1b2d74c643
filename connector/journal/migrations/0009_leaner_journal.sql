-- A leaner journal write (issue #15; decisions 0010, 0012): each fact stored once, fewer rows per event.
--
-- Applies to a journal of any earlier version in place, with its data; a journal that has 0010 already
-- (applied from a later checkout) takes it the same way: nothing here touches what 0010 creates or drops.

-- 1. A voucher's entries are stored once: in its payload, the JSON the pipeline has always written with them
--    and that the row state, the poster and the summaries read. `entries` becomes a view over the payloads
--    with the table's columns and types, so every reader (reconciliation, summaries, the console, an
--    operator's SQL) reads the lines as before. The table of a journal migrated in place is kept, renamed,
--    after checking that it holds exactly what the payloads hold: nothing written before is lost or altered.
--    (Once satisfied, an operator may drop kdcdc.entries_before_0009; nothing reads it.)
ALTER TABLE {schema}.entries RENAME TO entries_before_0009;
ALTER INDEX {schema}.entries_pkey RENAME TO entries_before_0009_pkey;

-- The payload's entry layout (connector.ledger PAYLOAD_ENTRY_FIELDS): [account, side, amount, explanation,
-- currency, rate_type, rate, amount_for, quantity, price, unit, settle_type, settle_no, dimensions]. The casts
-- are the old table's column types (amounts to the cent as stored before); dimensions null in older payloads.
CREATE VIEW {schema}.entries AS
SELECT v.key AS voucher_key, e.seq::integer AS seq, e.line ->> 0 AS account, e.line ->> 1 AS side,
       (e.line ->> 2)::numeric(28, 2) AS amount, e.line ->> 4 AS currency, (e.line ->> 6)::numeric(24, 10) AS rate,
       (e.line ->> 7)::numeric(30, 4) AS amount_for,
       coalesce(nullif(e.line -> 13, 'null'::jsonb), '{}'::jsonb) AS dimensions,
       coalesce(e.line ->> 3, '') AS explanation
FROM {schema}.vouchers v
CROSS JOIN LATERAL jsonb_array_elements(convert_from(v.payload, 'UTF8')::jsonb -> 'entries') WITH ORDINALITY AS e(line, seq);

DO $$
BEGIN
    IF EXISTS (SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, dimensions, explanation
               FROM {schema}.entries_before_0009
               EXCEPT SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, dimensions, explanation
               FROM {schema}.entries)
       OR EXISTS (SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, dimensions, explanation
                  FROM {schema}.entries
                  EXCEPT SELECT voucher_key, seq, account, side, amount, currency, rate, amount_for, dimensions,
                         explanation FROM {schema}.entries_before_0009) THEN
        RAISE EXCEPTION 'journal migration 0009: the entries table and the vouchers'' payloads differ; nothing was '
                        'changed (compare kdcdc.entries with the payloads before migrating)';
    END IF;
END $$;

-- Lines are written with their voucher and never changed, as before.
CREATE FUNCTION {schema}.refuse_entries_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'entries is append-only: lines are written with their voucher''s payload (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER entries_append_only INSTEAD OF INSERT OR UPDATE OR DELETE ON {schema}.entries
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_entries_write();

-- 2. Per-voucher audit facts live in the voucher row: rule and version, source change and Kafka record were
--    columns already; batch_id names the audit row (action BATCH_JOURNALED) of the batch that journaled it.
--    The audit table records batches and operator actions. NULL: journaled before 0009 (its own JOURNALED audit
--    row), or outside the stream (a summary voucher: SUMMARY_CLOSED; a re-mapping: JOURNALED by its operator).
ALTER TABLE {schema}.vouchers ADD COLUMN batch_id bigint;

-- What a voucher books and where it came from are its audit facts: as append-only as the audit table, in every
-- status (the guard of posted vouchers, 0001–0007, still protects the rest once posted). Checked in the trigger's
-- WHEN, so the poster's status updates pay no function call.
CREATE FUNCTION {schema}.refuse_voucher_fact_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'voucher %: what it books and where it came from (its audit facts) cannot be changed', OLD.key
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER vouchers_facts_guard BEFORE UPDATE ON {schema}.vouchers FOR EACH ROW
    WHEN ((OLD.key, OLD.kind, OLD.reverses, OLD.book, OLD.data_centre, OLD.voucher_date, OLD.voucher_group,
           OLD.explanation, OLD.debit_total, OLD.source_system, OLD.source_table, OLD.source_pk, OLD.source_position,
           OLD.source_op, OLD.source_ts_ms, OLD.topic, OLD.kafka_partition, OLD.kafka_offset, OLD.kafka_ts_ms,
           OLD.rule_id, OLD.rule_version, OLD.payload, OLD.journaled_at, OLD.seq, OLD.original_date, OLD.batch_id,
           OLD.adjusts_summary)
          IS DISTINCT FROM
          (NEW.key, NEW.kind, NEW.reverses, NEW.book, NEW.data_centre, NEW.voucher_date, NEW.voucher_group,
           NEW.explanation, NEW.debit_total, NEW.source_system, NEW.source_table, NEW.source_pk, NEW.source_position,
           NEW.source_op, NEW.source_ts_ms, NEW.topic, NEW.kafka_partition, NEW.kafka_offset, NEW.kafka_ts_ms,
           NEW.rule_id, NEW.rule_version, NEW.payload, NEW.journaled_at, NEW.seq, NEW.original_date, NEW.batch_id,
           NEW.adjusts_summary))
    EXECUTE FUNCTION {schema}.refuse_voucher_fact_change();

-- 3. The event log: a run of skipped records without a change event (tombstones, transaction markers) of one
--    partition in one batch is one row, the range kafka_offset..last_offset (decision 0012). Every record still
--    has exactly one outcome: the ranges and single rows of a partition never overlap (the offsets fence), and
--    event_records lists one row per record.
ALTER TABLE {schema}.event_log ADD COLUMN last_offset bigint;
ALTER TABLE {schema}.event_log ADD CONSTRAINT event_log_range_check
    CHECK (last_offset IS NULL OR (outcome = 'SKIPPED' AND last_offset > kafka_offset));

CREATE VIEW {schema}.event_records AS
SELECT l.consumer_group, l.topic, l.kafka_partition, o.kafka_offset, l.outcome, l.source_system, l.source_table,
       l.source_pk, l.source_position, l.op, l.voucher_keys, l.detail, l.kafka_ts_ms, l.journaled_at
FROM {schema}.event_log l
CROSS JOIN LATERAL generate_series(l.kafka_offset, coalesce(l.last_offset, l.kafka_offset)) AS o(kafka_offset);
