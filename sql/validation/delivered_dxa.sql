-- Validation relation of suite delivered_dxa: every dxa record of the delivery as delivered, with
-- its fate and, per defect family, whether it has it. The quarantined records are re-checked for
-- every family from their delivered values, mirroring sql/staging/dxa.sql; the rest comes from the
-- macros of delivered_macros.sql (run it first). Variables: delivery_id, data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        is_orphan_patient_key(original_values ->> 'patient_key') AS orphan_patient_key,
        TRY_CAST(original_values ->> 'scan_date' AS DATE) AS scan_date,
        TRY_CAST(original_values ->> 'bmd_g_cm2' AS DOUBLE) AS bmd_g_cm2,
        TRY_CAST(original_values ->> 't_score' AS DOUBLE) AS t_score,
        TRY_CAST(original_values ->> 'z_score' AS DOUBLE) AS z_score
    FROM delivered_quarantined('dxa')
), checked AS (
    SELECT source_record, rule, orphan_patient_key,
        coalesce(scan_date > getvariable('data_cutoff')::DATE, false) AS future_date,
        coalesce(bmd_g_cm2 <= 0 OR bmd_g_cm2 > 3 OR abs(t_score) > 10 OR abs(z_score) > 10, false) AS impossible_value
    FROM quarantined
)
SELECT * FROM delivered_records('dxa', 'checked')
