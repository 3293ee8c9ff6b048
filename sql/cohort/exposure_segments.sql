-- Time-varying exposure of every member, as calendar-day segments over which current AI, estradiol
-- tier and glucocorticoid use are all constant: from the earlier of baseline scan and index to the
-- end of follow-up. A segment starts wherever any of them may change (an AI episode or glucocorticoid
-- supply starting or ending, an estradiol result arriving or ageing out of the lookback: a result
-- collected on day r counts on days r .. r + lookback - 1).
DELETE FROM cohort.exposure_segments WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO cohort.exposure_segments
WITH members AS (
    SELECT source_site, patient_key, least(coalesce(baseline_scan_date, index_date), index_date) AS range_start,
           follow_up_end AS range_end
    FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')
), ai AS (
    SELECT source_site, patient_key, episode_start, episode_end, ingredients, mean_dose_mg
    FROM cohort.ai_episodes WHERE data_cutoff = getvariable('data_cutoff')
), glucocorticoids AS (
    SELECT m.source_site, m.patient_key, m.start_date,
           coalesce(m.end_date, m.start_date + getvariable('default_days_supply') - 1) AS end_date
    FROM staging.medications m
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')) USING (delivery_id)
    WHERE m.drug_class = 'glucocorticoid'
), estradiol AS (
    SELECT * FROM cohort.estradiol_results WHERE data_cutoff = getvariable('data_cutoff')
), changes AS (
    SELECT source_site, patient_key, range_start AS day FROM members
    UNION SELECT source_site, patient_key, range_end + 1 FROM members
    UNION SELECT source_site, patient_key, episode_start FROM ai
    UNION SELECT source_site, patient_key, episode_end + 1 FROM ai
    UNION SELECT source_site, patient_key, start_date FROM glucocorticoids
    UNION SELECT source_site, patient_key, end_date + 1 FROM glucocorticoids
    UNION SELECT source_site, patient_key, collected_date FROM estradiol
    UNION SELECT source_site, patient_key, collected_date + getvariable('e2_lookback_days') FROM estradiol
), boundaries AS (
    SELECT c.source_site, c.patient_key, c.day AS segment_start,
           lead(c.day) OVER (PARTITION BY c.source_site, c.patient_key ORDER BY c.day) - 1 AS segment_end
    FROM changes c JOIN members m USING (source_site, patient_key)
    WHERE c.day BETWEEN m.range_start AND m.range_end + 1
), segments AS (
    SELECT * FROM boundaries WHERE segment_end IS NOT NULL
), with_ai AS (
    SELECT s.*, a.ingredients AS ai_drug, a.mean_dose_mg AS ai_dose_mg
    FROM segments s
    LEFT JOIN ai a ON a.source_site = s.source_site AND a.patient_key = s.patient_key
                  AND s.segment_start BETWEEN a.episode_start AND a.episode_end
), with_gc AS (
    SELECT w.source_site, w.patient_key, w.segment_start, w.segment_end, w.ai_drug, w.ai_dose_mg,
           count(g.start_date) > 0 AS glucocorticoid_current
    FROM with_ai w
    LEFT JOIN glucocorticoids g ON g.source_site = w.source_site AND g.patient_key = w.patient_key
                               AND w.segment_start BETWEEN g.start_date AND g.end_date
    GROUP BY ALL
), with_e2 AS (
    SELECT w.*, CASE WHEN w.segment_start - e.collected_date < getvariable('e2_lookback_days') THEN e.e2_tier END AS e2_tier
    FROM with_gc w
    ASOF LEFT JOIN (SELECT * FROM estradiol WHERE NOT lcms_only) e
        ON e.source_site = w.source_site AND e.patient_key = w.patient_key AND w.segment_start >= e.collected_date
)
SELECT getvariable('data_cutoff'), w.source_site, w.patient_key, w.segment_start, w.segment_end,
       w.ai_drug IS NOT NULL, w.ai_drug, w.ai_dose_mg,
       coalesce(w.e2_tier, 'unknown'),
       coalesce(CASE WHEN w.segment_start - e.collected_date < getvariable('e2_lookback_days') THEN e.e2_tier END, 'unknown'),
       w.glucocorticoid_current
FROM with_e2 w
ASOF LEFT JOIN (SELECT * FROM estradiol WHERE lcms_only) e
    ON e.source_site = w.source_site AND e.patient_key = w.patient_key AND w.segment_start >= e.collected_date;
