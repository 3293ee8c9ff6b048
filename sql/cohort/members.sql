-- The study cohort and its attrition for one data cutoff (protocol: sql/cohort/protocol.toml).
-- Every candidate carries one flag per protocol step; a member passes them all, and the attrition
-- table counts, step by step in protocol order, who remains.
CREATE OR REPLACE TEMP TABLE candidates AS
-- Every CTE joined below holds at most one row per patient (labs pivoted, outcomes aggregated per
-- source table), so the candidates need no final GROUP BY over the wide joined rows (speed, issue #6).
WITH snapshot AS (
    SELECT delivery_id FROM meta.deliveries_as_of(getvariable('data_cutoff'))
), patients AS (
    -- DISTINCT: identical duplicate patient rows count once, as the former GROUP BY on these columns did
    SELECT DISTINCT p.source_site, p.patient_key, p.age_90_plus, p.birth_year, p.death_date, p.enrollment_end,
           p.enrollment_start, p.sex_at_birth
    FROM staging.patients p JOIN snapshot USING (delivery_id)
), medications AS (
    SELECT m.* FROM staging.medications m JOIN snapshot USING (delivery_id)
), first_trt AS (
    SELECT source_site, patient_key, min(start_date) AS index_date
    FROM medications WHERE drug_class = 'testosterone' GROUP BY ALL
), labs AS (
    SELECT l.source_site, l.patient_key, l.analyte, l.value, l.collected_date
    FROM staging.labs l JOIN snapshot USING (delivery_id)
    WHERE l.analyte IN ('bmi', 'vitamin_d', 'testosterone', 'estradiol') AND l.censoring = 'none'
), baseline_labs AS (
    -- Closest result to index within [-lab_days_before, +lab_days_after]; ties go to the earlier one:
    -- the key 2 * distance + (after index) orders by distance, then day, as the tuple (distance, day)
    -- would, but as one integer (comparing tuples cost 0.7 s of this file's 13 s at 1M patients).
    SELECT t.source_site, t.patient_key,
           arg_min(l.value, 2 * abs(l.collected_date - t.index_date) + (l.collected_date > t.index_date)::INTEGER) FILTER (l.analyte = 'bmi') AS bmi,
           arg_min(l.value, 2 * abs(l.collected_date - t.index_date) + (l.collected_date > t.index_date)::INTEGER) FILTER (l.analyte = 'vitamin_d') AS vitamin_d_ng_ml,
           arg_min(l.value, 2 * abs(l.collected_date - t.index_date) + (l.collected_date > t.index_date)::INTEGER) FILTER (l.analyte = 'testosterone') AS testosterone_ng_dl,
           arg_min(l.value, 2 * abs(l.collected_date - t.index_date) + (l.collected_date > t.index_date)::INTEGER) FILTER (l.analyte = 'estradiol') AS estradiol_pg_ml
    FROM first_trt t JOIN labs l USING (source_site, patient_key)
    WHERE l.collected_date BETWEEN t.index_date - getvariable('lab_days_before') AND t.index_date + getvariable('lab_days_after')
    GROUP BY t.source_site, t.patient_key
), scans AS (
    -- Only scans in the baseline window around index can be (or lie on the day of) the baseline
    -- scan: filtering before the grouping leaves about a third of the DXA rows to group (speed, issue #6).
    SELECT d.source_site, d.patient_key, t.index_date, d.scan_date, d.skeletal_site, avg(d.sbmd_g_cm2) AS sbmd,
           any_value(d.manufacturer) AS manufacturer
    FROM staging.dxa d JOIN snapshot USING (delivery_id) JOIN first_trt t USING (source_site, patient_key)
    WHERE d.standardized
      AND d.scan_date BETWEEN t.index_date - getvariable('baseline_scan_days_before')
                          AND t.index_date + getvariable('baseline_scan_days_after')
    GROUP BY ALL
), baseline_scan AS (
    SELECT s.source_site, s.patient_key,
           arg_min(s.scan_date, 2 * abs(s.scan_date - s.index_date) + (s.scan_date > s.index_date)::INTEGER) AS baseline_scan_date
    FROM scans s
    GROUP BY ALL
), baseline_bmd AS (
    SELECT b.source_site, b.patient_key, b.baseline_scan_date,
           any_value(s.manufacturer) AS scanner_manufacturer,
           max(s.sbmd) FILTER (s.skeletal_site = 'lumbar_spine') AS sbmd_lumbar_spine,
           max(s.sbmd) FILTER (s.skeletal_site = 'femoral_neck') AS sbmd_femoral_neck,
           max(s.sbmd) FILTER (s.skeletal_site = 'total_hip') AS sbmd_total_hip
    FROM baseline_scan b JOIN scans s
      ON s.source_site = b.source_site AND s.patient_key = b.patient_key AND s.scan_date = b.baseline_scan_date
    GROUP BY ALL
), fracture_outcomes AS (
    -- first fracture after index, and any in the lookback up to and including index
    SELECT t.source_site, t.patient_key,
           min(f.fracture_date) FILTER (f.fracture_date > t.index_date) AS fracture_date,
           bool_or(f.fracture_date BETWEEN t.index_date - getvariable('prior_fracture_days') AND t.index_date) AS prior_fracture
    FROM first_trt t JOIN staging.fractures f USING (source_site, patient_key) JOIN snapshot s ON s.delivery_id = f.delivery_id
    GROUP BY t.source_site, t.patient_key
), bone_drug_outcomes AS (
    -- first bone-active drug after index, and any on or before it
    SELECT t.source_site, t.patient_key,
           min(b.start_date) FILTER (b.start_date > t.index_date) AS bone_active_drug_date,
           bool_or(b.start_date <= t.index_date) AS prior_bone_drug
    FROM first_trt t JOIN medications b USING (source_site, patient_key)
    WHERE b.drug_class IN (SELECT unnest(getvariable('bone_active_drug_classes')))
    GROUP BY t.source_site, t.patient_key
), glucocorticoid_outcomes AS (
    SELECT t.source_site, t.patient_key,
           bool_or(t.index_date BETWEEN g.start_date
                   AND coalesce(g.end_date, g.start_date + getvariable('default_days_supply') - 1)) AS glucocorticoid_at_index
    FROM first_trt t JOIN medications g USING (source_site, patient_key)
    WHERE g.drug_class = 'glucocorticoid'
    GROUP BY t.source_site, t.patient_key
), e2_at_index AS (
    -- the tier at index: the latest estradiol day in the lookback up to and including index
    SELECT t.source_site, t.patient_key, arg_max(e.e2_tier, e.collected_date) AS e2_tier
    FROM first_trt t JOIN cohort.estradiol_results e USING (source_site, patient_key)
    WHERE e.data_cutoff = getvariable('data_cutoff') AND NOT e.lcms_only
      AND e.collected_date BETWEEN t.index_date - getvariable('e2_lookback_days') + 1 AND t.index_date
    GROUP BY ALL
)
SELECT
    p.source_site, p.patient_key, t.index_date,
    CASE WHEN p.age_90_plus THEN 90 ELSE year(t.index_date) - p.birth_year END AS age_at_index,
    bl.bmi, bl.vitamin_d_ng_ml, bl.testosterone_ng_dl, bl.estradiol_pg_ml,
    -- as the former EXISTS: false for a testosterone user without a match, NULL for a non-user
    CASE WHEN t.patient_key IS NOT NULL THEN coalesce(g.glucocorticoid_at_index, false) END AS glucocorticoid_at_index,
    bb.baseline_scan_date, bb.scanner_manufacturer, bb.sbmd_lumbar_spine, bb.sbmd_femoral_neck, bb.sbmd_total_hip,
    coalesce(e2.e2_tier, 'unknown') AS e2_tier_at_index,
    f.fracture_date, p.death_date, b.bone_active_drug_date,
    p.enrollment_end,
    -- protocol steps
    p.sex_at_birth = getvariable('sex_at_birth') AS step_sex,
    t.index_date IS NOT NULL AS step_testosterone,
    t.index_date - p.enrollment_start >= getvariable('washout_days') AND t.index_date <= p.enrollment_end AS step_new_user,
    coalesce(CASE WHEN p.age_90_plus THEN 90 ELSE year(t.index_date) - p.birth_year END >= getvariable('min_age_at_index'), false) AS step_adult,
    NOT coalesce(b.prior_bone_drug, false) AS step_no_prior_bone_drug,
    NOT coalesce(f.prior_fracture, false) AS step_no_prior_fracture,
    coalesce(p.death_date, DATE '9999-12-31') > t.index_date AND p.enrollment_end > t.index_date
        AND getvariable('data_cutoff') > t.index_date AS step_follow_up,
    bb.baseline_scan_date IS NOT NULL AS step_baseline_scan
FROM patients p
LEFT JOIN first_trt t ON t.source_site = p.source_site AND t.patient_key = p.patient_key
LEFT JOIN baseline_labs bl ON bl.source_site = p.source_site AND bl.patient_key = p.patient_key
LEFT JOIN baseline_bmd bb ON bb.source_site = p.source_site AND bb.patient_key = p.patient_key
LEFT JOIN fracture_outcomes f ON f.source_site = p.source_site AND f.patient_key = p.patient_key
LEFT JOIN bone_drug_outcomes b ON b.source_site = p.source_site AND b.patient_key = p.patient_key
LEFT JOIN glucocorticoid_outcomes g ON g.source_site = p.source_site AND g.patient_key = p.patient_key
LEFT JOIN e2_at_index e2 ON e2.source_site = p.source_site AND e2.patient_key = p.patient_key;

DELETE FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff');
INSERT INTO cohort.members
WITH eligible AS (
    SELECT * FROM candidates
    WHERE step_sex AND step_testosterone AND step_new_user AND step_adult AND step_no_prior_bone_drug
      AND step_no_prior_fracture AND step_follow_up
), ended AS (
    SELECT e.*,
        least(e.fracture_date, e.death_date, e.bone_active_drug_date, e.enrollment_end, getvariable('data_cutoff')) AS follow_up_end
    FROM eligible e
), exposure AS (
    SELECT x.source_site, x.patient_key, min(greatest(a.episode_start, x.index_date)) AS first_ai_date
    FROM ended x JOIN cohort.ai_episodes a
      ON a.data_cutoff = getvariable('data_cutoff') AND a.source_site = x.source_site AND a.patient_key = x.patient_key
     AND a.episode_end >= x.index_date AND a.episode_start <= x.follow_up_end
    GROUP BY ALL
), follow_up_scans AS (
    SELECT x.source_site, x.patient_key, count(DISTINCT d.scan_date) AS later_scans
    FROM ended x JOIN staging.dxa d ON d.source_site = x.source_site AND d.patient_key = x.patient_key
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')) s ON s.delivery_id = d.delivery_id
    WHERE d.standardized AND d.scan_date > x.baseline_scan_date AND d.scan_date <= x.follow_up_end
    GROUP BY ALL
)
SELECT getvariable('data_cutoff'), x.source_site, x.patient_key, x.index_date, x.age_at_index, x.bmi, x.vitamin_d_ng_ml,
       x.testosterone_ng_dl, x.estradiol_pg_ml, x.glucocorticoid_at_index, x.baseline_scan_date, x.scanner_manufacturer,
       x.sbmd_lumbar_spine, x.sbmd_femoral_neck, x.sbmd_total_hip, x.e2_tier_at_index,
       x.step_baseline_scan AND (coalesce(f.later_scans, 0) > 0 OR NOT getvariable('require_follow_up_scan')) AS in_bmd_analysis,
       e.first_ai_date IS NOT NULL AS ai_ever, e.first_ai_date,
       x.fracture_date, x.death_date, x.bone_active_drug_date, x.enrollment_end, x.follow_up_end,
       CASE x.follow_up_end WHEN x.fracture_date THEN 'fracture' WHEN x.death_date THEN 'death'
            WHEN x.bone_active_drug_date THEN 'bone_active_drug' WHEN x.enrollment_end THEN 'end_of_enrollment'
            ELSE 'data_cutoff' END AS follow_up_end_reason,
       (x.follow_up_end - x.index_date)::INTEGER AS follow_up_days
FROM ended x
LEFT JOIN exposure e USING (source_site, patient_key)
LEFT JOIN follow_up_scans f USING (source_site, patient_key);

DELETE FROM cohort.attrition WHERE data_cutoff = getvariable('data_cutoff');
INSERT INTO cohort.attrition
WITH counts AS (
    SELECT 1 AS step_order, 'source_population' AS step, 'Patients in the current deliveries' AS description, count(*) AS remaining FROM candidates
    UNION ALL SELECT 2, 'sex_at_birth', 'Sex at birth as in the protocol', count(*) FILTER (step_sex) FROM candidates
    UNION ALL SELECT 3, 'testosterone_user', 'At least one testosterone dispensing',
        count(*) FILTER (step_sex AND step_testosterone) FROM candidates
    UNION ALL SELECT 4, 'new_user', 'No testosterone in the washout after enrollment start (new user)',
        count(*) FILTER (step_sex AND step_testosterone AND step_new_user) FROM candidates
    UNION ALL SELECT 5, 'adult_at_index', 'Age at index at least the protocol minimum',
        count(*) FILTER (step_sex AND step_testosterone AND step_new_user AND step_adult) FROM candidates
    UNION ALL SELECT 6, 'no_prior_bone_active_drug', 'No bone-active drug before index',
        count(*) FILTER (step_sex AND step_testosterone AND step_new_user AND step_adult AND step_no_prior_bone_drug) FROM candidates
    UNION ALL SELECT 7, 'no_prior_fracture', 'No fragility fracture in the lookback before index (index day included)',
        count(*) FILTER (step_sex AND step_testosterone AND step_new_user AND step_adult AND step_no_prior_bone_drug
                         AND step_no_prior_fracture) FROM candidates
    UNION ALL SELECT 8, 'positive_follow_up', 'Alive and enrolled after the index day: fracture analysis cohort',
        count(*) FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')
    UNION ALL SELECT 9, 'baseline_dxa', 'Baseline DXA in the window around index',
        count(*) FILTER (baseline_scan_date IS NOT NULL) FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')
    UNION ALL SELECT 10, 'follow_up_dxa', 'A later DXA during follow-up: BMD analysis cohort',
        count(*) FILTER (in_bmd_analysis) FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')
)
SELECT getvariable('data_cutoff'), step_order, step, description, remaining,
       coalesce(lag(remaining) OVER (ORDER BY step_order) - remaining, 0)
FROM counts ORDER BY step_order;
