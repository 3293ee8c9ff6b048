-- Per-member propensity scores and inverse-probability weights for the AI comparison
-- (cohort/fracture.py: PropensityScoreModel). Patient-level: an analysis dataset, not a result.
CREATE SCHEMA IF NOT EXISTS analysis;
CREATE TABLE IF NOT EXISTS analysis.fracture_iptw_weights (
    data_cutoff DATE, source_site VARCHAR, patient_key VARCHAR, ai_ever BOOLEAN,
    propensity_score DOUBLE, preference_score DOUBLE, iptw_untruncated DOUBLE, iptw DOUBLE
);
COMMENT ON TABLE analysis.fracture_iptw_weights IS 'One row per cohort member: the estimated probability of starting an aromatase inhibitor during follow-up given baseline covariates (logistic propensity score), the preference score, and the stabilized inverse-probability-of-treatment weight used by the iptw_itt model in results.fracture_cox.';
COMMENT ON COLUMN analysis.fracture_iptw_weights.propensity_score IS 'P(ai_ever | age, BMI, estradiol (and log, tier), testosterone, vitamin D, glucocorticoid at index, femoral-neck sBMD, site, scanner; missing values median-imputed with missing indicators).';
COMMENT ON COLUMN analysis.fracture_iptw_weights.preference_score IS 'Walker 2013: logit = logit(propensity_score) - logit(share treated); 0.3-0.7 counts as equipoise.';
COMMENT ON COLUMN analysis.fracture_iptw_weights.iptw_untruncated IS 'Stabilized weight: share treated / PS for AI initiators, share untreated / (1 - PS) for the others.';
COMMENT ON COLUMN analysis.fracture_iptw_weights.iptw IS 'iptw_untruncated clipped to the configured percentiles (default 1st / 99th of all weights).';
