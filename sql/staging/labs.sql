-- raw.labs -> results in canonical units, censoring kept, with the first rule each record breaks.
-- A result is `[<>]? number [flag]?` (flags such as H, L, HH, * are dropped); anything else is not a value.
CREATE OR REPLACE TEMP TABLE typed AS
WITH src AS (
    -- one row per distinct record, exact duplicates counted (sql/staging/distinct_records.sql)
    SELECT * FROM distinct_records('raw.labs')
), results AS (
    -- parse each distinct result text once
    SELECT result, parts.op, TRY_CAST(nullif(parts.number, '') AS DOUBLE) AS number_f, parts.number AS number_txt
    FROM (
        SELECT result, regexp_extract(trim(result), '^([<>]=?)?\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:[A-Za-z*]{1,2})?$',
                                      ['op', 'number']) AS parts
        FROM (SELECT DISTINCT result FROM src)
    )
), tests AS (
    -- the analyte of each distinct (LOINC, test name) once: by code, else by name
    SELECT t.loinc_code, t.test_name, coalesce(by_code.analyte, by_name.analyte) AS analyte_id
    FROM (SELECT DISTINCT loinc_code, test_name FROM src) t
    LEFT JOIN reference.lab_codes by_code ON by_code.loinc_code = trim(t.loinc_code)
    LEFT JOIN LATERAL (
        SELECT analyte FROM reference.lab_names WHERE regexp_matches(upper(t.test_name), name_pattern) LIMIT 1
    ) by_name ON by_code.analyte IS NULL
), units AS (
    SELECT unit, lower(replace(replace(replace(replace(trim(unit), ' ', ''), '²', '2'), '^', ''), 'µ', 'u')) AS unit_norm
    FROM (SELECT DISTINCT unit FROM src)
), converted AS (
    SELECT s.*, r.number_f, r.number_txt,
        CASE WHEN r.op LIKE '<%' THEN 'left' WHEN r.op LIKE '>%' THEN 'right' ELSE 'none' END AS censoring,
        t.analyte_id, u.canonical_unit, u.factor, u.min_plausible, u.max_plausible,
        TRY_CAST(s.collected_date AS DATE) AS collected_d,
        TRY_CAST(s.loq AS DOUBLE) AS loq_f,
        p.patient_key IS NOT NULL AS known_patient
    FROM src s
    LEFT JOIN results r ON r.result IS NOT DISTINCT FROM s.result
    LEFT JOIN tests t ON t.loinc_code IS NOT DISTINCT FROM s.loinc_code AND t.test_name IS NOT DISTINCT FROM s.test_name
    LEFT JOIN units n ON n.unit IS NOT DISTINCT FROM s.unit
    LEFT JOIN reference.lab_units u ON u.analyte = t.analyte_id AND u.unit_normalized = n.unit_norm
    LEFT JOIN (SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')) p
        ON p.patient_key = s.patient_key
)
SELECT
    source_record, copies,
    getvariable('delivery_id') AS delivery_id, getvariable('source_site') AS source_site,
    patient_key, loinc_code, test_name, analyte_id AS analyte, result AS result_raw, unit AS unit_raw,
    CASE WHEN analyte_id IS NULL THEN number_f ELSE number_f * factor END AS value,
    coalesce(canonical_unit, unit) AS unit,
    censoring,
    CASE WHEN analyte_id IS NULL THEN loq_f ELSE loq_f * factor END AS loq,
    collected_d AS collected_date, assay_method,
    -- the first rule the record breaks ("rule:column"), in priority order; NULL when it breaks none
    coalesce(
        CASE WHEN patient_key IS NULL THEN 'missing_value:patient_key'
             WHEN NOT known_patient THEN 'orphan_patient_key:patient_key' END,
        CASE WHEN collected_date IS NULL THEN 'missing_value:collected_date'
             WHEN collected_d IS NULL THEN 'invalid_date:collected_date'
             WHEN collected_d > getvariable('data_cutoff') THEN 'after_data_cutoff:collected_date' END,
        CASE WHEN result IS NULL THEN 'missing_value:result'
             WHEN lower(trim(result)) IN ('inf', '+inf', '-inf', 'infinity', '-infinity', 'nan')
               OR (number_txt <> '' AND (number_f IS NULL OR NOT isfinite(number_f))) THEN 'non_finite_number:result'
             WHEN number_f IS NULL THEN 'non_numeric_result:result' END,
        CASE WHEN analyte_id IS NOT NULL AND factor IS NULL THEN 'unknown_unit:unit' END,
        CASE WHEN analyte_id IS NOT NULL AND factor IS NOT NULL AND isfinite(number_f)
                  AND (number_f * factor < min_plausible OR number_f * factor > max_plausible)
             THEN 'implausible_value:result' END,
        CASE WHEN loq IS NOT NULL AND (loq_f IS NULL OR NOT isfinite(loq_f)) THEN 'invalid_number:loq' END
    ) AS violation
FROM converted;
