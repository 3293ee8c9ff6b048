-- raw.labs -> results in canonical units, censoring kept, with the rules each record breaks.
-- A result is `[<>]? number [flag]?` (flags such as H, L, HH, * are dropped); anything else is not a value.
CREATE OR REPLACE TEMP TABLE typed AS
WITH src AS (
    SELECT *,
        row_number() OVER (PARTITION BY patient_key, loinc_code, test_name, result, unit, collected_date,
                           assay_method, loq ORDER BY source_record) AS copy_no
    FROM raw.labs WHERE delivery_id = getvariable('delivery_id')
), parsed AS (
    SELECT s.*,
        regexp_extract(trim(s.result), '^([<>]=?)?\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:[A-Za-z*]{1,2})?$', ['op', 'number']) AS parts,
        TRY_CAST(s.collected_date AS DATE) AS collected_d,
        TRY_CAST(s.loq AS DOUBLE) AS loq_f,
        lower(replace(replace(replace(replace(trim(s.unit), ' ', ''), '²', '2'), '^', ''), 'µ', 'u')) AS unit_norm,
        p.patient_key IS NOT NULL AS known_patient
    FROM src s
    LEFT JOIN (SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')) p
        USING (patient_key)
), analysed AS (
    SELECT parsed.*,
        coalesce(by_code.analyte, by_name.analyte) AS analyte_id,
        TRY_CAST(nullif(parts.number, '') AS DOUBLE) AS number_f,
        CASE WHEN parts.op LIKE '<%' THEN 'left' WHEN parts.op LIKE '>%' THEN 'right' ELSE 'none' END AS censoring
    FROM parsed
    LEFT JOIN reference.lab_codes by_code ON by_code.loinc_code = trim(parsed.loinc_code)
    LEFT JOIN LATERAL (
        SELECT analyte FROM reference.lab_names WHERE regexp_matches(upper(parsed.test_name), name_pattern) LIMIT 1
    ) by_name ON by_code.analyte IS NULL
), converted AS (
    SELECT analysed.*, u.canonical_unit, u.factor, u.min_plausible, u.max_plausible
    FROM analysed
    LEFT JOIN reference.lab_units u ON u.analyte = analysed.analyte_id AND u.unit_normalized = analysed.unit_norm
)
SELECT
    source_record, copy_no,
    getvariable('delivery_id') AS delivery_id, getvariable('source_site') AS source_site,
    patient_key, loinc_code, test_name, analyte_id AS analyte, result AS result_raw, unit AS unit_raw,
    CASE WHEN analyte_id IS NULL THEN number_f ELSE number_f * factor END AS value,
    coalesce(canonical_unit, unit) AS unit,
    censoring,
    CASE WHEN analyte_id IS NULL THEN loq_f ELSE loq_f * factor END AS loq,
    collected_d AS collected_date, assay_method,
    list_filter([
        CASE WHEN patient_key IS NULL THEN 'missing_value:patient_key'
             WHEN NOT known_patient THEN 'orphan_patient_key:patient_key' END,
        CASE WHEN collected_date IS NULL THEN 'missing_value:collected_date'
             WHEN collected_d IS NULL THEN 'invalid_date:collected_date'
             WHEN collected_d > getvariable('data_cutoff') THEN 'after_data_cutoff:collected_date' END,
        CASE WHEN result IS NULL THEN 'missing_value:result'
             WHEN lower(trim(result)) IN ('inf', '+inf', '-inf', 'infinity', '-infinity', 'nan')
               OR (parts.number <> '' AND (number_f IS NULL OR NOT isfinite(number_f))) THEN 'non_finite_number:result'
             WHEN number_f IS NULL THEN 'non_numeric_result:result' END,
        CASE WHEN analyte_id IS NOT NULL AND factor IS NULL THEN 'unknown_unit:unit' END,
        CASE WHEN analyte_id IS NOT NULL AND factor IS NOT NULL AND isfinite(number_f)
                  AND (number_f * factor < min_plausible OR number_f * factor > max_plausible)
             THEN 'implausible_value:result' END,
        CASE WHEN loq IS NOT NULL AND (loq_f IS NULL OR NOT isfinite(loq_f)) THEN 'invalid_number:loq' END
    ], lambda rule: rule IS NOT NULL) AS violations
FROM converted;
