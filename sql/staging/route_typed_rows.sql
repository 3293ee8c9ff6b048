-- Route the rows of `typed` (built by sql/staging/<table>.sql, one row per distinct record): clean
-- records to staging.{table}, rule-breaking ones to quarantine.rows (the first rule broken, with the
-- record as delivered), and count exact duplicates, so that raw = staging + quarantine + duplicates.
INSERT INTO staging.{table} BY NAME
    SELECT * EXCLUDE (copies, violation) FROM typed WHERE violation IS NULL;

INSERT INTO quarantine.rows
    SELECT r.delivery_id, '{table}', r.source_file, r.source_record, r.source_line,
           split_part(t.violation, ':', 1), split_part(t.violation, ':', 2),
           to_json(r)::JSON
    FROM typed t JOIN raw.{table} r ON r.delivery_id = getvariable('delivery_id') AND r.source_record = t.source_record
    WHERE t.violation IS NOT NULL;

INSERT INTO meta.ingest_counts
    SELECT getvariable('delivery_id'), '{table}', coalesce(sum(copies), 0),
           count(*) FILTER (violation IS NULL),
           count(*) FILTER (violation IS NOT NULL),
           coalesce(sum(copies - 1), 0)
    FROM typed;
