-- kingdee-cdc journal, version 1. Applied in one transaction by connector.journal.migrate().
-- {schema} is replaced by the configured schema name (journal.schema, default kdcdc).

CREATE TABLE {schema}.vouchers (
    key             text PRIMARY KEY,             -- deterministic idempotency key (source identity + rule + role)
    kind            text NOT NULL CHECK (kind IN ('original', 'reversal', 'delta')),
    reverses        text,                         -- key of the voucher this one reverses / adjusts
    reversed_by     text,                         -- set when a later change reverses this voucher
    status          text NOT NULL DEFAULT 'JOURNALED'
                    CHECK (status IN ('JOURNALED', 'POSTING', 'POSTED', 'REJECTED_BY_KINGDEE', 'REVERSED',
                                      'NEEDS_ATTENTION')),  -- NEEDS_ATTENTION: several Kingdee vouchers carry the key
    book            text NOT NULL,
    data_centre     text,
    voucher_date    date NOT NULL,
    voucher_group   text NOT NULL,
    explanation     text NOT NULL,
    debit_total     numeric(28, 2) NOT NULL,
    review          boolean NOT NULL DEFAULT false,
    source_system   text NOT NULL,
    source_table    text NOT NULL,
    source_pk       text NOT NULL,
    source_position text NOT NULL,
    source_op       text NOT NULL,
    source_ts_ms    bigint,
    topic           text,                          -- Kafka coordinates of the event (informational: keys never use them)
    kafka_partition integer,
    kafka_offset    bigint,
    kafka_ts_ms     bigint,
    rule_id         text NOT NULL,
    rule_version    text NOT NULL,
    payload         bytea NOT NULL,                -- the voucher as the canonical Avro record (schemas/ledger.voucher.avsc)
    kingdee_id      text,                          -- FVOUCHERID once posted
    kingdee_number  text,                          -- FBillNo
    kingdee_group_no text,                         -- 凭证字号
    kingdee_messages text,
    attempts        integer NOT NULL DEFAULT 0,
    posting_since   timestamptz,
    journaled_at    timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vouchers_row ON {schema}.vouchers (source_system, source_table, source_pk, rule_id)
    WHERE kind <> 'reversal' AND reversed_by IS NULL;
-- A source change already journaled (replayed from any topic) is recognised before it is mapped again.
CREATE INDEX vouchers_source_change ON {schema}.vouchers (source_system, source_table, source_pk, source_position,
    source_op);
CREATE INDEX vouchers_pending ON {schema}.vouchers (journaled_at) WHERE status IN ('JOURNALED', 'POSTING');
CREATE INDEX vouchers_period ON {schema}.vouchers (book, voucher_date);

CREATE TABLE {schema}.entries (
    voucher_key  text NOT NULL REFERENCES {schema}.vouchers (key),
    seq          integer NOT NULL,
    account      text NOT NULL,
    side         text NOT NULL CHECK (side IN ('debit', 'credit')),
    amount       numeric(28, 2) NOT NULL,          -- local currency
    currency     text NOT NULL,
    rate         numeric(24, 10) NOT NULL,
    amount_for   numeric(30, 4) NOT NULL,          -- transaction currency
    dimensions   jsonb NOT NULL DEFAULT '{}',
    explanation  text NOT NULL DEFAULT '',
    PRIMARY KEY (voucher_key, seq)
);
CREATE INDEX entries_account ON {schema}.entries (account);

-- Next offset to consume per consumer group and partition: written in the same transaction as the
-- outcomes of the events before it (invariant 1). Kafka's own group offsets are advisory copies.
CREATE TABLE {schema}.offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset    bigint NOT NULL,
    owner          text,                            -- instance that last wrote it
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- One row per consumed record: its outcome. The primary key makes a second outcome impossible.
CREATE TABLE {schema}.event_log (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('VOUCHERED', 'REJECTED', 'DEAD_LETTERED', 'SKIPPED', 'DUPLICATE')),
    source_system   text,
    source_table    text,
    source_pk       text,
    source_position text,
    op              text,
    voucher_keys    text[] NOT NULL DEFAULT '{}',
    detail          text,
    kafka_ts_ms     bigint,
    journaled_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition, kafka_offset)
);

CREATE TABLE {schema}.rejections (
    id              bigserial PRIMARY KEY,
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    code            text NOT NULL,
    message         text NOT NULL,
    rule_id         text,
    field           text,
    value           text,
    source_system   text,
    source_table    text,
    source_pk       text,
    voucher_key     text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejections_event ON {schema}.rejections (topic, kafka_partition, kafka_offset);

CREATE TABLE {schema}.dead_letters (
    id              bigserial PRIMARY KEY,
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    stage           text NOT NULL,
    reason          text NOT NULL,
    error_class     text NOT NULL,
    raw_key         bytea,
    raw_value       bytea,
    headers         jsonb NOT NULL DEFAULT '[]',
    status          text NOT NULL DEFAULT 'NEW' CHECK (status IN ('NEW', 'REQUEUED', 'RESOLVED')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer_group, topic, kafka_partition, kafka_offset)
);

-- Feedback for the upstream systems, relayed to Kafka after commit (transactional outbox).
CREATE TABLE {schema}.outbox (
    id            bigserial PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,           -- stable id for consumers to de-duplicate
    source_system text NOT NULL,
    message_key   text NOT NULL,                  -- the source row's key: statuses of a document stay in order
    status        text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz
);
CREATE INDEX outbox_unsent ON {schema}.outbox (id) WHERE sent_at IS NULL;

-- Append-only audit trail: the database refuses UPDATE, DELETE and TRUNCATE.
CREATE TABLE {schema}.audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    voucher_key text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_voucher ON {schema}.audit (voucher_key);

CREATE FUNCTION {schema}.refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON {schema}.audit
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_audit_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON {schema}.audit
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_audit_change();

-- Posted vouchers are never edited: once POSTED, only the status may move to REVERSED.
CREATE FUNCTION {schema}.guard_posted_voucher() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'vouchers are never deleted (key %)', OLD.key USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status IN ('POSTED', 'REVERSED') AND (NEW.payload IS DISTINCT FROM OLD.payload
            OR NEW.debit_total IS DISTINCT FROM OLD.debit_total OR NEW.book IS DISTINCT FROM OLD.book
            OR NEW.kingdee_id IS DISTINCT FROM OLD.kingdee_id
            OR NOT (NEW.status = OLD.status OR (OLD.status = 'POSTED' AND NEW.status = 'REVERSED'))) THEN
        RAISE EXCEPTION 'posted voucher % cannot be changed', OLD.key USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER vouchers_guard BEFORE UPDATE OR DELETE ON {schema}.vouchers
    FOR EACH ROW EXECUTE FUNCTION {schema}.guard_posted_voucher();
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON {schema}.entries
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_audit_change();
