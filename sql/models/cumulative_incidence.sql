-- Aalen-Johansen cumulative incidence of first fragility fracture with death as a competing event
-- (cohort/fracture.py: cumulative_incidence_by_group, estimator cohort.survival.AalenJohansen).
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.cumulative_incidence (
    data_cutoff DATE, curve VARCHAR, group_label VARCHAR, time_years DOUBLE,
    at_risk BIGINT, events BIGINT, competing BIGINT, censored BIGINT,
    cif DOUBLE, se DOUBLE, ci_low DOUBLE, ci_high DOUBLE
);
COMMENT ON TABLE results.cumulative_incidence IS 'Cumulative incidence of first fragility fracture (Aalen-Johansen) with death competing, per grouping (curve) and group; one row per distinct event or censoring time plus time 0. Tied times are handled exactly (no random jitter), so reruns give identical numbers. Unlike 1 - Kaplan-Meier, it does not treat the dead as if they could still fracture.';
COMMENT ON COLUMN results.cumulative_incidence.curve IS 'ai_ever (AI during follow-up vs no AI; descriptive, immortal time) or e2_tier_at_index (estradiol tier at index).';
COMMENT ON COLUMN results.cumulative_incidence.group_label IS 'Group shown to readers, one color per label in every figure.';
COMMENT ON COLUMN results.cumulative_incidence.time_years IS 'Years since index.';
COMMENT ON COLUMN results.cumulative_incidence.at_risk IS 'Members still followed, fracture-free and alive just before time_years (unsuppressed).';
COMMENT ON COLUMN results.cumulative_incidence.events IS 'First fragility fractures at time_years.';
COMMENT ON COLUMN results.cumulative_incidence.competing IS 'Deaths (before any fracture) at time_years.';
COMMENT ON COLUMN results.cumulative_incidence.censored IS 'Follow-ups ending for another reason (bone-active drug, end of enrollment, data cutoff) at time_years.';
COMMENT ON COLUMN results.cumulative_incidence.cif IS 'Probability of a fragility fracture by time_years, death competing.';
COMMENT ON COLUMN results.cumulative_incidence.se IS 'Standard error of cif (delta method, Collett / lifelines formula).';
COMMENT ON COLUMN results.cumulative_incidence.ci_low IS 'Lower 95% limit of cif (log(-log) scale).';
COMMENT ON COLUMN results.cumulative_incidence.ci_high IS 'Upper 95% limit of cif (log(-log) scale).';
