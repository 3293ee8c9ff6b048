-- Kaplan-Meier of time to first fragility fracture by estradiol tier at index (cohort/fracture.py:
-- kaplan_meier_by_group). Same columns as results.km_curves.
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.km_curves_e2_tier (
    data_cutoff DATE, curve VARCHAR, group_label VARCHAR, time_years DOUBLE,
    at_risk BIGINT, events BIGINT, censored BIGINT, survival DOUBLE, ci_low DOUBLE, ci_high DOUBLE
);
COMMENT ON TABLE results.km_curves_e2_tier IS 'Kaplan-Meier estimate of time to first fragility fracture from index by estradiol tier at index (curve e2_tier_at_index: <10, 10-<20, 20-<40, >=40 pg/mL, unknown); one row per event or censoring time plus time 0. The baseline tier only: the tier changes during follow-up, which results.fracture_cox models.';
COMMENT ON COLUMN results.km_curves_e2_tier.curve IS 'Grouping of the curves: e2_tier_at_index.';
COMMENT ON COLUMN results.km_curves_e2_tier.group_label IS 'Estradiol tier at index as shown to readers (E2 <10 pg/mL ... E2 unknown).';
COMMENT ON COLUMN results.km_curves_e2_tier.time_years IS 'Years since index (follow_up_days / 365.25).';
COMMENT ON COLUMN results.km_curves_e2_tier.at_risk IS 'Members still followed and fracture-free just before time_years (unsuppressed: suppress before showing).';
COMMENT ON COLUMN results.km_curves_e2_tier.events IS 'First fragility fractures at time_years.';
COMMENT ON COLUMN results.km_curves_e2_tier.censored IS 'Follow-ups ending without fracture at time_years.';
COMMENT ON COLUMN results.km_curves_e2_tier.survival IS 'Probability of remaining free of fragility fracture at time_years since index.';
COMMENT ON COLUMN results.km_curves_e2_tier.ci_low IS 'Lower 95% limit (Greenwood, log(-log S) scale).';
COMMENT ON COLUMN results.km_curves_e2_tier.ci_high IS 'Upper 95% limit (Greenwood, log(-log S) scale).';
