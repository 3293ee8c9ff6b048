-- BMD change by AI exposure and estradiol tier: the estimands of the linear mixed models of
-- log sBMD per skeletal site (cohort/bmd.py, fitted by assets/models.py: bmd_change_models).
-- Diagnostics of each model are repeated on each of its rows.
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.bmd_change (
    data_cutoff DATE, skeletal_site VARCHAR, analysis VARCHAR, term VARCHAR,
    estimate_pct_per_year DOUBLE, std_error DOUBLE, ci_low DOUBLE, ci_high DOUBLE, p_value DOUBLE,
    n_patients BIGINT, n_scans BIGINT, converged BOOLEAN, note VARCHAR,
    reml_llf DOUBLE, sd_intercept_log DOUBLE, sd_slope_pct_per_year DOUBLE, corr_intercept_slope DOUBLE,
    residual_sd_log DOUBLE, on_boundary BOOLEAN, n_iterations INTEGER, grad_norm DOUBLE,
    n_patients_excluded BIGINT, n_scans_excluded BIGINT, terms_dropped VARCHAR, fit_seconds DOUBLE
);
COMMENT ON TABLE results.bmd_change IS 'Difference in the annual rate of change of standardized BMD (% per year, 95% CI) while exposed, one row per data cutoff, skeletal site, analysis and term. Model per skeletal site (analysis.bmd_long, REML): log sBMD ~ years since baseline + years on AI + years in each estradiol tier other than 20-<40 pg/mL (and unknown) + baseline age and BMI and their interactions with time + scanner manufacturer + site of care, with a correlated random intercept and slope on time per patient. Fitted by cohort.mixed_model.RandomSlopeMixedModel (exact REML; agrees with statsmodels MixedLM to 1e-6). A model that does not converge fails the asset: no row is ever written from a non-converged fit.';
COMMENT ON COLUMN results.bmd_change.skeletal_site IS 'lumbar_spine | femoral_neck | total_hip (one model per site).';
COMMENT ON COLUMN results.bmd_change.analysis IS 'primary (estradiol tiers from all assays) | lcms_only (sensitivity: tiers from LC-MS/MS results only, years_e2_lcms_*) | crude (time and years on AI only, no covariates: shows the confounding the adjusted model removes).';
COMMENT ON COLUMN results.bmd_change.term IS 'ai_current: years on a current AI (current AI vs none, at the same estradiol tier); e2_lt10 | e2_10_20 | e2_ge40 | e2_unknown: years in that estradiol tier (vs 20-<40 pg/mL). Crude rows: ai_current only.';
COMMENT ON COLUMN results.bmd_change.estimate_pct_per_year IS '100 x the log-sBMD coefficient: difference in annual change of sBMD, % per year (negative = faster loss). Null when the term is not estimable (see note).';
COMMENT ON COLUMN results.bmd_change.std_error IS 'Standard error of estimate_pct_per_year (inverse observed information of fixed effects and variance parameters, as statsmodels MixedLM).';
COMMENT ON COLUMN results.bmd_change.ci_low IS 'Lower 95% limit, % per year (Wald, normal reference).';
COMMENT ON COLUMN results.bmd_change.ci_high IS 'Upper 95% limit, % per year (Wald, normal reference).';
COMMENT ON COLUMN results.bmd_change.p_value IS 'Two-sided Wald test of no difference (normal reference).';
COMMENT ON COLUMN results.bmd_change.n_patients IS 'Patients in the model (unsuppressed: suppress before showing).';
COMMENT ON COLUMN results.bmd_change.n_scans IS 'Scans (rows of analysis.bmd_long) in the model, baseline scans included (unsuppressed).';
COMMENT ON COLUMN results.bmd_change.converged IS 'REML converged (gradient below tolerance at a positive-definite Hessian). Always true: a non-converged model fails the asset instead of writing rows.';
COMMENT ON COLUMN results.bmd_change.note IS 'Why a term is not estimable (e.g. no follow-up time in that tier), or a boundary (singular random-effects covariance) warning.';
COMMENT ON COLUMN results.bmd_change.reml_llf IS 'REML log-likelihood of the model (statsmodels scale).';
COMMENT ON COLUMN results.bmd_change.sd_intercept_log IS 'SD of the random intercept (log sBMD): between-patient spread of baseline BMD.';
COMMENT ON COLUMN results.bmd_change.sd_slope_pct_per_year IS 'SD of the random slope, % per year: between-patient spread of the annual rate of change.';
COMMENT ON COLUMN results.bmd_change.corr_intercept_slope IS 'Correlation of random intercept and slope (null when a variance is 0).';
COMMENT ON COLUMN results.bmd_change.residual_sd_log IS 'Residual SD (log sBMD, about the scan-to-scan coefficient of variation).';
COMMENT ON COLUMN results.bmd_change.on_boundary IS 'The random-effects covariance is singular (boundary fit, as lme4 "singular fit"): fixed effects keep their meaning, variance components are at a limit.';
COMMENT ON COLUMN results.bmd_change.n_iterations IS 'Optimizer iterations (Newton; plus L-BFGS-B if Newton needed the fallback).';
COMMENT ON COLUMN results.bmd_change.grad_norm IS 'max |d REML log-likelihood / d theta| at the solution (convergence requires <= 1e-6).';
COMMENT ON COLUMN results.bmd_change.n_patients_excluded IS 'Patients left out because none of their scans had all covariates (complete-case analysis: BMI, manufacturer).';
COMMENT ON COLUMN results.bmd_change.n_scans_excluded IS 'Scans left out for a missing outcome or covariate.';
COMMENT ON COLUMN results.bmd_change.terms_dropped IS 'Terms left out of the model and why (constant, e.g. a single site of care; no exposed time; collinear).';
COMMENT ON COLUMN results.bmd_change.fit_seconds IS 'Wall-clock seconds of the REML fit.';
