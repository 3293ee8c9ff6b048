-- One row per data cutoff and comparison: how well the propensity score model separates and how
-- comparable the groups are (cohort/fracture.py: PropensityScoreModel, DiagnosticsGate).
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.propensity_diagnostics (
    data_cutoff DATE, comparison VARCHAR, n_treated BIGINT, n_control BIGINT, fit_method VARCHAR,
    c_statistic DOUBLE, equipoise DOUBLE, truncation VARCHAR, truncation_low DOUBLE, truncation_high DOUBLE,
    weights_truncated BIGINT, max_weight DOUBLE, ess_treated DOUBLE, ess_control DOUBLE,
    max_abs_smd_before DOUBLE, max_abs_smd_after DOUBLE, balance_passed BOOLEAN, equipoise_passed BOOLEAN,
    smd_threshold DOUBLE, equipoise_threshold DOUBLE
);
COMMENT ON TABLE results.propensity_diagnostics IS 'Diagnostics of the propensity-score model for AI initiation: discrimination (c-statistic), equipoise (share of members with preference score 0.3-0.7), weight truncation and effective sample sizes, and the worst covariate imbalance before and after weighting, each with its pass/fail against the configured threshold (OHDSI CohortMethod defaults: SMD 0.1, equipoise 0.2).';
COMMENT ON COLUMN results.propensity_diagnostics.fit_method IS 'logit (maximum likelihood) or a ridge-penalized fallback when maximum likelihood does not converge (separation in small cohorts).';
COMMENT ON COLUMN results.propensity_diagnostics.c_statistic IS 'Area under the ROC curve of the propensity score for AI initiation (0.5 = no confounding by measured covariates; near 1 = little overlap).';
COMMENT ON COLUMN results.propensity_diagnostics.equipoise IS 'Share of members with preference score within the equipoise bounds (default 0.3-0.7).';
COMMENT ON COLUMN results.propensity_diagnostics.truncation IS 'How the weights were truncated, e.g. percentiles 1-99 of the weights (overall: of all members'' weights; group: within each treatment group).';
COMMENT ON COLUMN results.propensity_diagnostics.ess_treated IS 'Effective sample size of the weighted AI initiators, (sum w)^2 / sum w^2.';
COMMENT ON COLUMN results.propensity_diagnostics.balance_passed IS 'Every |SMD| after weighting at or below smd_threshold.';
COMMENT ON COLUMN results.propensity_diagnostics.equipoise_passed IS 'equipoise at or above equipoise_threshold.';
