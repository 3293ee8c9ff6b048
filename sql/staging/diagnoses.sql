-- raw.diagnoses -> typed diagnoses, ICD-10-CM codes normalized to upper case without the dot.
CREATE OR REPLACE TEMP TABLE typed AS
WITH src AS (
    -- one row per distinct record, exact duplicates counted (sql/staging/distinct_records.sql)
    SELECT * FROM distinct_records('raw.diagnoses')
), parsed AS (
    SELECT s.*,
        upper(replace(replace(trim(s.icd10_code), '.', ''), ' ', '')) AS code_norm,
        TRY_CAST(s.diagnosis_date AS DATE) AS diagnosis_d,
        p.patient_key IS NOT NULL AS known_patient
    FROM src s
    LEFT JOIN (SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')) p
        USING (patient_key)
)
SELECT
    source_record, copies,
    getvariable('delivery_id') AS delivery_id, getvariable('source_site') AS source_site,
    patient_key, code_norm AS icd10_code, diagnosis_d AS diagnosis_date, lower(trim(encounter_type)) AS encounter_type,
    -- the first rule the record breaks ("rule:column"), in priority order; NULL when it breaks none
    coalesce(
        CASE WHEN patient_key IS NULL THEN 'missing_value:patient_key'
             WHEN NOT known_patient THEN 'orphan_patient_key:patient_key' END,
        CASE WHEN icd10_code IS NULL THEN 'missing_value:icd10_code'
             WHEN NOT regexp_full_match(code_norm, '[A-Z][0-9][0-9A-Z]{1,5}') THEN 'invalid_code:icd10_code' END,
        CASE WHEN diagnosis_date IS NULL THEN 'missing_value:diagnosis_date'
             WHEN diagnosis_d IS NULL THEN 'invalid_date:diagnosis_date'
             WHEN diagnosis_d > getvariable('data_cutoff') THEN 'after_data_cutoff:diagnosis_date' END
    ) AS violation
FROM parsed;
