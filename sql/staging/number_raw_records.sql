-- Number the records of one delivered CSV file just appended to raw.{table}: source_record is the
-- record's position in the file (its append position: DuckDB keeps file order on insert), and
-- source_line the line it starts on, given the header's lines and the line breaks inside quoted
-- fields of the records before it (held in source_line by the load until now).
UPDATE raw.{table} SET source_record = rowid - (
    SELECT min(rowid) FROM raw.{table} WHERE delivery_id = getvariable('delivery_id')
) + 1
WHERE delivery_id = getvariable('delivery_id');

UPDATE raw.{table} SET source_line = numbered.line
FROM (
    SELECT source_record,
           getvariable('header_lines') + source_record
             + coalesce(sum(source_line) OVER (ORDER BY source_record ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS line
    FROM raw.{table} WHERE delivery_id = getvariable('delivery_id')
) numbered
WHERE raw.{table}.delivery_id = getvariable('delivery_id') AND raw.{table}.source_record = numbered.source_record;
