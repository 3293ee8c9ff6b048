-- Kaplan-Meier results table (filled from cohort/fracture.py) and the analysis rows it is fit on.
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.km_curves (
    data_cutoff DATE, curve VARCHAR, group_label VARCHAR, time_years DOUBLE,
    at_risk BIGINT, events BIGINT, censored BIGINT, survival DOUBLE, ci_low DOUBLE, ci_high DOUBLE
);
COMMENT ON TABLE results.km_curves IS 'Kaplan-Meier estimate of time to first fragility fracture, per curve (grouping) and group; one row per event or censoring time.';
COMMENT ON COLUMN results.km_curves.survival IS 'Probability of remaining free of fragility fracture at time_years since index.';
