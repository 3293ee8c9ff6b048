-- Warehouse layout: every schema and table the ingest stage writes, documented for statisticians.
-- Idempotent: run at the start of every ingest.

CREATE SCHEMA IF NOT EXISTS meta;
CREATE SCHEMA IF NOT EXISTS reference;
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS quarantine;

CREATE TABLE IF NOT EXISTS meta.deliveries (
    delivery_id      VARCHAR PRIMARY KEY,
    source_site      VARCHAR,
    extracted_at     TIMESTAMPTZ,
    data_cutoff      DATE,
    status           VARCHAR NOT NULL,   -- loaded | rejected | held
    reason           VARCHAR,            -- why a delivery was rejected
    manifest_sha256  VARCHAR,
    files            JSON,               -- file name -> {rows, sha256} as in the manifest
    ingested_at      TIMESTAMPTZ NOT NULL,
    validation_passed BOOLEAN            -- NULL until validated; false if a blocking expectation failed
);
COMMENT ON TABLE meta.deliveries IS 'One row per delivery folder seen in the landing zone: loaded or rejected (with the reason).';
COMMENT ON COLUMN meta.deliveries.status IS 'loaded: in raw/staging/quarantine; rejected (breaks the contract) or held (possible direct identifiers): nothing from it was kept.';

CREATE TABLE IF NOT EXISTS meta.delivery_events (
    delivery_id VARCHAR, event VARCHAR, manifest_sha256 VARCHAR, detail VARCHAR, occurred_at TIMESTAMPTZ
);
COMMENT ON TABLE meta.delivery_events IS 'Audit trail of every ingest attempt: loaded, replaced (corrected re-delivery), unchanged, rejected, held.';

CREATE TABLE IF NOT EXISTS meta.extra_columns (delivery_id VARCHAR, table_name VARCHAR, column_name VARCHAR);
COMMENT ON TABLE meta.extra_columns IS 'Delivered columns outside the contract (kept in raw.*.extra_columns), reported per delivery.';
COMMENT ON COLUMN meta.deliveries.validation_passed IS 'NULL: not validated yet; false: an error-severity expectation failed, so the cohort does not use it.';
COMMENT ON COLUMN meta.deliveries.data_cutoff IS 'Date up to which the delivery is a full snapshot of its site.';

CREATE TABLE IF NOT EXISTS meta.ingest_counts (
    delivery_id       VARCHAR,
    table_name        VARCHAR,
    raw_rows          BIGINT,
    staging_rows      BIGINT,
    quarantined_rows  BIGINT,
    duplicate_rows    BIGINT,
    PRIMARY KEY (delivery_id, table_name)
);
COMMENT ON TABLE meta.ingest_counts IS 'Row conservation per delivery and table: raw_rows = staging_rows + quarantined_rows + duplicate_rows.';
COMMENT ON COLUMN meta.ingest_counts.duplicate_rows IS 'Exact duplicate records removed (all contract columns equal to an earlier record).';

-- raw: as delivered, every value as text, plus where it came from.
CREATE TABLE IF NOT EXISTS raw.patients (
    delivery_id VARCHAR, source_file VARCHAR, source_record BIGINT, source_line BIGINT,
    patient_key VARCHAR, sex_at_birth VARCHAR, birth_year VARCHAR, age_90_plus VARCHAR, race VARCHAR,
    ethnicity VARCHAR, enrollment_start VARCHAR, enrollment_end VARCHAR, death_date VARCHAR,
    extra_columns JSON
);
CREATE TABLE IF NOT EXISTS raw.medications (
    delivery_id VARCHAR, source_file VARCHAR, source_record BIGINT, source_line BIGINT,
    patient_key VARCHAR, drug_name VARCHAR, rxnorm_code VARCHAR, atc_code VARCHAR, start_date VARCHAR,
    days_supply VARCHAR, end_date VARCHAR, dose_mg VARCHAR, doses_per_week VARCHAR, route VARCHAR,
    extra_columns JSON
);
CREATE TABLE IF NOT EXISTS raw.labs (
    delivery_id VARCHAR, source_file VARCHAR, source_record BIGINT, source_line BIGINT,
    patient_key VARCHAR, loinc_code VARCHAR, test_name VARCHAR, result VARCHAR, unit VARCHAR,
    collected_date VARCHAR, assay_method VARCHAR, loq VARCHAR,
    extra_columns JSON
);
CREATE TABLE IF NOT EXISTS raw.dxa (
    delivery_id VARCHAR, source_file VARCHAR, source_record BIGINT, source_line BIGINT,
    patient_key VARCHAR, scan_date VARCHAR, skeletal_site VARCHAR, laterality VARCHAR, bmd_g_cm2 VARCHAR,
    t_score VARCHAR, z_score VARCHAR, manufacturer VARCHAR, scanner_model VARCHAR,
    extra_columns JSON
);
CREATE TABLE IF NOT EXISTS raw.diagnoses (
    delivery_id VARCHAR, source_file VARCHAR, source_record BIGINT, source_line BIGINT,
    patient_key VARCHAR, icd10_code VARCHAR, diagnosis_date VARCHAR, encounter_type VARCHAR,
    extra_columns JSON
);
COMMENT ON TABLE raw.patients IS 'patients files as delivered (text), one row per record.';
COMMENT ON COLUMN raw.patients.source_record IS '1-based data record number in source_file (header excluded).';
COMMENT ON COLUMN raw.patients.source_line IS 'Line of source_file where the record starts (header = line 1); NULL for Parquet.';
COMMENT ON COLUMN raw.patients.extra_columns IS 'Delivered columns outside the contract, kept as a JSON object of text values.';
COMMENT ON TABLE raw.medications IS 'medications files as delivered (text); source_record is the 1-based data record number.';
COMMENT ON TABLE raw.labs IS 'labs files as delivered (text); source_record is the 1-based data record number.';
COMMENT ON TABLE raw.dxa IS 'dxa files as delivered (text); source_record is the 1-based data record number.';
COMMENT ON TABLE raw.diagnoses IS 'diagnoses files as delivered (text); source_record is the 1-based data record number.';

-- staging: typed, harmonized, deduplicated.
CREATE TABLE IF NOT EXISTS staging.patients (
    delivery_id VARCHAR, source_site VARCHAR, source_record BIGINT,
    patient_key VARCHAR, sex_at_birth VARCHAR, birth_year INTEGER, age_90_plus BOOLEAN,
    race VARCHAR, ethnicity VARCHAR, enrollment_start DATE, enrollment_end DATE, death_date DATE
);
COMMENT ON TABLE staging.patients IS 'Patients, typed; one row per patient_key and delivery.';
COMMENT ON COLUMN staging.patients.patient_key IS 'Opaque pseudonym, stable across deliveries of a site.';
COMMENT ON COLUMN staging.patients.birth_year IS 'Year of the date-shifted birth date; null when age_90_plus.';

CREATE TABLE IF NOT EXISTS staging.medications (
    delivery_id VARCHAR, source_site VARCHAR, source_record BIGINT,
    patient_key VARCHAR, drug_name VARCHAR, rxnorm_code VARCHAR, atc_code VARCHAR,
    ingredient VARCHAR, drug_class VARCHAR, mapped_by VARCHAR,
    start_date DATE, days_supply INTEGER, end_date DATE, end_date_derived BOOLEAN,
    dose_mg DOUBLE, doses_per_week DOUBLE, route VARCHAR
);
COMMENT ON TABLE staging.medications IS 'Dispensings, typed, mapped to ingredient and drug class (by code first, then by name).';
COMMENT ON COLUMN staging.medications.drug_class IS 'aromatase_inhibitor | testosterone | bisphosphonate | denosumab | pth_analog | glucocorticoid | NULL (not of interest).';
COMMENT ON COLUMN staging.medications.mapped_by IS 'atc | rxnorm | name: how the ingredient was recognised.';
COMMENT ON COLUMN staging.medications.end_date IS 'Last day covered, inclusive: as delivered, else start_date + days_supply - 1.';

CREATE TABLE IF NOT EXISTS staging.labs (
    delivery_id VARCHAR, source_site VARCHAR, source_record BIGINT,
    patient_key VARCHAR, loinc_code VARCHAR, test_name VARCHAR, analyte VARCHAR,
    result_raw VARCHAR, unit_raw VARCHAR, value DOUBLE, unit VARCHAR, censoring VARCHAR, loq DOUBLE,
    collected_date DATE, assay_method VARCHAR
);
COMMENT ON TABLE staging.labs IS 'Lab results in canonical units (estradiol pg/mL, testosterone ng/dL, vitamin D ng/mL, lipids mg/dL).';
COMMENT ON COLUMN staging.labs.value IS 'Result in the canonical unit; for a censored result the censoring limit (see censoring).';
COMMENT ON COLUMN staging.labs.censoring IS 'none | left (reported <x: true value below value) | right (reported >x).';
COMMENT ON COLUMN staging.labs.analyte IS 'Harmonized analyte (estradiol, testosterone, ...); NULL for tests outside the contract list.';

CREATE TABLE IF NOT EXISTS staging.dxa (
    delivery_id VARCHAR, source_site VARCHAR, source_record BIGINT,
    patient_key VARCHAR, scan_date DATE, skeletal_site VARCHAR, laterality VARCHAR,
    bmd_g_cm2 DOUBLE, sbmd_g_cm2 DOUBLE, standardized BOOLEAN,
    t_score DOUBLE, z_score DOUBLE, manufacturer VARCHAR, scanner_model VARCHAR
);
COMMENT ON TABLE staging.dxa IS 'DXA results per skeletal site and scan, with standardized BMD (sBMD) across manufacturers.';
COMMENT ON COLUMN staging.dxa.bmd_g_cm2 IS 'BMD as reported on the manufacturer scale (g/cm2).';
COMMENT ON COLUMN staging.dxa.sbmd_g_cm2 IS 'Standardized BMD (Hui 1997 spine/total hip, Lu 2001 femoral neck); NULL when no equation exists.';

CREATE TABLE IF NOT EXISTS staging.diagnoses (
    delivery_id VARCHAR, source_site VARCHAR, source_record BIGINT,
    patient_key VARCHAR, icd10_code VARCHAR, diagnosis_date DATE, encounter_type VARCHAR
);
COMMENT ON TABLE staging.diagnoses IS 'ICD-10-CM diagnoses; icd10_code normalized to upper case without the dot.';

CREATE TABLE IF NOT EXISTS staging.fractures (
    delivery_id VARCHAR, source_site VARCHAR, patient_key VARCHAR,
    fracture_date DATE, fracture_site VARCHAR, icd10_code VARCHAR, n_codes INTEGER
);
COMMENT ON TABLE staging.fractures IS 'Incident fragility fractures: initial-encounter codes only, same-site codes within 90 days of a fracture merged, pathological excluded.';

CREATE TABLE IF NOT EXISTS quarantine.rows (
    delivery_id VARCHAR, table_name VARCHAR, source_file VARCHAR, source_record BIGINT, source_line BIGINT,
    rule VARCHAR, column_name VARCHAR, original_values JSON
);
COMMENT ON TABLE quarantine.rows IS 'Every delivered record that could not go to staging: the first rule it broke, the column, and the record as delivered.';

-- The deliveries that make up the warehouse as it stood at a data cutoff: per site, the loaded and
-- validated delivery with the latest data_cutoff on or before it (then the latest extraction).
CREATE OR REPLACE MACRO meta.deliveries_as_of(cutoff) AS TABLE
    SELECT delivery_id, source_site, data_cutoff, extracted_at
    FROM meta.deliveries
    WHERE status = 'loaded' AND validation_passed AND data_cutoff <= cutoff
    QUALIFY row_number() OVER (PARTITION BY source_site ORDER BY data_cutoff DESC, extracted_at DESC) = 1;

CREATE TABLE IF NOT EXISTS meta.dq_results (
    run_id VARCHAR, delivery_id VARCHAR, table_name VARCHAR, expectation VARCHAR, column_name VARCHAR,
    category VARCHAR, severity VARCHAR, passed BOOLEAN, errored BOOLEAN, observed_value VARCHAR,
    unexpected_count BIGINT, unexpected_percent DOUBLE, example_records VARCHAR, error VARCHAR,
    validated_at TIMESTAMPTZ,
    suite VARCHAR, expectation_name VARCHAR, threshold DOUBLE, dqd_check VARCHAR, element_count BIGINT,
    data_cutoff DATE
);
COMMENT ON TABLE meta.dq_results IS 'Great Expectations results of the delivery suites (delivered_<table>, staging_<table>): one row per delivery, contract table and expectation, from the latest validation of the delivery (validating it again replaces its rows; run_id names the run).';
COMMENT ON COLUMN meta.dq_results.errored IS 'GX could not evaluate the expectation (reported apart from failed).';
COMMENT ON COLUMN meta.dq_results.example_records IS 'A few source_record numbers of failing rows (row keys, never values).';
COMMENT ON COLUMN meta.dq_results.suite IS 'Suite file expectations/<suite>.json: delivered_<table> (records as delivered) or staging_<table> (staged rows).';
COMMENT ON COLUMN meta.dq_results.expectation_name IS 'The expectation''s meta.name, stable across deliveries (trend a check over deliveries by suite + expectation_name).';
COMMENT ON COLUMN meta.dq_results.threshold IS 'Tolerated share of failing rows (GX mostly = 1 - threshold).';
COMMENT ON COLUMN meta.dq_results.dqd_check IS 'The OHDSI Data Quality Dashboard check(s) the expectation stands for.';
COMMENT ON COLUMN meta.dq_results.data_cutoff IS 'The delivery''s data cutoff (for trends over deliveries).';

-- Analyst views: the current snapshot of every site (its latest loaded, validated delivery).
CREATE SCHEMA IF NOT EXISTS latest;
CREATE OR REPLACE VIEW latest.patients AS
    SELECT t.* FROM staging.patients t JOIN meta.deliveries_as_of(DATE '9999-12-31') USING (delivery_id);
CREATE OR REPLACE VIEW latest.medications AS
    SELECT t.* FROM staging.medications t JOIN meta.deliveries_as_of(DATE '9999-12-31') USING (delivery_id);
CREATE OR REPLACE VIEW latest.labs AS
    SELECT t.* FROM staging.labs t JOIN meta.deliveries_as_of(DATE '9999-12-31') USING (delivery_id);
CREATE OR REPLACE VIEW latest.dxa AS
    SELECT t.* FROM staging.dxa t JOIN meta.deliveries_as_of(DATE '9999-12-31') USING (delivery_id);
CREATE OR REPLACE VIEW latest.diagnoses AS
    SELECT t.* FROM staging.diagnoses t JOIN meta.deliveries_as_of(DATE '9999-12-31') USING (delivery_id);
CREATE OR REPLACE VIEW latest.fractures AS
    SELECT t.* FROM staging.fractures t JOIN meta.deliveries_as_of(DATE '9999-12-31') USING (delivery_id);
COMMENT ON VIEW latest.patients IS 'staging.patients of each site''s current delivery (latest data_cutoff, then latest extraction).';
COMMENT ON VIEW latest.medications IS 'staging.medications of each site''s current delivery.';
COMMENT ON VIEW latest.labs IS 'staging.labs of each site''s current delivery.';
COMMENT ON VIEW latest.dxa IS 'staging.dxa of each site''s current delivery.';
COMMENT ON VIEW latest.diagnoses IS 'staging.diagnoses of each site''s current delivery.';
COMMENT ON VIEW latest.fractures IS 'staging.fractures of each site''s current delivery.';
