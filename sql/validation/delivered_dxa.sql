-- Validation relation of suite delivered_dxa: every dxa record of the delivery as delivered, with
-- its fate and, per defect family, whether it has it (quarantined records re-checked from their
-- delivered values, mirroring sql/staging/dxa.sql; see delivered_labs.sql for the reasoning).
-- Variables: delivery_id, data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        original_values ->> 'patient_key' AS patient_key,
        TRY_CAST(original_values ->> 'scan_date' AS DATE) AS scan_date,
        TRY_CAST(original_values ->> 'bmd_g_cm2' AS DOUBLE) AS bmd_g_cm2,
        TRY_CAST(original_values ->> 't_score' AS DOUBLE) AS t_score,
        TRY_CAST(original_values ->> 'z_score' AS DOUBLE) AS z_score
    FROM quarantine.rows
    WHERE delivery_id = getvariable('delivery_id') AND table_name = 'dxa'
), patients AS (
    SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')
), checked AS (
    SELECT q.source_record, 'quarantined' AS outcome, q.rule AS fate,
        q.patient_key IS NOT NULL AND p.patient_key IS NULL AS orphan_patient_key,
        coalesce(q.scan_date > getvariable('data_cutoff')::DATE, false) AS future_date,
        coalesce(q.bmd_g_cm2 <= 0 OR q.bmd_g_cm2 > 3 OR abs(q.t_score) > 10 OR abs(q.z_score) > 10, false) AS impossible_value
    FROM quarantined q
    LEFT JOIN patients p ON p.patient_key = q.patient_key
), passed AS (
    SELECT r.source_record, s.source_record IS NOT NULL AS staged
    FROM raw.dxa r
    LEFT JOIN (SELECT source_record FROM staging.dxa WHERE delivery_id = getvariable('delivery_id')) s
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
    CASE WHEN staged THEN false END AS impossible_value
FROM passed
