-- Where data-quality results are kept (idempotent; run before results are written).
-- meta.dq_results is created by sql/warehouse/schema.sql; the ALTERs bring a warehouse created
-- before these columns existed up to date. Cohort tables are validated per quarter, not per
-- delivery: their results go to meta.cohort_dq_results, keyed by data_cutoff.
ALTER TABLE meta.dq_results ADD COLUMN IF NOT EXISTS suite VARCHAR;
ALTER TABLE meta.dq_results ADD COLUMN IF NOT EXISTS expectation_name VARCHAR;
ALTER TABLE meta.dq_results ADD COLUMN IF NOT EXISTS threshold DOUBLE;
ALTER TABLE meta.dq_results ADD COLUMN IF NOT EXISTS dqd_check VARCHAR;
ALTER TABLE meta.dq_results ADD COLUMN IF NOT EXISTS element_count BIGINT;
ALTER TABLE meta.dq_results ADD COLUMN IF NOT EXISTS data_cutoff DATE;

CREATE TABLE IF NOT EXISTS meta.cohort_dq_results (
    run_id VARCHAR, data_cutoff DATE, table_name VARCHAR, suite VARCHAR, expectation_name VARCHAR,
    expectation VARCHAR, column_name VARCHAR, category VARCHAR, severity VARCHAR, threshold DOUBLE,
    dqd_check VARCHAR, passed BOOLEAN, errored BOOLEAN, observed_value VARCHAR, unexpected_count BIGINT,
    unexpected_percent DOUBLE, element_count BIGINT, example_records VARCHAR, error VARCHAR,
    validated_at TIMESTAMPTZ
);
COMMENT ON TABLE meta.cohort_dq_results IS 'Great Expectations results for the cohort tables per data cutoff (quarter), table and expectation; the current set per quarter.';
COMMENT ON COLUMN meta.cohort_dq_results.example_records IS 'A few row keys of failing rows (source_site:patient_key pseudonyms, step_order), never values.';
COMMENT ON COLUMN meta.dq_results.suite IS 'Suite file expectations/<suite>.json: delivered_<table> (records as delivered) or staging_<table> (staged rows).';
COMMENT ON COLUMN meta.dq_results.expectation_name IS 'The expectation''s meta.name, stable across deliveries (trend a check over deliveries by suite + expectation_name).';
COMMENT ON COLUMN meta.dq_results.threshold IS 'Tolerated share of failing rows (GX mostly = 1 - threshold).';
COMMENT ON COLUMN meta.dq_results.dqd_check IS 'The OHDSI Data Quality Dashboard check(s) the expectation stands for.';
COMMENT ON COLUMN meta.dq_results.data_cutoff IS 'The delivery''s data cutoff (for trends over deliveries).';
