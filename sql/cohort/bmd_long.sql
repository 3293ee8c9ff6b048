-- One row per member in the BMD analysis, skeletal site and standardized scan from the baseline
-- scan to the end of follow-up, with the time since baseline spent on AI and in each estradiol tier
-- (days baseline_scan .. scan_date - 1), in years.
DELETE FROM analysis.bmd_long WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO analysis.bmd_long BY NAME
WITH members AS MATERIALIZED (
    -- pid: an integer key local to this statement, so the joins and groupings below work on one
    -- BIGINT instead of (source_site, patient_key); the strings are joined back at the end.
    SELECT row_number() OVER () AS pid, source_site, patient_key, baseline_scan_date, follow_up_end,
           age_at_index, bmi, ai_ever
    FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff') AND in_bmd_analysis
), scans AS (
    SELECT m.pid, d.skeletal_site, d.scan_date, any_value(d.manufacturer) AS manufacturer, avg(d.sbmd_g_cm2) AS sbmd_g_cm2
    FROM members m
    JOIN staging.dxa d ON d.source_site = m.source_site AND d.patient_key = m.patient_key
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')) s ON s.delivery_id = d.delivery_id
    WHERE d.standardized AND d.skeletal_site IN ('lumbar_spine', 'femoral_neck', 'total_hip')
      AND d.scan_date BETWEEN m.baseline_scan_date AND m.follow_up_end
    GROUP BY m.pid, d.skeletal_site, d.scan_date
), segments AS (
    SELECT m.pid, m.baseline_scan_date, s.segment_start, s.segment_end, s.ai_current, s.e2_tier, s.e2_tier_lcms
    FROM cohort.exposure_segments s JOIN members m USING (source_site, patient_key)
    WHERE s.data_cutoff = getvariable('data_cutoff') AND s.segment_end >= m.baseline_scan_date
), exposure AS (
    -- Exposure time depends on the scan day only, not the skeletal site: computed once per scan day.
    SELECT e.pid, e.scan_date,
           sum(e.years) FILTER (e.ai_current) AS years_on_ai,
           sum(e.years) FILTER (e.e2_tier = 'lt10') AS years_e2_lt10,
           sum(e.years) FILTER (e.e2_tier = '10_20') AS years_e2_10_20,
           sum(e.years) FILTER (e.e2_tier = '20_40') AS years_e2_20_40,
           sum(e.years) FILTER (e.e2_tier = 'ge40') AS years_e2_ge40,
           sum(e.years) FILTER (e.e2_tier = 'unknown') AS years_e2_unknown,
           sum(e.years) FILTER (e.e2_tier_lcms = 'lt10') AS years_e2_lcms_lt10,
           sum(e.years) FILTER (e.e2_tier_lcms = '10_20') AS years_e2_lcms_10_20,
           sum(e.years) FILTER (e.e2_tier_lcms = '20_40') AS years_e2_lcms_20_40,
           sum(e.years) FILTER (e.e2_tier_lcms = 'ge40') AS years_e2_lcms_ge40,
           sum(e.years) FILTER (e.e2_tier_lcms = 'unknown') AS years_e2_lcms_unknown
    FROM (
        -- a plain hash join on pid, not a LATERAL subquery (which DuckDB decorrelates with an extra
        -- grouping and join)
        SELECT c.pid, c.scan_date,
               greatest(0, least(s.segment_end, c.scan_date - 1) - greatest(s.segment_start, s.baseline_scan_date) + 1) / 365.25 AS years,
               s.ai_current, s.e2_tier, s.e2_tier_lcms
        FROM (SELECT DISTINCT pid, scan_date FROM scans) c
        JOIN segments s ON s.pid = c.pid AND s.segment_start < c.scan_date
    ) e
    GROUP BY e.pid, e.scan_date
)
SELECT getvariable('data_cutoff') AS data_cutoff, m.source_site, m.patient_key, c.skeletal_site, c.scan_date, c.manufacturer,
       (c.scan_date - m.baseline_scan_date) / 365.25 AS years_since_baseline,
       c.sbmd_g_cm2, ln(c.sbmd_g_cm2) AS log_sbmd,
       coalesce(x.years_on_ai, 0) AS years_on_ai,
       coalesce(x.years_e2_lt10, 0) AS years_e2_lt10,
       coalesce(x.years_e2_10_20, 0) AS years_e2_10_20,
       coalesce(x.years_e2_20_40, 0) AS years_e2_20_40,
       coalesce(x.years_e2_ge40, 0) AS years_e2_ge40,
       coalesce(x.years_e2_unknown, 0) AS years_e2_unknown,
       coalesce(x.years_e2_lcms_lt10, 0) AS years_e2_lcms_lt10,
       coalesce(x.years_e2_lcms_10_20, 0) AS years_e2_lcms_10_20,
       coalesce(x.years_e2_lcms_20_40, 0) AS years_e2_lcms_20_40,
       coalesce(x.years_e2_lcms_ge40, 0) AS years_e2_lcms_ge40,
       coalesce(x.years_e2_lcms_unknown, 0) AS years_e2_lcms_unknown,
       m.age_at_index, m.bmi, m.ai_ever
FROM scans c
JOIN members m USING (pid)
LEFT JOIN exposure x USING (pid, scan_date);
