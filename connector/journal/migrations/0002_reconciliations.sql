-- Results of `kingdee-cdc reconcile`, so the service can export the latest outcome per book as a metric
-- and operators can see the history. Append-only like the audit log.
CREATE TABLE {schema}.reconciliations (
    id              bigserial PRIMARY KEY,
    run_at          timestamptz NOT NULL DEFAULT now(),
    book            text NOT NULL,
    period          text NOT NULL,
    by_dimension    boolean NOT NULL,
    with_source     boolean NOT NULL,
    lines           integer NOT NULL,
    flagged         integer NOT NULL,
    abs_difference  numeric(28, 2) NOT NULL,
    report          jsonb NOT NULL
);
CREATE INDEX reconciliations_book ON {schema}.reconciliations (book, run_at DESC);
CREATE TRIGGER reconciliations_append_only BEFORE UPDATE OR DELETE ON {schema}.reconciliations
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_audit_change();
