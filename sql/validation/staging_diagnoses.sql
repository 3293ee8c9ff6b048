-- Validation relation of suite staging_diagnoses: the delivery's staged diagnoses, each with its
-- patient's observation window and the data cutoff; `sex_icd10_chapter` ('M:O') and
-- `sex_icd10_category` ('F:E29') let a suite list sex-specific codes.
-- Variables: delivery_id, data_cutoff.
WITH patients AS (
    SELECT patient_key, sex_at_birth, enrollment_start, enrollment_end, death_date
    FROM staging.patients WHERE delivery_id = getvariable('delivery_id')
)
SELECT
    x.*,
    getvariable('data_cutoff')::DATE AS data_cutoff,
    p.patient_key IS NOT NULL AS patient_found,
    p.enrollment_start, p.enrollment_end, p.death_date,
    p.sex_at_birth || ':' || left(x.icd10_code, 1) AS sex_icd10_chapter,
    p.sex_at_birth || ':' || left(x.icd10_code, 3) AS sex_icd10_category
FROM staging.diagnoses x
LEFT JOIN patients p ON p.patient_key = x.patient_key
WHERE x.delivery_id = getvariable('delivery_id')
