-- The poster settles an unknown outcome (a BatchSave that timed out, lost its answer or got HTTP 5xx) only once
-- the first attempt can no longer commit in Kingdee, and it looks for vouchers Kingdee holds more than once.

-- When the latest BatchSave of the voucher had an unknown outcome. The voucher stays POSTING and is not claimed
-- again until kingdee.unknown_outcome_grace_s has passed; then it is looked up by key before anything is re-sent.
ALTER TABLE {schema}.vouchers ADD COLUMN unknown_since timestamptz;
-- Posted by a re-send after an unknown outcome (or a lease take-over): its key is looked up in Kingdee once more
-- after this time, and extra copies are handled like the duplicate scan's.
ALTER TABLE {schema}.vouchers ADD COLUMN recheck_after timestamptz;
-- The poster instance (host:pid) holding the claim of a POSTING voucher, for the lease take-over log.
ALTER TABLE {schema}.vouchers ADD COLUMN posting_owner text;
CREATE INDEX vouchers_recheck ON {schema}.vouchers (recheck_after) WHERE recheck_after IS NOT NULL;

-- Extra copies of a voucher key found in Kingdee (the copy the journal recorded is never listed here).
-- state: FOUND       about to be deleted (unaudited: document status A, D or Z; same lines as the kept copy)
--        DELETED     deleted by the poster (an audit row DUPLICATE_DELETED says when and what)
--        NEEDS_HUMAN audited or submitted (B, C), different lines, or no copy recorded by the journal: a person
--                    decides (UnAudit + Delete in Kingdee); the poster never touches it
--        RESOLVED    flagged earlier, no longer an extra copy (a person deleted it or the other copy); noticed
--                    by a later scan of its period
CREATE TABLE {schema}.duplicate_copies (
    voucher_key     text NOT NULL,
    kingdee_id      text NOT NULL,
    kingdee_number  text,
    document_status text,
    kept_id         text,
    book            text NOT NULL,
    period          text NOT NULL,
    state           text NOT NULL CHECK (state IN ('FOUND', 'DELETED', 'NEEDS_HUMAN', 'RESOLVED')),
    reason          text NOT NULL DEFAULT '',
    found_at        timestamptz NOT NULL DEFAULT now(),
    settled_at      timestamptz,
    PRIMARY KEY (voucher_key, kingdee_id)
);
CREATE INDEX duplicate_copies_open ON {schema}.duplicate_copies (book, period) WHERE state IN ('FOUND', 'NEEDS_HUMAN');

-- One row per duplicate scan (periodic from the poster loop, or `kingdee-cdc scan-duplicates`): posters side by
-- side scan in turn, and the periodic scan covers the periods posted since the previous one.
CREATE TABLE {schema}.duplicate_scans (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    periods       integer NOT NULL,
    vouchers_seen integer NOT NULL,
    duplicated    integer NOT NULL,
    deleted       integer NOT NULL,
    flagged       integer NOT NULL,
    error         text
);
CREATE INDEX duplicate_scans_recent ON {schema}.duplicate_scans (started_at DESC);
