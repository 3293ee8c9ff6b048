-- Validation relation of suite staging_dxa: the delivery's staged DXA results (one row per
-- skeletal site per scan), each with its patient's observation window and birth year, the data
-- cutoff, and whether reference.sbmd_equations holds a standardization equation for it.
-- Variables: delivery_id, data_cutoff.
WITH patients AS (
    SELECT patient_key, birth_year, enrollment_start, enrollment_end, death_date
    FROM staging.patients WHERE delivery_id = getvariable('delivery_id')
)
SELECT
    d.*,
    getvariable('data_cutoff')::DATE AS data_cutoff,
    p.patient_key IS NOT NULL AS patient_found,
    p.enrollment_start, p.enrollment_end, p.death_date, p.birth_year,
    year(d.scan_date) AS scan_year,
    e.skeletal_site IS NOT NULL AS equation_available,
    -- one result per patient, scan day, skeletal site and side
    concat_ws('|', d.patient_key, d.scan_date, d.skeletal_site, coalesce(d.laterality, '-')) AS result_key
FROM staging.dxa d
LEFT JOIN patients p ON p.patient_key = d.patient_key
LEFT JOIN reference.sbmd_equations e ON e.skeletal_site = d.skeletal_site AND e.manufacturer = d.manufacturer
WHERE d.delivery_id = getvariable('delivery_id')
