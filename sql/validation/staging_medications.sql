-- Validation relation of suite staging_medications: the delivery's staged dispensings, each with
-- its patient's observation window (enrollment, death) and the data cutoff, so that foreign keys
-- and temporal plausibility are plain column comparisons. Variables: delivery_id, data_cutoff.
WITH patients AS (
    SELECT patient_key, enrollment_start, enrollment_end, death_date
    FROM staging.patients WHERE delivery_id = getvariable('delivery_id')
)
SELECT
    m.*,
    getvariable('data_cutoff')::DATE AS data_cutoff,
    p.patient_key IS NOT NULL AS patient_found,
    p.enrollment_start, p.enrollment_end, p.death_date,
    m.rxnorm_code IS NOT NULL OR m.atc_code IS NOT NULL AS has_drug_code
FROM staging.medications m
LEFT JOIN patients p ON p.patient_key = m.patient_key
WHERE m.delivery_id = getvariable('delivery_id')
