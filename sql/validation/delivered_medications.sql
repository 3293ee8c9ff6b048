-- Validation relation of suite delivered_medications: every medications record of the delivery as
-- delivered, with its fate and, per defect family, whether it has it. The quarantined records are
-- re-checked for every family from their delivered values, mirroring sql/staging/medications.sql;
-- the rest comes from the macros of delivered_macros.sql (run it first). Variables: delivery_id,
-- data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        is_orphan_patient_key(original_values ->> 'patient_key') AS orphan_patient_key,
        TRY_CAST(original_values ->> 'start_date' AS DATE) AS start_date,
        TRY_CAST(original_values ->> 'end_date' AS DATE) AS end_date,
        TRY_CAST(original_values ->> 'days_supply' AS INTEGER) AS days_supply,
        TRY_CAST(original_values ->> 'dose_mg' AS DOUBLE) AS dose_mg,
        TRY_CAST(original_values ->> 'doses_per_week' AS DOUBLE) AS doses_per_week
    FROM delivered_quarantined('medications')
), checked AS (
    SELECT source_record, rule, orphan_patient_key,
        coalesce(start_date > getvariable('data_cutoff')::DATE, false) AS future_date,
        coalesce(days_supply <= 0 OR days_supply > 730 OR dose_mg < 0 OR doses_per_week < 0, false) AS impossible_value,
        coalesce(end_date < start_date, false) AS end_before_start
    FROM quarantined
)
SELECT * FROM delivered_records('medications', 'checked')
