-- Validation relation of suite staging_labs: the delivery's staged lab results, each with its
-- patient's observation window and sex, the data cutoff, and the analyte's canonical unit from
-- reference.lab_units. `sex_analyte` ('M:estradiol') lets a suite state sex-specific ranges.
-- Variables: delivery_id, data_cutoff.
WITH patients AS (
    SELECT patient_key, sex_at_birth, enrollment_start, enrollment_end, death_date
    FROM staging.patients WHERE delivery_id = getvariable('delivery_id')
), canonical AS (
    SELECT DISTINCT analyte, canonical_unit FROM reference.lab_units
)
SELECT
    l.*,
    getvariable('data_cutoff')::DATE AS data_cutoff,
    p.patient_key IS NOT NULL AS patient_found,
    p.enrollment_start, p.enrollment_end, p.death_date,
    p.sex_at_birth || ':' || l.analyte AS sex_analyte,
    c.canonical_unit
FROM staging.labs l
LEFT JOIN patients p ON p.patient_key = l.patient_key
LEFT JOIN canonical c ON c.analyte = l.analyte
WHERE l.delivery_id = getvariable('delivery_id')
