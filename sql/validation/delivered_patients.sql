-- Validation relation of suite delivered_patients: every patients record of the delivery as
-- delivered, with its fate and, per defect family, whether it has it. The quarantined records are
-- re-checked for every family from their delivered values, mirroring sql/staging/patients.sql; the
-- rest comes from the macros of delivered_macros.sql (run it first). Variables: delivery_id,
-- data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        TRY_CAST(original_values ->> 'birth_year' AS INTEGER) AS birth_year,
        TRY_CAST(original_values ->> 'enrollment_start' AS DATE) AS enrollment_start,
        TRY_CAST(original_values ->> 'enrollment_end' AS DATE) AS enrollment_end,
        TRY_CAST(original_values ->> 'death_date' AS DATE) AS death_date
    FROM delivered_quarantined('patients')
), checked AS (
    SELECT source_record, rule,
        coalesce(greatest(enrollment_start, enrollment_end, death_date) > getvariable('data_cutoff')::DATE, false) AS future_date,
        coalesce(birth_year < 1900 OR birth_year > year(getvariable('data_cutoff')::DATE), false) AS impossible_value,
        coalesce(enrollment_end < enrollment_start, false) AS end_before_start
    FROM quarantined
)
SELECT * FROM delivered_records('patients', 'checked')
