-- Money correctness (vouchers belong to a source row and its accounting content; cutover; period policy).
--
-- OPENING: the state of a row at its source's cutover, recorded so later changes reverse it correctly;
-- in force, never posted (the ledger already holds it). A reversal of it is posted like any other.
ALTER TABLE {schema}.vouchers DROP CONSTRAINT IF EXISTS vouchers_status_check;
ALTER TABLE {schema}.vouchers ADD CONSTRAINT vouchers_status_check
    CHECK (status IN ('JOURNALED', 'POSTING', 'POSTED', 'REJECTED_BY_KINGDEE', 'REVERSED', 'NEEDS_ATTENTION',
                      'OPENING'));
-- Journal order of vouchers: a row's newest voucher (in force or reversed) is the predecessor of its next
-- one (the key chain that keeps A → B → A three distinct vouchers). Existing rows get numbers in table order.
ALTER TABLE {schema}.vouchers ADD COLUMN seq bigserial;
-- The date the rule gave when the book's period policy moved the voucher into an open period.
ALTER TABLE {schema}.vouchers ADD COLUMN original_date date;
-- The guard on posted vouchers also protects opening state from edits.
CREATE OR REPLACE FUNCTION {schema}.guard_posted_voucher() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'vouchers are never deleted (key %)', OLD.key USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status IN ('POSTED', 'REVERSED', 'OPENING') AND (NEW.payload IS DISTINCT FROM OLD.payload
            OR NEW.debit_total IS DISTINCT FROM OLD.debit_total OR NEW.book IS DISTINCT FROM OLD.book
            OR NEW.kingdee_id IS DISTINCT FROM OLD.kingdee_id
            OR NOT (NEW.status = OLD.status OR (OLD.status = 'POSTED' AND NEW.status = 'REVERSED'))) THEN
        RAISE EXCEPTION 'posted voucher % cannot be changed', OLD.key USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
