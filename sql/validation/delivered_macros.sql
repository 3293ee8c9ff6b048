-- TEMP macros shared by the delivered_<table> relations: how every record of a delivery, as
-- delivered, is accounted for. Not a relation itself: cohort.validation runs this file once on its
-- connection before the first delivered_* relation (SHARED_MACROS); in the DuckDB CLI, run it
-- first. TEMP, so nothing is written to the warehouse. Variables: delivery_id.

-- The delivery's quarantined records of contract table `tbl`: the first rule each broke (quarantine
-- keeps no other) and the record as delivered (original_values, JSON), to re-check for every rule.
CREATE OR REPLACE TEMP MACRO delivered_quarantined(tbl) AS TABLE
    SELECT source_record, rule, original_values
    FROM quarantine.rows
    WHERE delivery_id = getvariable('delivery_id') AND table_name = tbl;

-- A delivered patient_key that is not null and not among the delivery's staged patients.
CREATE OR REPLACE TEMP MACRO is_orphan_patient_key(key) AS
    key IS NOT NULL
    AND NOT coalesce(key IN (SELECT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')), false);

-- Every record of raw.<tbl> in the delivery with its fate and defect flags. `checked` names a
-- relation of the caller (a CTE): the quarantined records re-checked, with source_record, rule and
-- one boolean column per defect family. Returns source_record, outcome (quarantined, staged or
-- duplicate), fate (the quarantine rule, else the outcome) and those columns: as re-checked for
-- quarantined records; false for staged ones (they passed every ingest rule; the staging_<table>
-- suite verifies that independently); null for exact duplicates (counted once, as duplicates, so
-- shares are of distinct records).
CREATE OR REPLACE TEMP MACRO delivered_records(tbl, checked) AS TABLE
WITH passed AS (
    SELECT r.source_record, CASE WHEN s.source_record IS NOT NULL THEN 'staged' ELSE 'duplicate' END AS outcome
    FROM query_table('raw.' || tbl) r
    LEFT JOIN (SELECT source_record FROM query_table('staging.' || tbl) WHERE delivery_id = getvariable('delivery_id')) s
        ON s.source_record = r.source_record
    ANTI JOIN delivered_quarantined(tbl) q ON q.source_record = r.source_record
    WHERE r.delivery_id = getvariable('delivery_id')
), every_record AS (
    SELECT * EXCLUDE (rule), 'quarantined' AS outcome, rule AS fate FROM query_table(checked)
    UNION ALL BY NAME
    SELECT source_record, outcome, outcome AS fate FROM passed
)
SELECT source_record, outcome, fate,
    CASE outcome WHEN 'staged' THEN false ELSE COLUMNS(* EXCLUDE (source_record, outcome, fate)) END
FROM every_record;
