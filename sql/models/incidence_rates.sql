-- Fragility-fracture incidence rates by current exposure (cohort/fracture.py: incidence_rates_by_exposure).
CREATE SCHEMA IF NOT EXISTS results;
CREATE TABLE IF NOT EXISTS results.incidence_rates (
    data_cutoff DATE, exposure VARCHAR, level VARCHAR, group_label VARCHAR,
    events BIGINT, person_years DOUBLE, rate_per_1000py DOUBLE, ci_low DOUBLE, ci_high DOUBLE
);
COMMENT ON TABLE results.incidence_rates IS 'First fragility fractures per 1,000 person-years of follow-up with exact Poisson (Garwood) 95% limits, by the exposure current at the time (from analysis.fracture_intervals: person-time and each fracture count where they occur), plus all follow-up. Crude rates: no adjustment.';
COMMENT ON COLUMN results.incidence_rates.exposure IS 'overall | ai_current | e2_tier | e2_tier_lcms | glucocorticoid_current.';
COMMENT ON COLUMN results.incidence_rates.level IS 'Value of the exposure (true/false, or an estradiol tier lt10 | 10_20 | 20_40 | ge40 | unknown; all for overall).';
COMMENT ON COLUMN results.incidence_rates.group_label IS 'Readable group name.';
COMMENT ON COLUMN results.incidence_rates.events IS 'First fragility fractures during this exposure (unsuppressed: suppress before showing).';
COMMENT ON COLUMN results.incidence_rates.person_years IS 'Follow-up time under this exposure, days / 365.25.';
COMMENT ON COLUMN results.incidence_rates.rate_per_1000py IS 'events / person_years x 1,000.';
COMMENT ON COLUMN results.incidence_rates.ci_low IS 'Exact Poisson lower 95% limit, chi2(0.025; 2k) / 2 events per person-time (0 when no events).';
COMMENT ON COLUMN results.incidence_rates.ci_high IS 'Exact Poisson upper 95% limit, chi2(0.975; 2k + 2) / 2 events per person-time.';
