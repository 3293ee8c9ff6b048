-- Number the records of one delivered file just appended to raw.{table}: source_record is the
-- record's position in the file (its append position: DuckDB keeps file order on insert), and
-- source_line the line it starts on: the header's lines, one per record before it, and the line
-- breaks inside the quoted fields of the records before it, which source_line holds until now
-- (0 unless sql/staging/count_quoted_line_breaks.sql ran). One UPDATE of every row.
UPDATE raw.{table} SET
    source_record = rowid - first.row_id + 1,
    source_line = getvariable('header_lines') + rowid - first.row_id + 1 + source_line
FROM (SELECT min(rowid) AS row_id FROM raw.{table} WHERE delivery_id = getvariable('delivery_id')) first
WHERE delivery_id = getvariable('delivery_id');
