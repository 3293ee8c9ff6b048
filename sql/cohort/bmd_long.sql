-- One row per member in the BMD analysis, skeletal site and standardized scan from the baseline
-- scan to the end of follow-up, with the time since baseline spent on AI and in each estradiol tier
-- (days baseline_scan .. scan_date - 1), in years.
DELETE FROM analysis.bmd_long WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO analysis.bmd_long BY NAME
WITH members AS (
    SELECT * FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff') AND in_bmd_analysis
), scans AS (
    SELECT m.source_site, m.patient_key, m.baseline_scan_date, m.age_at_index, m.bmi, m.ai_ever,
           d.skeletal_site, d.scan_date, any_value(d.manufacturer) AS manufacturer, avg(d.sbmd_g_cm2) AS sbmd_g_cm2
    FROM members m
    JOIN staging.dxa d ON d.source_site = m.source_site AND d.patient_key = m.patient_key
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')) s ON s.delivery_id = d.delivery_id
    WHERE d.standardized AND d.skeletal_site IN ('lumbar_spine', 'femoral_neck', 'total_hip')
      AND d.scan_date BETWEEN m.baseline_scan_date AND m.follow_up_end
    GROUP BY ALL
), exposure AS (
    SELECT c.source_site, c.patient_key, c.skeletal_site, c.scan_date,
           greatest(0, least(s.segment_end, c.scan_date - 1) - greatest(s.segment_start, c.baseline_scan_date) + 1) / 365.25 AS years,
           s.ai_current, s.e2_tier, s.e2_tier_lcms
    FROM scans c
    JOIN cohort.exposure_segments s
      ON s.data_cutoff = getvariable('data_cutoff') AND s.source_site = c.source_site AND s.patient_key = c.patient_key
     AND s.segment_end >= c.baseline_scan_date AND s.segment_start < c.scan_date
)
SELECT getvariable('data_cutoff') AS data_cutoff, c.source_site, c.patient_key, c.skeletal_site, c.scan_date, c.manufacturer,
       (c.scan_date - c.baseline_scan_date) / 365.25 AS years_since_baseline,
       c.sbmd_g_cm2, ln(c.sbmd_g_cm2) AS log_sbmd,
       coalesce(sum(e.years) FILTER (e.ai_current), 0) AS years_on_ai,
       coalesce(sum(e.years) FILTER (e.e2_tier = 'lt10'), 0) AS years_e2_lt10,
       coalesce(sum(e.years) FILTER (e.e2_tier = '10_20'), 0) AS years_e2_10_20,
       coalesce(sum(e.years) FILTER (e.e2_tier = '20_40'), 0) AS years_e2_20_40,
       coalesce(sum(e.years) FILTER (e.e2_tier = 'ge40'), 0) AS years_e2_ge40,
       coalesce(sum(e.years) FILTER (e.e2_tier = 'unknown'), 0) AS years_e2_unknown,
       coalesce(sum(e.years) FILTER (e.e2_tier_lcms = 'lt10'), 0) AS years_e2_lcms_lt10,
       coalesce(sum(e.years) FILTER (e.e2_tier_lcms = '10_20'), 0) AS years_e2_lcms_10_20,
       coalesce(sum(e.years) FILTER (e.e2_tier_lcms = '20_40'), 0) AS years_e2_lcms_20_40,
       coalesce(sum(e.years) FILTER (e.e2_tier_lcms = 'ge40'), 0) AS years_e2_lcms_ge40,
       coalesce(sum(e.years) FILTER (e.e2_tier_lcms = 'unknown'), 0) AS years_e2_lcms_unknown,
       c.age_at_index, c.bmi, c.ai_ever
FROM scans c
LEFT JOIN exposure e USING (source_site, patient_key, skeletal_site, scan_date)
GROUP BY ALL;
