-- Covariate balance of the AI comparison before and after weighting (cohort/fracture.py: balance_table).
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.balance (
    data_cutoff DATE, comparison VARCHAR, covariate VARCHAR, covariate_label VARCHAR,
    mean_treated_before DOUBLE, mean_control_before DOUBLE, smd_before DOUBLE,
    mean_treated_after DOUBLE, mean_control_after DOUBLE, smd_after DOUBLE,
    imbalanced_before BOOLEAN, imbalanced_after BOOLEAN
);
COMMENT ON TABLE results.balance IS 'Baseline covariate balance between AI initiators (treated) and non-initiators (control): means and standardized mean differences (SMD) unweighted (before) and with the stabilized IPTW (after). |SMD| > 0.1 (configurable) is flagged; any flagged covariate after weighting fails the diagnostics gate of the iptw_itt model.';
COMMENT ON COLUMN results.balance.comparison IS 'ai_ever: AI started during follow-up vs not.';
COMMENT ON COLUMN results.balance.covariate IS 'Design column: a covariate, <covariate>_missing (missing indicator; the covariate itself is median-imputed), or <variable>=<level> for each level of a categorical variable.';
COMMENT ON COLUMN results.balance.mean_treated_before IS 'Mean (share for 0/1 columns) among AI initiators, unweighted.';
COMMENT ON COLUMN results.balance.smd_before IS '(mean treated - mean control) / sqrt((var treated + var control) / 2), unweighted.';
COMMENT ON COLUMN results.balance.smd_after IS 'Weighted difference of means over the same (unweighted) pooled SD as smd_before, so the change reflects the means only.';
COMMENT ON COLUMN results.balance.imbalanced_before IS '|smd_before| above the threshold (default 0.1).';
COMMENT ON COLUMN results.balance.imbalanced_after IS '|smd_after| above the threshold (default 0.1): the weighted comparison is not balanced on this covariate.';
