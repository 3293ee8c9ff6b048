-- Validation relation of suite staging_patients: the delivery's staged patients, one row per
-- patient, with what the expectations compare them to: the delivery's data cutoff, the ages the
-- birth year implies, and whether the patient has an estradiol result and a DXA scan.
-- Variables: delivery_id, data_cutoff.
WITH with_estradiol AS (
    SELECT DISTINCT patient_key FROM staging.labs
    WHERE delivery_id = getvariable('delivery_id') AND analyte = 'estradiol'
), with_dxa AS (
    SELECT DISTINCT patient_key FROM staging.dxa WHERE delivery_id = getvariable('delivery_id')
)
SELECT
    p.*,
    getvariable('data_cutoff')::DATE AS data_cutoff,
    -- ages are top-coded at the data cutoff or at death, whichever comes first
    year(coalesce(least(p.death_date, getvariable('data_cutoff')::DATE), getvariable('data_cutoff')::DATE)) - p.birth_year AS age_at_death_or_cutoff,
    year(p.enrollment_start) - p.birth_year AS age_at_enrollment,
    -- the contract: birth_year is null exactly when the patient is top-coded (age 90 or over)
    (p.birth_year IS NULL) = coalesce(p.age_90_plus, false) AS birth_year_matches_top_coding,
    e.patient_key IS NOT NULL AS has_estradiol,
    d.patient_key IS NOT NULL AS has_dxa,
    e.patient_key IS NOT NULL AND d.patient_key IS NOT NULL AS has_estradiol_and_dxa
FROM staging.patients p
LEFT JOIN with_estradiol e ON e.patient_key = p.patient_key
LEFT JOIN with_dxa d ON d.patient_key = p.patient_key
WHERE p.delivery_id = getvariable('delivery_id')
