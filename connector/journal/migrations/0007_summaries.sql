-- Summary vouchers (汇总凭证, decision 0007): a rule with summarize: journals each event's voucher as a
-- contribution (status SUMMARIZED, never posted alone) attached to the open summary of its key; at close the
-- summary's contributions are added up into one summary voucher (kind 'summary') that the poster posts.
CREATE TABLE {schema}.summaries (
    id            bigserial PRIMARY KEY,
    group_id      text NOT NULL,                  -- rule + book + date + voucher group + data centre + key parts
    seq           integer NOT NULL,               -- close sequence within the group (late: next_summary, periodic)
    rule_id       text NOT NULL,
    book          text NOT NULL,
    voucher_date  date NOT NULL,
    voucher_group text NOT NULL,
    data_centre   text,
    key           jsonb NOT NULL,                 -- the key parts by name, e.g. {"store": "S001", "date": "2026-11-07"}
    close_policy  text NOT NULL,
    late_policy   text NOT NULL,
    tz            text NOT NULL,
    state         text NOT NULL DEFAULT 'OPEN' CHECK (state IN ('OPEN', 'CLOSED', 'NEEDS_ATTENTION')),
    close_due     timestamptz,                    -- NULL: on command
    contributions integer NOT NULL DEFAULT 0,     -- journal vouchers attached (reversals inside it included)
    source_rows   integer,                        -- at close: source rows the summary voucher carries
    voucher_key   text,                           -- at close: the summary voucher (NULL: it netted to nothing)
    problem       text,                           -- NEEDS_ATTENTION: why it could not be closed
    opened_at     timestamptz NOT NULL DEFAULT now(),
    last_at       timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    UNIQUE (group_id, seq)
);
-- At most one open summary per group: contributions go to it.
CREATE UNIQUE INDEX summaries_open ON {schema}.summaries (group_id) WHERE state = 'OPEN';
CREATE INDEX summaries_due ON {schema}.summaries (close_due) WHERE state = 'OPEN';
CREATE INDEX summaries_voucher ON {schema}.summaries (voucher_key) WHERE voucher_key IS NOT NULL;

ALTER TABLE {schema}.vouchers ADD COLUMN summary_id bigint REFERENCES {schema}.summaries (id);
-- A late change whose row sits in a closed summary: the summary it corrects (drill-down, reconciliation).
ALTER TABLE {schema}.vouchers ADD COLUMN adjusts_summary bigint REFERENCES {schema}.summaries (id);
CREATE INDEX vouchers_summary ON {schema}.vouchers (summary_id) WHERE summary_id IS NOT NULL;
CREATE INDEX vouchers_adjusts ON {schema}.vouchers (adjusts_summary) WHERE adjusts_summary IS NOT NULL;

ALTER TABLE {schema}.vouchers DROP CONSTRAINT IF EXISTS vouchers_kind_check;
ALTER TABLE {schema}.vouchers ADD CONSTRAINT vouchers_kind_check
    CHECK (kind IN ('original', 'reversal', 'delta', 'summary'));
ALTER TABLE {schema}.vouchers DROP CONSTRAINT IF EXISTS vouchers_status_check;
ALTER TABLE {schema}.vouchers ADD CONSTRAINT vouchers_status_check
    CHECK (status IN ('JOURNALED', 'POSTING', 'POSTED', 'REJECTED_BY_KINGDEE', 'REVERSED', 'NEEDS_ATTENTION',
                      'OPENING', 'SUMMARIZED'));

-- Contributions are as immutable as posted vouchers: what a summary added up stays what it was (a contribution
-- only learns its summary voucher's Kingdee number; a later reversal sets reversed_by, its status stays).
CREATE OR REPLACE FUNCTION {schema}.guard_posted_voucher() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'vouchers are never deleted (key %)', OLD.key USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status IN ('POSTED', 'REVERSED', 'OPENING', 'SUMMARIZED') AND (NEW.payload IS DISTINCT FROM OLD.payload
            OR NEW.debit_total IS DISTINCT FROM OLD.debit_total OR NEW.book IS DISTINCT FROM OLD.book
            OR NEW.kingdee_id IS DISTINCT FROM OLD.kingdee_id
            OR NEW.summary_id IS DISTINCT FROM OLD.summary_id
            OR NOT (NEW.status = OLD.status OR (OLD.status = 'POSTED' AND NEW.status = 'REVERSED'))) THEN
        RAISE EXCEPTION 'posted voucher % cannot be changed', OLD.key USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
