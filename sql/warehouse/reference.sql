-- Code lists and conversion factors (sql/reference/*.csv), reloaded on every ingest so that
-- editing a CSV is all it takes to change a mapping.
CREATE OR REPLACE TABLE reference.drug_codes AS
    SELECT * FROM read_csv(getvariable('reference_dir') || '/drug_codes.csv', header = true, all_varchar = true);
CREATE OR REPLACE TABLE reference.drug_names AS
    SELECT * FROM read_csv(getvariable('reference_dir') || '/drug_names.csv', header = true, all_varchar = true);
CREATE OR REPLACE TABLE reference.lab_codes AS
    SELECT * FROM read_csv(getvariable('reference_dir') || '/lab_codes.csv', header = true, all_varchar = true);
CREATE OR REPLACE TABLE reference.lab_names AS
    SELECT * FROM read_csv(getvariable('reference_dir') || '/lab_names.csv', header = true, all_varchar = true);
CREATE OR REPLACE TABLE reference.lab_units AS
    SELECT analyte, unit_normalized, canonical_unit, factor::DOUBLE AS factor,
           min_plausible::DOUBLE AS min_plausible, max_plausible::DOUBLE AS max_plausible
    FROM read_csv(getvariable('reference_dir') || '/lab_units.csv', header = true, all_varchar = true);
CREATE OR REPLACE TABLE reference.fracture_codes AS
    SELECT * FROM read_csv(getvariable('reference_dir') || '/fracture_codes.csv', header = true, all_varchar = true);
CREATE OR REPLACE TABLE reference.sbmd_equations AS
    SELECT skeletal_site, manufacturer, slope::DOUBLE AS slope, bmd_offset::DOUBLE AS bmd_offset,
           intercept::DOUBLE AS intercept
    FROM read_csv(getvariable('reference_dir') || '/sbmd_equations.csv', header = true, all_varchar = true);
COMMENT ON TABLE reference.drug_codes IS 'Drugs of interest by ATC (prefix) or RxNorm code; from sql/reference/drug_codes.csv.';
COMMENT ON TABLE reference.drug_names IS 'Name patterns (regex on upper-case drug_name) used when no code matches.';
COMMENT ON TABLE reference.lab_codes IS 'Analyte by LOINC code; from sql/reference/lab_codes.csv.';
COMMENT ON TABLE reference.lab_names IS 'Analyte by test-name pattern (regex on the upper-cased name) when the LOINC code is missing or unknown.';
COMMENT ON TABLE reference.lab_units IS 'Unit conversion to canonical units and plausible range per analyte (canonical unit).';
COMMENT ON TABLE reference.fracture_codes IS 'ICD-10-CM prefixes (no dot) of fragility fractures; the longest matching prefix gives the site.';
COMMENT ON TABLE reference.sbmd_equations IS 'sBMD = slope * (bmd - bmd_offset) + intercept (Hui 1997, Lu 2001).';
