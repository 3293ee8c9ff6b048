-- Proportional-hazards diagnostics of the Cox models in results.fracture_cox.
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.fracture_ph_tests (
    data_cutoff DATE, model VARCHAR, outcome VARCHAR, term VARCHAR, time_transform VARCHAR,
    test_statistic DOUBLE, p_value DOUBLE
);
COMMENT ON TABLE results.fracture_ph_tests IS 'Test of proportional hazards per model and term: the Grambsch-Therneau score test on scaled Schoenfeld residuals (one degree of freedom, model-based variance), against a transform of event time. A small p-value means the term''s hazard ratio drifts over follow-up, so the single hazard ratio in results.fracture_cox is an average.';
COMMENT ON COLUMN results.fracture_ph_tests.time_transform IS 'rank (ranked event times, lifelines'' default; the pipeline default) or km (1 - Kaplan-Meier, R cox.zph''s default), per FractureModelSettings.ph_time_transform; cohort.fracture.fit_cox can add identity and log.';
COMMENT ON COLUMN results.fracture_ph_tests.test_statistic IS 'Chi-square statistic, 1 degree of freedom.';
