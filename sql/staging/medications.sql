-- raw.medications -> typed, ingredient-mapped rows with the first rule each record breaks.
CREATE OR REPLACE TEMP TABLE typed AS
WITH src AS (
    -- one row per distinct record, exact duplicates counted (sql/staging/distinct_records.sql)
    SELECT * FROM distinct_records('raw.medications')
), parsed AS (
    SELECT s.*,
        TRY_CAST(s.start_date AS DATE) AS start_d,
        TRY_CAST(s.end_date AS DATE) AS end_d,
        TRY_CAST(s.days_supply AS INTEGER) AS days_supply_i,
        TRY_CAST(s.dose_mg AS DOUBLE) AS dose_f,
        TRY_CAST(s.doses_per_week AS DOUBLE) AS doses_per_week_f,
        p.patient_key IS NOT NULL AS known_patient
    FROM src s
    LEFT JOIN (SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')) p
        USING (patient_key)
), drugs AS (
    -- map each distinct (atc, rxnorm, name) once: by ATC (longest prefix), then RxNorm, then name
    SELECT d.atc_code, d.rxnorm_code, d.drug_name,
        coalesce(by_atc.ingredient, by_rxnorm.ingredient, by_name.ingredient) AS ingredient,
        coalesce(by_atc.drug_class, by_rxnorm.drug_class, by_name.drug_class) AS drug_class,
        CASE WHEN by_atc.ingredient IS NOT NULL THEN 'atc' WHEN by_rxnorm.ingredient IS NOT NULL THEN 'rxnorm'
             WHEN by_name.ingredient IS NOT NULL THEN 'name' END AS mapped_by
    FROM (SELECT DISTINCT atc_code, rxnorm_code, drug_name FROM src) d
    LEFT JOIN LATERAL (
        SELECT ingredient, drug_class FROM reference.drug_codes
        WHERE code_system = 'atc' AND starts_with(upper(replace(trim(d.atc_code), ' ', '')), code_prefix)
        ORDER BY length(code_prefix) DESC LIMIT 1
    ) by_atc ON true
    LEFT JOIN reference.drug_codes by_rxnorm
        ON by_rxnorm.code_system = 'rxnorm' AND by_rxnorm.code_prefix = trim(d.rxnorm_code)
    LEFT JOIN LATERAL (
        SELECT ingredient, drug_class FROM reference.drug_names
        WHERE regexp_matches(upper(d.drug_name), name_pattern) LIMIT 1
    ) by_name ON true
), mapped AS (
    SELECT parsed.*, drugs.ingredient, drugs.drug_class, drugs.mapped_by
    FROM parsed
    LEFT JOIN drugs
      ON drugs.atc_code IS NOT DISTINCT FROM parsed.atc_code AND drugs.rxnorm_code IS NOT DISTINCT FROM parsed.rxnorm_code
     AND drugs.drug_name IS NOT DISTINCT FROM parsed.drug_name
)
SELECT
    source_record, copies,
    getvariable('delivery_id') AS delivery_id, getvariable('source_site') AS source_site,
    patient_key, drug_name, rxnorm_code, atc_code, ingredient, drug_class, mapped_by,
    start_d AS start_date, days_supply_i AS days_supply,
    coalesce(end_d, start_d + days_supply_i - 1) AS end_date,
    end_d IS NULL AND days_supply_i IS NOT NULL AS end_date_derived,
    dose_f AS dose_mg, doses_per_week_f AS doses_per_week, route,
    -- the first rule the record breaks ("rule:column"), in priority order; NULL when it breaks none
    coalesce(
        CASE WHEN patient_key IS NULL THEN 'missing_value:patient_key'
             WHEN NOT known_patient THEN 'orphan_patient_key:patient_key' END,
        CASE WHEN drug_name IS NULL THEN 'missing_value:drug_name' END,
        CASE WHEN start_date IS NULL THEN 'missing_value:start_date'
             WHEN start_d IS NULL THEN 'invalid_date:start_date'
             WHEN start_d > getvariable('data_cutoff') THEN 'after_data_cutoff:start_date' END,
        CASE WHEN end_date IS NOT NULL AND end_d IS NULL THEN 'invalid_date:end_date'
             WHEN end_d < start_d THEN 'end_before_start:end_date' END,
        CASE WHEN days_supply IS NOT NULL AND days_supply_i IS NULL THEN 'invalid_integer:days_supply'
             WHEN days_supply_i <= 0 OR days_supply_i > 730 THEN 'implausible_value:days_supply' END,
        CASE WHEN dose_mg IS NOT NULL AND (dose_f IS NULL OR NOT isfinite(dose_f)) THEN 'invalid_number:dose_mg'
             WHEN dose_f < 0 THEN 'implausible_value:dose_mg' END,
        CASE WHEN doses_per_week IS NOT NULL AND (doses_per_week_f IS NULL OR NOT isfinite(doses_per_week_f)) THEN 'invalid_number:doses_per_week'
             WHEN doses_per_week_f < 0 THEN 'implausible_value:doses_per_week' END
    ) AS violation
FROM mapped;
