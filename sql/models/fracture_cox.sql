-- Hazard ratios for first fragility fracture (and, secondary, death) from the Cox models of
-- cohort/fracture.py, with the diagnostics gate applied to every row.
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.fracture_cox (
    data_cutoff DATE, model VARCHAR, outcome VARCHAR, adjustment VARCHAR, term VARCHAR, term_label VARCHAR,
    log_hr DOUBLE, se DOUBLE, se_type VARCHAR, hazard_ratio DOUBLE, ci_low DOUBLE, ci_high DOUBLE, p_value DOUBLE,
    ph_p_value DOUBLE, n_patients BIGINT, n_patients_excluded BIGINT, n_events BIGINT, n_events_exposed BIGINT,
    mdrr DOUBLE, equipoise DOUBLE, max_abs_smd DOUBLE, estimable BOOLEAN, diagnostics_passed BOOLEAN,
    diagnostics_notes VARCHAR
);
COMMENT ON TABLE results.fracture_cox IS 'Cox model hazard ratios, one row per data cutoff, model and term. Models: time_varying_adjusted (primary: current AI, current estradiol tier vs 20-<40 pg/mL, current glucocorticoid, age, BMI, baseline femoral-neck sBMD, on analysis.fracture_intervals); time_varying_adjusted_lcms (the same with LC-MS/MS-only estradiol tiers); iptw_itt (AI initiation, intention to treat from the first AI day, weighted by stabilized IPTW, robust SE); crude_itt (the same unweighted: shows the confounding the weights remove); death_cause_specific (secondary: the primary model''s terms for death before fracture, fracture censoring). A row with diagnostics_passed = false must be shown flagged.';
COMMENT ON COLUMN results.fracture_cox.model IS 'time_varying_adjusted | time_varying_adjusted_lcms | iptw_itt | crude_itt | death_cause_specific.';
COMMENT ON COLUMN results.fracture_cox.outcome IS 'fracture (first fragility fracture; death and other ends of follow-up censor) or death (cause-specific: a fracture ends follow-up).';
COMMENT ON COLUMN results.fracture_cox.adjustment IS 'regression (covariates in the model) | iptw (weighted) | none (crude).';
COMMENT ON COLUMN results.fracture_cox.term IS 'ai_current | ai_ever | e2_lt10 | e2_10_20 | e2_ge40 | e2_unknown (reference e2 20_40) | glucocorticoid_current | age_per_10y | bmi_per_5 | femoral_neck_sbmd_per_0_1. Scaling: age (years - 65) / 10, BMI (kg/m2 - 28) / 5, sBMD (g/cm2 - 0.8) / 0.1.';
COMMENT ON COLUMN results.fracture_cox.log_hr IS 'Cox coefficient (Efron ties), log hazard ratio per unit of the term.';
COMMENT ON COLUMN results.fracture_cox.se_type IS 'model-based, or robust (sandwich, clustered on patient) for weighted models.';
COMMENT ON COLUMN results.fracture_cox.ci_low IS 'Lower 95% limit of the hazard ratio (Wald).';
COMMENT ON COLUMN results.fracture_cox.ci_high IS 'Upper 95% limit of the hazard ratio (Wald).';
COMMENT ON COLUMN results.fracture_cox.p_value IS 'Wald test of hazard ratio = 1.';
COMMENT ON COLUMN results.fracture_cox.ph_p_value IS 'Proportional-hazards test on scaled Schoenfeld residuals (Grambsch-Therneau, rank time transform by default); all transforms in results.fracture_ph_tests. Small values: the hazard ratio changes over follow-up.';
COMMENT ON COLUMN results.fracture_cox.n_patients IS 'Members in the model (unsuppressed: suppress before showing).';
COMMENT ON COLUMN results.fracture_cox.n_patients_excluded IS 'Members left out for a missing baseline covariate (complete-case analysis: BMI, femoral-neck sBMD).';
COMMENT ON COLUMN results.fracture_cox.n_events IS 'Events (of outcome) in the model.';
COMMENT ON COLUMN results.fracture_cox.n_events_exposed IS 'Events while the 0/1 term was 1 (null for continuous terms).';
COMMENT ON COLUMN results.fracture_cox.mdrr IS 'Minimum detectable relative risk (alpha 0.05, power 0.8, Schoenfeld; exposed share of person-time) for 0/1 exposure terms.';
COMMENT ON COLUMN results.fracture_cox.equipoise IS 'For AI terms: share of members with preference score 0.3-0.7.';
COMMENT ON COLUMN results.fracture_cox.max_abs_smd IS 'For AI terms of weighted / crude models: the largest |SMD| the result relies on (after weighting / unweighted).';
COMMENT ON COLUMN results.fracture_cox.estimable IS 'false when the model could not be fitted (no events, no convergence); estimates are then null.';
COMMENT ON COLUMN results.fracture_cox.diagnostics_passed IS 'Diagnostics gate (CohortMethod style): estimable, enough events (model and while exposed), MDRR, and for AI terms equipoise and, for weighted/crude models, covariate balance, each within its configured threshold.';
COMMENT ON COLUMN results.fracture_cox.diagnostics_notes IS 'Which checks failed (empty when passed).';
