-- Kaplan-Meier of time to first fragility fracture by AI exposure (filled by assets/models.py from
-- cohort/fracture.py: kaplan_meier_by_group). The report reads this table.
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.km_curves (
    data_cutoff DATE, curve VARCHAR, group_label VARCHAR, time_years DOUBLE,
    at_risk BIGINT, events BIGINT, censored BIGINT, survival DOUBLE, ci_low DOUBLE, ci_high DOUBLE
);
COMMENT ON TABLE results.km_curves IS 'Kaplan-Meier estimate of time to first fragility fracture from index by AI exposure during follow-up (curve ai_ever: "AI during follow-up" vs "No AI"); one row per event or censoring time plus time 0. Descriptive only: ever-AI is known only after follow-up starts (immortal time), so compare groups with results.fracture_cox, not with these curves. Death, bone-active drug, end of enrollment and data cutoff censor.';
COMMENT ON COLUMN results.km_curves.curve IS 'Grouping of the curves: ai_ever (estradiol-tier curves are in results.km_curves_e2_tier).';
COMMENT ON COLUMN results.km_curves.group_label IS 'Group shown to readers, one color per label in every figure.';
COMMENT ON COLUMN results.km_curves.time_years IS 'Years since index (follow_up_days / 365.25).';
COMMENT ON COLUMN results.km_curves.at_risk IS 'Members still followed and fracture-free just before time_years (unsuppressed: suppress before showing).';
COMMENT ON COLUMN results.km_curves.events IS 'First fragility fractures at time_years.';
COMMENT ON COLUMN results.km_curves.censored IS 'Follow-ups ending without fracture at time_years.';
COMMENT ON COLUMN results.km_curves.survival IS 'Probability of remaining free of fragility fracture at time_years since index.';
COMMENT ON COLUMN results.km_curves.ci_low IS 'Lower 95% limit (Greenwood variance on the log(-log S) scale, as lifelines).';
COMMENT ON COLUMN results.km_curves.ci_high IS 'Upper 95% limit (Greenwood variance on the log(-log S) scale, as lifelines).';
