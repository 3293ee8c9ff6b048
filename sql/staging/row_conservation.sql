-- Row conservation of one delivery: for every table, the rows actually in raw, staging and
-- quarantine against meta.ingest_counts, and raw = staging + quarantined + exact duplicates.
-- Returns one row per table that breaks it (none when the delivery is whole).
WITH actual AS (
    SELECT 'patients' AS table_name, (SELECT count(*) FROM raw.patients WHERE delivery_id = getvariable('delivery_id')) AS raw_rows,
           (SELECT count(*) FROM staging.patients WHERE delivery_id = getvariable('delivery_id')) AS staging_rows
    UNION ALL SELECT 'medications', (SELECT count(*) FROM raw.medications WHERE delivery_id = getvariable('delivery_id')),
           (SELECT count(*) FROM staging.medications WHERE delivery_id = getvariable('delivery_id'))
    UNION ALL SELECT 'labs', (SELECT count(*) FROM raw.labs WHERE delivery_id = getvariable('delivery_id')),
           (SELECT count(*) FROM staging.labs WHERE delivery_id = getvariable('delivery_id'))
    UNION ALL SELECT 'dxa', (SELECT count(*) FROM raw.dxa WHERE delivery_id = getvariable('delivery_id')),
           (SELECT count(*) FROM staging.dxa WHERE delivery_id = getvariable('delivery_id'))
    UNION ALL SELECT 'diagnoses', (SELECT count(*) FROM raw.diagnoses WHERE delivery_id = getvariable('delivery_id')),
           (SELECT count(*) FROM staging.diagnoses WHERE delivery_id = getvariable('delivery_id'))
), quarantined AS (
    SELECT table_name, count(*) AS quarantined_rows FROM quarantine.rows
    WHERE delivery_id = getvariable('delivery_id') GROUP BY ALL
)
SELECT a.table_name, a.raw_rows, a.staging_rows, coalesce(q.quarantined_rows, 0) AS quarantined_rows,
       c.duplicate_rows, c.raw_rows AS counted_raw, c.staging_rows AS counted_staging, c.quarantined_rows AS counted_quarantined
FROM actual a
LEFT JOIN quarantined q USING (table_name)
LEFT JOIN meta.ingest_counts c ON c.delivery_id = getvariable('delivery_id') AND c.table_name = a.table_name
WHERE c.raw_rows IS DISTINCT FROM a.raw_rows
   OR c.staging_rows IS DISTINCT FROM a.staging_rows
   OR c.quarantined_rows IS DISTINCT FROM coalesce(q.quarantined_rows, 0)
   OR a.raw_rows <> a.staging_rows + coalesce(q.quarantined_rows, 0) + c.duplicate_rows;
