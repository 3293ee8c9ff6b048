-- Where cohort data-quality results are kept (idempotent; run before results are written).
-- Delivery results go to meta.dq_results (sql/warehouse/schema.sql). Cohort tables are validated
-- per quarter, not per delivery: their results go to meta.cohort_dq_results, keyed by data_cutoff,
-- and only the latest results of a quarter are kept (cohort.validation.persist_*_results).
CREATE TABLE IF NOT EXISTS meta.cohort_dq_results (
    run_id VARCHAR, data_cutoff DATE, table_name VARCHAR, suite VARCHAR, expectation_name VARCHAR,
    expectation VARCHAR, column_name VARCHAR, category VARCHAR, severity VARCHAR, threshold DOUBLE,
    dqd_check VARCHAR, passed BOOLEAN, errored BOOLEAN, observed_value VARCHAR, unexpected_count BIGINT,
    unexpected_percent DOUBLE, element_count BIGINT, example_records VARCHAR, error VARCHAR,
    validated_at TIMESTAMPTZ
);
COMMENT ON TABLE meta.cohort_dq_results IS 'Great Expectations results of the cohort suites (cohort_<table>): one row per data cutoff (quarter), cohort table and expectation, from the latest validation of that quarter (validating it again replaces its rows; run_id names the run).';
COMMENT ON COLUMN meta.cohort_dq_results.example_records IS 'A few row keys of failing rows, never values: step_order, or member_key / episode_key (source_site:patient_key[:episode_no], pseudonymous).';
