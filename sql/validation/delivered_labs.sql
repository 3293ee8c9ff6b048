-- Validation relation of suite delivered_labs: every labs record of the delivery as delivered, with
-- its fate and, per defect family, whether it has it. The quarantined records are re-checked for
-- every family from their delivered values, mirroring sql/staging/labs.sql; the rest comes from the
-- macros of delivered_macros.sql (run it first). Variables: delivery_id, data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        is_orphan_patient_key(original_values ->> 'patient_key') AS orphan_patient_key,
        original_values ->> 'loinc_code' AS loinc_code,
        original_values ->> 'test_name' AS test_name,
        original_values ->> 'result' AS result,
        original_values ->> 'unit' AS unit,
        original_values ->> 'collected_date' AS collected_date
    FROM delivered_quarantined('labs')
), analysed AS (
    SELECT q.*,
        coalesce(by_code.analyte, by_name.analyte) AS analyte,
        TRY_CAST(nullif(regexp_extract(trim(q.result),
            '^([<>]=?)?\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:[A-Za-z*]{1,2})?$', 2), '') AS DOUBLE) AS number,
        lower(replace(replace(replace(replace(trim(q.unit), ' ', ''), '²', '2'), '^', ''), 'µ', 'u')) AS unit_norm
    FROM quarantined q
    LEFT JOIN reference.lab_codes by_code ON by_code.loinc_code = trim(q.loinc_code)
    LEFT JOIN LATERAL (
        SELECT analyte FROM reference.lab_names WHERE regexp_matches(upper(q.test_name), name_pattern) LIMIT 1
    ) by_name ON by_code.analyte IS NULL
), checked AS (
    SELECT a.source_record, a.rule, a.orphan_patient_key,
        coalesce(TRY_CAST(a.collected_date AS DATE) > getvariable('data_cutoff')::DATE, false) AS future_date,
        a.analyte IS NOT NULL AND u.factor IS NULL AS unknown_unit,
        coalesce(a.number < 0 OR NOT (a.number * u.factor BETWEEN u.min_plausible AND u.max_plausible), false) AS impossible_value,
        a.result IS NOT NULL AND a.number IS NULL AS non_numeric_result
    FROM analysed a
    LEFT JOIN reference.lab_units u ON u.analyte = a.analyte AND u.unit_normalized = a.unit_norm
)
SELECT * FROM delivered_records('labs', 'checked')
