-- Validation relation of suite delivered_patients: every patients record of the delivery as
-- delivered, with its fate and, per defect family, whether it has it (quarantined records
-- re-checked from their delivered values, mirroring sql/staging/patients.sql; see
-- delivered_labs.sql for the reasoning). Variables: delivery_id, data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        TRY_CAST(original_values ->> 'birth_year' AS INTEGER) AS birth_year,
        TRY_CAST(original_values ->> 'enrollment_start' AS DATE) AS enrollment_start,
        TRY_CAST(original_values ->> 'enrollment_end' AS DATE) AS enrollment_end,
        TRY_CAST(original_values ->> 'death_date' AS DATE) AS death_date
    FROM quarantine.rows
    WHERE delivery_id = getvariable('delivery_id') AND table_name = 'patients'
), checked AS (
    SELECT source_record, 'quarantined' AS outcome, rule AS fate,
        coalesce(greatest(enrollment_start, enrollment_end, death_date) > getvariable('data_cutoff')::DATE, false) AS future_date,
        coalesce(birth_year < 1900 OR birth_year > year(getvariable('data_cutoff')::DATE), false) AS impossible_value,
        coalesce(enrollment_end < enrollment_start, false) AS end_before_start
    FROM quarantined
), passed AS (
    SELECT r.source_record, s.source_record IS NOT NULL AS staged
    FROM raw.patients r
    LEFT JOIN (SELECT source_record FROM staging.patients WHERE delivery_id = getvariable('delivery_id')) s
        ON s.source_record = r.source_record
    ANTI JOIN quarantined q ON q.source_record = r.source_record
    WHERE r.delivery_id = getvariable('delivery_id')
)
SELECT * FROM checked
UNION ALL BY NAME
SELECT source_record,
    CASE WHEN staged THEN 'staged' ELSE 'duplicate' END AS outcome,
    CASE WHEN staged THEN 'staged' ELSE 'duplicate' END AS fate,
    CASE WHEN staged THEN false END AS future_date,
    CASE WHEN staged THEN false END AS impossible_value,
    CASE WHEN staged THEN false END AS end_before_start
FROM passed
