-- distinct_records('raw.<table>'): the delivery's records of one raw table, one row per distinct
-- record (over the contract columns), with `copies` (how many times it was delivered) and the first
-- source_record. Exact duplicates are rare, so instead of grouping every row by all its text columns
-- (the costliest step of staging at 1M patients), rows are grouped by a 64-bit hash of them: a hash
-- seen once is a distinct record for certain; only rows whose hash repeats are grouped exactly, so a
-- hash collision can never merge two different records.
CREATE OR REPLACE TEMP MACRO distinct_records(raw_table) AS TABLE
WITH records AS (
    SELECT * EXCLUDE (delivery_id, source_file, source_line, extra_columns),
           hash(*COLUMNS(* EXCLUDE (delivery_id, source_file, source_record, source_line, extra_columns))) AS record_hash
    FROM query_table(raw_table) WHERE delivery_id = getvariable('delivery_id')
), repeated AS (
    SELECT record_hash FROM records GROUP BY record_hash HAVING count(*) > 1
)
SELECT * EXCLUDE (record_hash), 1::BIGINT AS copies FROM records ANTI JOIN repeated USING (record_hash)
UNION ALL BY NAME
SELECT * EXCLUDE (record_hash, source_record), min(source_record) AS source_record, count(*) AS copies
FROM records SEMI JOIN repeated USING (record_hash)
GROUP BY ALL;
