-- Validation relation of suite delivered_labs: every labs record of the delivery as delivered,
-- with its fate (staged, quarantined, exact duplicate) and, for each defect family, whether the
-- record has it. Quarantine keeps only the first rule a record broke, so the quarantined records
-- are re-checked here for every family from their delivered values (quarantine.rows
-- .original_values), mirroring sql/staging/labs.sql. Staged records passed every ingest rule
-- (the staging_labs suite verifies that independently): their flags are false. Exact duplicates
-- are counted once as duplicates: their flags are null, so shares are of distinct records.
-- Variables: delivery_id, data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        original_values ->> 'patient_key' AS patient_key,
        original_values ->> 'loinc_code' AS loinc_code,
        original_values ->> 'test_name' AS test_name,
        original_values ->> 'result' AS result,
        original_values ->> 'unit' AS unit,
        original_values ->> 'collected_date' AS collected_date
    FROM quarantine.rows
    WHERE delivery_id = getvariable('delivery_id') AND table_name = 'labs'
), patients AS (
    SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')
), analysed AS (
    SELECT q.*,
        coalesce(by_code.analyte, by_name.analyte) AS analyte,
        TRY_CAST(nullif(regexp_extract(trim(q.result),
            '^([<>]=?)?\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:[A-Za-z*]{1,2})?$', 2), '') AS DOUBLE) AS number,
        lower(replace(replace(replace(replace(trim(q.unit), ' ', ''), '²', '2'), '^', ''), 'µ', 'u')) AS unit_norm,
        p.patient_key IS NOT NULL AS known_patient
    FROM quarantined q
    LEFT JOIN patients p ON p.patient_key = q.patient_key
    LEFT JOIN reference.lab_codes by_code ON by_code.loinc_code = trim(q.loinc_code)
    LEFT JOIN LATERAL (
        SELECT analyte FROM reference.lab_names WHERE regexp_matches(upper(q.test_name), name_pattern) LIMIT 1
    ) by_name ON by_code.analyte IS NULL
), checked AS (
    SELECT a.source_record, 'quarantined' AS outcome, a.rule AS fate,
        a.patient_key IS NOT NULL AND NOT a.known_patient AS orphan_patient_key,
        coalesce(TRY_CAST(a.collected_date AS DATE) > getvariable('data_cutoff')::DATE, false) AS future_date,
        a.analyte IS NOT NULL AND u.factor IS NULL AS unknown_unit,
        coalesce(a.number < 0 OR NOT (a.number * u.factor BETWEEN u.min_plausible AND u.max_plausible), false) AS impossible_value,
        a.result IS NOT NULL AND a.number IS NULL AS non_numeric_result
    FROM analysed a
    LEFT JOIN reference.lab_units u ON u.analyte = a.analyte AND u.unit_normalized = a.unit_norm
), passed AS (
    SELECT r.source_record, s.source_record IS NOT NULL AS staged
    FROM raw.labs r
    LEFT JOIN (SELECT source_record FROM staging.labs WHERE delivery_id = getvariable('delivery_id')) s
        ON s.source_record = r.source_record
    ANTI JOIN quarantined q ON q.source_record = r.source_record
    WHERE r.delivery_id = getvariable('delivery_id')
)
SELECT * FROM checked
UNION ALL BY NAME
SELECT source_record,
    CASE WHEN staged THEN 'staged' ELSE 'duplicate' END AS outcome,
    CASE WHEN staged THEN 'staged' ELSE 'duplicate' END AS fate,
    CASE WHEN staged THEN false END AS orphan_patient_key,
    CASE WHEN staged THEN false END AS future_date,
    CASE WHEN staged THEN false END AS unknown_unit,
    CASE WHEN staged THEN false END AS impossible_value,
    CASE WHEN staged THEN false END AS non_numeric_result
FROM passed
