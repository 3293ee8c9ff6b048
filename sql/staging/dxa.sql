-- raw.dxa -> typed scans with standardized BMD (sBMD); the raw manufacturer-scale value is kept.
CREATE OR REPLACE TEMP TABLE typed AS
WITH src AS (
    -- one row per distinct record, exact duplicates counted (sql/staging/distinct_records.sql)
    SELECT * FROM distinct_records('raw.dxa')
), parsed AS (
    SELECT s.*,
        TRY_CAST(s.scan_date AS DATE) AS scan_d,
        TRY_CAST(s.bmd_g_cm2 AS DOUBLE) AS bmd_f,
        TRY_CAST(s.t_score AS DOUBLE) AS t_f,
        TRY_CAST(s.z_score AS DOUBLE) AS z_f,
        lower(trim(s.skeletal_site)) AS site_norm,
        CASE lower(replace(replace(trim(s.manufacturer), ' ', ''), '_', ''))
            WHEN 'hologic' THEN 'Hologic' WHEN 'gelunar' THEN 'GE Lunar' WHEN 'lunar' THEN 'GE Lunar'
            WHEN 'norland' THEN 'Norland' ELSE trim(s.manufacturer) END AS manufacturer_norm,
        p.patient_key IS NOT NULL AS known_patient
    FROM src s
    LEFT JOIN (SELECT DISTINCT patient_key FROM staging.patients WHERE delivery_id = getvariable('delivery_id')) p
        USING (patient_key)
)
SELECT
    source_record, copies,
    getvariable('delivery_id') AS delivery_id, getvariable('source_site') AS source_site,
    patient_key, scan_d AS scan_date, site_norm AS skeletal_site, lower(trim(laterality)) AS laterality,
    bmd_f AS bmd_g_cm2,
    e.slope * (bmd_f - e.bmd_offset) + e.intercept AS sbmd_g_cm2,
    e.slope IS NOT NULL AS standardized,
    t_f AS t_score, z_f AS z_score, manufacturer_norm AS manufacturer, scanner_model,
    -- the first rule the record breaks ("rule:column"), in priority order; NULL when it breaks none
    coalesce(
        CASE WHEN patient_key IS NULL THEN 'missing_value:patient_key'
             WHEN NOT known_patient THEN 'orphan_patient_key:patient_key' END,
        CASE WHEN scan_date IS NULL THEN 'missing_value:scan_date'
             WHEN scan_d IS NULL THEN 'invalid_date:scan_date'
             WHEN scan_d > getvariable('data_cutoff') THEN 'after_data_cutoff:scan_date' END,
        CASE WHEN skeletal_site IS NULL THEN 'missing_value:skeletal_site'
             WHEN site_norm NOT IN ('lumbar_spine', 'femoral_neck', 'total_hip', 'radius_33') THEN 'invalid_code:skeletal_site' END,
        CASE WHEN laterality IS NOT NULL AND lower(trim(laterality)) NOT IN ('left', 'right') THEN 'invalid_code:laterality' END,
        CASE WHEN bmd_g_cm2 IS NULL THEN 'missing_value:bmd_g_cm2'
             WHEN bmd_f IS NULL OR NOT isfinite(bmd_f) THEN 'invalid_number:bmd_g_cm2'
             WHEN bmd_f <= 0 OR bmd_f > 3 THEN 'implausible_value:bmd_g_cm2' END,
        CASE WHEN t_score IS NOT NULL AND (t_f IS NULL OR NOT isfinite(t_f)) THEN 'invalid_number:t_score'
             WHEN abs(t_f) > 10 THEN 'implausible_value:t_score' END,
        CASE WHEN z_score IS NOT NULL AND (z_f IS NULL OR NOT isfinite(z_f)) THEN 'invalid_number:z_score'
             WHEN abs(z_f) > 10 THEN 'implausible_value:z_score' END,
        CASE WHEN manufacturer IS NULL THEN 'missing_value:manufacturer' END
    ) AS violation
FROM parsed
LEFT JOIN (SELECT skeletal_site AS equation_site, manufacturer AS equation_manufacturer, slope, bmd_offset, intercept
           FROM reference.sbmd_equations) e
    ON e.equation_site = parsed.site_norm AND e.equation_manufacturer = parsed.manufacturer_norm;
