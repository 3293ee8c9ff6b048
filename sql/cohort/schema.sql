-- Cohort, analysis and results schemas. Every table holds one set of rows per data_cutoff (the
-- end of a quarter), so a past quarter's cohort can be rebuilt and compared.
CREATE SCHEMA IF NOT EXISTS cohort;
CREATE SCHEMA IF NOT EXISTS analysis;
CREATE SCHEMA IF NOT EXISTS results;

CREATE TABLE IF NOT EXISTS cohort.ai_episodes (
    data_cutoff DATE, source_site VARCHAR, patient_key VARCHAR, episode_no INTEGER,
    episode_start DATE, episode_end DATE, ingredients VARCHAR, dispensings INTEGER, mean_dose_mg DOUBLE
);
COMMENT ON TABLE cohort.ai_episodes IS 'Aromatase-inhibitor treatment episodes: dispensings bridged across gaps up to the grace period; episode_end = last covered day + grace period.';

CREATE TABLE IF NOT EXISTS cohort.members (
    data_cutoff DATE, source_site VARCHAR, patient_key VARCHAR,
    index_date DATE, age_at_index INTEGER, bmi DOUBLE, vitamin_d_ng_ml DOUBLE, testosterone_ng_dl DOUBLE,
    estradiol_pg_ml DOUBLE, glucocorticoid_at_index BOOLEAN,
    baseline_scan_date DATE, scanner_manufacturer VARCHAR,
    sbmd_lumbar_spine DOUBLE, sbmd_femoral_neck DOUBLE, sbmd_total_hip DOUBLE,
    e2_tier_at_index VARCHAR, in_bmd_analysis BOOLEAN,
    ai_ever BOOLEAN, first_ai_date DATE,
    fracture_date DATE, death_date DATE, bone_active_drug_date DATE, enrollment_end DATE,
    follow_up_end DATE, follow_up_end_reason VARCHAR, follow_up_days INTEGER
);
COMMENT ON TABLE cohort.members IS 'Study cohort: new users of testosterone therapy meeting the protocol, one row per patient and data cutoff.';
COMMENT ON COLUMN cohort.members.index_date IS 'First testosterone dispensing after the washout.';
COMMENT ON COLUMN cohort.members.ai_ever IS 'Any aromatase-inhibitor episode during follow-up (intention-to-treat exposure).';
COMMENT ON COLUMN cohort.members.follow_up_end_reason IS 'fracture | death | bone_active_drug | end_of_enrollment | data_cutoff (ties in that order).';
COMMENT ON COLUMN cohort.members.in_bmd_analysis IS 'Has a baseline DXA in the protocol window and a later scan: part of the BMD-change analysis.';

CREATE TABLE IF NOT EXISTS cohort.attrition (
    data_cutoff DATE, step_order INTEGER, step VARCHAR, description VARCHAR,
    patients_remaining BIGINT, patients_excluded BIGINT
);
COMMENT ON TABLE cohort.attrition IS 'Cohort flow, one row per protocol step in order: patients remaining and excluded at that step.';

-- Estradiol tier of one result (pg/mL), per the protocol bounds: uncensored values by range; a
-- left-censored "<x" only when every value below x lies in the lowest tier (x <= low bound), a
-- right-censored ">x" only when every value above x lies in the top tier (x >= high bound).
CREATE OR REPLACE MACRO cohort.e2_tier(value, censoring, low, mid, high) AS
    CASE
        WHEN value IS NULL THEN 'unknown'
        WHEN censoring = 'left' THEN CASE WHEN value <= low THEN 'lt10' ELSE 'unknown' END
        WHEN censoring = 'right' THEN CASE WHEN value >= high THEN 'ge40' ELSE 'unknown' END
        WHEN value < low THEN 'lt10'
        WHEN value < mid THEN '10_20'
        WHEN value < high THEN '20_40'
        ELSE 'ge40'
    END;

CREATE TABLE IF NOT EXISTS cohort.estradiol_results (
    data_cutoff DATE, source_site VARCHAR, patient_key VARCHAR, collected_date DATE,
    lcms_only BOOLEAN, e2_tier VARCHAR, results INTEGER
);
COMMENT ON TABLE cohort.estradiol_results IS 'Estradiol tier per patient and collection day: rows with lcms_only=false use every assay (or only LC-MS/MS if the protocol says so), rows with lcms_only=true only LC-MS/MS; several results on one day give the lowest known tier.';

CREATE TABLE IF NOT EXISTS cohort.exposure_segments (
    data_cutoff DATE, source_site VARCHAR, patient_key VARCHAR,
    segment_start DATE, segment_end DATE,
    ai_current BOOLEAN, ai_drug VARCHAR, ai_dose_mg DOUBLE,
    e2_tier VARCHAR, e2_tier_lcms VARCHAR, glucocorticoid_current BOOLEAN
);
COMMENT ON TABLE cohort.exposure_segments IS 'Per member, calendar-day segments (segment_start..segment_end inclusive) over which current AI, estradiol tier and glucocorticoid use are constant, each starting where one of them changes (no two adjacent segments alike); from the earlier of baseline scan and index to the end of follow-up.';
COMMENT ON COLUMN cohort.exposure_segments.e2_tier IS 'lt10 | 10_20 | 20_40 (reference) | ge40 | unknown: from the latest estradiol in the protocol lookback (all assays, or LC-MS/MS only if the protocol says so).';
COMMENT ON COLUMN cohort.exposure_segments.e2_tier_lcms IS 'As e2_tier from LC-MS/MS results only (sensitivity analysis).';

CREATE TABLE IF NOT EXISTS analysis.fracture_intervals (
    data_cutoff DATE, source_site VARCHAR, patient_key VARCHAR,
    start_day INTEGER, stop_day INTEGER,
    ai_current BOOLEAN, ai_ever BOOLEAN, ai_drug VARCHAR, ai_dose_mg DOUBLE,
    e2_tier VARCHAR, e2_tier_lcms VARCHAR, glucocorticoid_current BOOLEAN,
    event VARCHAR
);
COMMENT ON TABLE analysis.fracture_intervals IS 'Counting-process rows (start_day, stop_day] in days since index, split at every change of current AI, estradiol tier and glucocorticoid use; they partition each member''s follow-up exactly.';
COMMENT ON COLUMN analysis.fracture_intervals.event IS 'fracture | death (competing) | censored: what happened at stop_day; only the last row of a member can have an event.';
COMMENT ON COLUMN analysis.fracture_intervals.ai_ever IS 'AI started at or before this interval since index (intention-to-treat exposure).';

CREATE TABLE IF NOT EXISTS analysis.bmd_long (
    data_cutoff DATE, source_site VARCHAR, patient_key VARCHAR, skeletal_site VARCHAR,
    scan_date DATE, manufacturer VARCHAR, years_since_baseline DOUBLE, sbmd_g_cm2 DOUBLE, log_sbmd DOUBLE,
    years_on_ai DOUBLE,
    years_e2_lt10 DOUBLE, years_e2_10_20 DOUBLE, years_e2_20_40 DOUBLE, years_e2_ge40 DOUBLE, years_e2_unknown DOUBLE,
    years_e2_lcms_lt10 DOUBLE, years_e2_lcms_10_20 DOUBLE, years_e2_lcms_20_40 DOUBLE, years_e2_lcms_ge40 DOUBLE,
    years_e2_lcms_unknown DOUBLE,
    age_at_index INTEGER, bmi DOUBLE, ai_ever BOOLEAN
);
COMMENT ON TABLE analysis.bmd_long IS 'BMD analysis rows: one per member in the BMD analysis, skeletal site and standardized scan from the baseline scan to the end of follow-up, with the exposure time a mixed model needs.';
COMMENT ON COLUMN analysis.bmd_long.years_on_ai IS 'Years between the baseline scan and this scan spent on a current AI episode.';
COMMENT ON COLUMN analysis.bmd_long.years_e2_lt10 IS 'Years between the baseline scan and this scan spent in estradiol tier <10 pg/mL (and likewise per tier; the five add up to years_since_baseline).';
