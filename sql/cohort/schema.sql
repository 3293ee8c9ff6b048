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
    in_bmd_analysis BOOLEAN,
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
