-- Model-predicted BMD trajectories for the report's trajectory plot: the primary mixed model of
-- each skeletal site (cohort/bmd.py, BmdChangeModel.trajectory), filled by assets/models.py.
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.bmd_trajectory (
    data_cutoff DATE, skeletal_site VARCHAR, analysis VARCHAR, panel VARCHAR, exposure_group VARCHAR, group_label VARCHAR,
    year INTEGER, mean_pct_change DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
    pct_per_year DOUBLE, pct_per_year_ci_low DOUBLE, pct_per_year_ci_high DOUBLE,
    n_patients BIGINT, n_scans BIGINT, converged BOOLEAN
);
COMMENT ON TABLE results.bmd_trajectory IS 'Model-predicted mean change in standardized BMD from baseline (%, 95% CI) at whole years since the baseline scan, per skeletal site and exposure group, from the fixed effects of the primary model in results.bmd_change. Every group is at the reference covariates (age 65, BMI 28, reference scanner and site of care) and exposed for the whole time shown; a group not naming an estradiol tier is at 20-<40 pg/mL. Extrapolation stops at the longest follow-up of the site (at most 10 years).';
COMMENT ON COLUMN results.bmd_trajectory.analysis IS 'primary (the model of results.bmd_change with analysis = primary).';
COMMENT ON COLUMN results.bmd_trajectory.panel IS 'By AI exposure | By E2 tier: the row of the trajectory figure.';
COMMENT ON COLUMN results.bmd_trajectory.exposure_group IS 'no_ai (no AI, E2 20-<40) | ai (current AI, E2 20-<40) | ai_e2_lt10 (current AI with E2 in the lowest tier, the usual situation on TRT + AI) | e2_lt10 | e2_10_20 | e2_20_40 | e2_ge40 | e2_unknown (no AI, that tier).';
COMMENT ON COLUMN results.bmd_trajectory.group_label IS 'Group shown to readers, one color per label in every figure.';
COMMENT ON COLUMN results.bmd_trajectory.year IS 'Whole years since the baseline scan (0 = baseline).';
COMMENT ON COLUMN results.bmd_trajectory.mean_pct_change IS 'Predicted change from baseline, %: 100 x (exp(year x slope) - 1), slope = sum of the group''s fixed effects on time (geometric mean ratio to baseline).';
COMMENT ON COLUMN results.bmd_trajectory.ci_low IS 'Lower 95% limit of mean_pct_change (Wald on the log scale, from the fixed-effect covariance).';
COMMENT ON COLUMN results.bmd_trajectory.ci_high IS 'Upper 95% limit of mean_pct_change (Wald on the log scale, from the fixed-effect covariance).';
COMMENT ON COLUMN results.bmd_trajectory.pct_per_year IS 'The group''s annual rate of change, % per year (100 x slope on the log scale).';
COMMENT ON COLUMN results.bmd_trajectory.n_patients IS 'Patients in the model (unsuppressed: suppress before showing).';
COMMENT ON COLUMN results.bmd_trajectory.n_scans IS 'Scans in the model (unsuppressed).';
COMMENT ON COLUMN results.bmd_trajectory.converged IS 'The model converged (always true: non-convergence fails the asset).';
