-- Route the rows of `typed` (built by sql/staging/<table>.sql): clean first copies to staging.{table},
-- rule-breaking first copies to quarantine.rows (first rule broken, with the record as delivered),
-- and count exact duplicates (later copies), so that raw = staging + quarantine + duplicates.
INSERT INTO staging.{table} BY NAME
    SELECT * EXCLUDE (copy_no, violations) FROM typed WHERE copy_no = 1 AND len(violations) = 0;

INSERT INTO quarantine.rows
    SELECT r.delivery_id, '{table}', r.source_file, r.source_record, r.source_line,
           split_part(t.violations[1], ':', 1), split_part(t.violations[1], ':', 2),
           to_json(r)::JSON
    FROM typed t JOIN raw.{table} r ON r.delivery_id = getvariable('delivery_id') AND r.source_record = t.source_record
    WHERE t.copy_no = 1 AND len(t.violations) > 0;

INSERT INTO meta.ingest_counts
    SELECT getvariable('delivery_id'), '{table}', count(*),
           count(*) FILTER (copy_no = 1 AND len(violations) = 0),
           count(*) FILTER (copy_no = 1 AND len(violations) > 0),
           count(*) FILTER (copy_no > 1)
    FROM typed;
