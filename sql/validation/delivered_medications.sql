-- Validation relation of suite delivered_medications: every medications record of the delivery
-- as delivered, with its fate and, per defect family, whether it has it (quarantined records
-- re-checked from their delivered values, mirroring sql/staging/medications.sql; see
-- delivered_labs.sql for the reasoning). Variables: delivery_id, data_cutoff.
WITH quarantined AS (
    SELECT source_record, rule,
        original_values ->> 'patient_key' AS patient_key,
        TRY_CAST(original_values ->> 'start_date' AS DATE) AS start_date,
        TRY_CAST(original_values ->> 'end_date' AS DATE) AS end_date,
        TRY_CAST(original_values ->> 'days_supply' AS INTEGER) AS days_supply,
        TRY_CAST(original_values ->> 'dose_mg' AS DOUBLE) AS dose_mg,
        TRY_CAST(original_values ->> 'doses_per_week' AS DOUBLE) AS doses_per_week
    FROM quarantine.rows
    WHERE delivery_id = getvariable('delivery_id') AND table_name = 'medications'
), patients AS (
    SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')
), checked AS (
    SELECT q.source_record, 'quarantined' AS outcome, q.rule AS fate,
        q.patient_key IS NOT NULL AND p.patient_key IS NULL AS orphan_patient_key,
        coalesce(q.start_date > getvariable('data_cutoff')::DATE, false) AS future_date,
        coalesce(q.days_supply <= 0 OR q.days_supply > 730 OR q.dose_mg < 0 OR q.doses_per_week < 0, false) AS impossible_value,
        coalesce(q.end_date < q.start_date, false) AS end_before_start
    FROM quarantined q
    LEFT JOIN patients p ON p.patient_key = q.patient_key
), passed AS (
    SELECT r.source_record, s.source_record IS NOT NULL AS staged
    FROM raw.medications r
    LEFT JOIN (SELECT source_record FROM staging.medications WHERE delivery_id = getvariable('delivery_id')) s
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
    CASE WHEN staged THEN false END AS impossible_value,
    CASE WHEN staged THEN false END AS end_before_start
FROM passed
