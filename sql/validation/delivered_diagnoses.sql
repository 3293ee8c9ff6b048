-- Validation relation of suite delivered_diagnoses: every diagnoses record of the delivery as
-- delivered, with its fate and, per defect family, whether it has it. The quarantined records are
-- re-checked for every family from their delivered values, mirroring sql/staging/diagnoses.sql; the
-- rest comes from the macros of delivered_macros.sql (run it first). Variables: delivery_id,
-- data_cutoff.
WITH checked AS (
    SELECT source_record, rule,
        is_orphan_patient_key(original_values ->> 'patient_key') AS orphan_patient_key,
        coalesce(TRY_CAST(original_values ->> 'diagnosis_date' AS DATE) > getvariable('data_cutoff')::DATE, false) AS future_date
    FROM delivered_quarantined('diagnoses')
)
SELECT * FROM delivered_records('diagnoses', 'checked')
