-- Only for a file with line breaks inside quoted fields (rare; the running sum is a serial window):
-- source_line, loaded with the breaks inside each record, becomes the breaks inside the records
-- before it, which sql/staging/number_raw_records.sql then adds to the record's line.
UPDATE raw.{table} SET source_line = before.breaks
FROM (
    SELECT rowid AS row_id,
           coalesce(sum(source_line) OVER (ORDER BY rowid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS breaks
    FROM raw.{table} WHERE delivery_id = getvariable('delivery_id')
) before
WHERE raw.{table}.rowid = before.row_id;
