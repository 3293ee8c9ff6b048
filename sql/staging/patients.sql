-- raw.patients -> typed rows with the first rule each record breaks ("rule:column", in priority order).
CREATE OR REPLACE TEMP TABLE typed AS
WITH src AS (
    -- one row per distinct record, exact duplicates counted (sql/staging/distinct_records.sql)
    SELECT * FROM distinct_records('raw.patients')
), parsed AS (
    SELECT source_record, copies, patient_key, sex_at_birth, race, ethnicity,
        TRY_CAST(birth_year AS INTEGER) AS birth_year_int, birth_year AS birth_year_txt,
        coalesce(TRY_CAST(age_90_plus AS BOOLEAN), false) AS age_90_plus_bool, age_90_plus AS age_90_plus_txt,
        TRY_CAST(enrollment_start AS DATE) AS enrollment_start_d, enrollment_start AS enrollment_start_txt,
        TRY_CAST(enrollment_end AS DATE) AS enrollment_end_d, enrollment_end AS enrollment_end_txt,
        TRY_CAST(death_date AS DATE) AS death_date_d, death_date AS death_date_txt,
        count(*) OVER (PARTITION BY patient_key) AS versions
    FROM src
)
SELECT
    source_record, copies,
    getvariable('delivery_id') AS delivery_id, getvariable('source_site') AS source_site,
    patient_key, sex_at_birth, birth_year_int AS birth_year, age_90_plus_bool AS age_90_plus, race, ethnicity,
    enrollment_start_d AS enrollment_start, enrollment_end_d AS enrollment_end, death_date_d AS death_date,
    -- the first rule the record breaks ("rule:column"), in priority order; NULL when it breaks none
    coalesce(
        CASE WHEN patient_key IS NULL THEN 'missing_value:patient_key'
             WHEN NOT regexp_full_match(patient_key, '[A-Za-z0-9_-]{8,64}') THEN 'invalid_patient_key:patient_key' END,
        CASE WHEN versions > 1 THEN 'conflicting_duplicate_key:patient_key' END,
        CASE WHEN sex_at_birth IS NULL THEN 'missing_value:sex_at_birth'
             WHEN sex_at_birth NOT IN ('M', 'F', 'U') THEN 'invalid_code:sex_at_birth' END,
        CASE WHEN age_90_plus_txt IS NOT NULL AND TRY_CAST(age_90_plus_txt AS BOOLEAN) IS NULL THEN 'invalid_boolean:age_90_plus' END,
        CASE WHEN birth_year_txt IS NOT NULL AND birth_year_int IS NULL THEN 'invalid_integer:birth_year'
             WHEN birth_year_int IS NULL AND NOT age_90_plus_bool THEN 'missing_value:birth_year'
             WHEN birth_year_int < 1900 OR birth_year_int > year(getvariable('data_cutoff')) THEN 'implausible_value:birth_year' END,
        CASE WHEN enrollment_start_txt IS NULL THEN 'missing_value:enrollment_start'
             WHEN enrollment_start_d IS NULL THEN 'invalid_date:enrollment_start' END,
        CASE WHEN enrollment_end_txt IS NULL THEN 'missing_value:enrollment_end'
             WHEN enrollment_end_d IS NULL THEN 'invalid_date:enrollment_end'
             WHEN enrollment_end_d > getvariable('data_cutoff') THEN 'after_data_cutoff:enrollment_end'
             WHEN enrollment_end_d < enrollment_start_d THEN 'end_before_start:enrollment_end' END,
        CASE WHEN death_date_txt IS NOT NULL AND death_date_d IS NULL THEN 'invalid_date:death_date'
             WHEN death_date_d > getvariable('data_cutoff') THEN 'after_data_cutoff:death_date' END
    ) AS violation
FROM parsed;
