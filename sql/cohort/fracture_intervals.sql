-- Counting-process rows for the time-varying fracture model: each member's follow-up (index, end]
-- in days since index, split where current AI, estradiol tier or glucocorticoid use changes
-- (adjacent segments with the same exposure are merged). A covariate's value on day d of follow-up
-- is its value on calendar day index + d, so the row (start_day, stop_day] covers days
-- start_day + 1 .. stop_day; the event, if any, happens at the member's last stop_day.
DELETE FROM analysis.fracture_intervals WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO analysis.fracture_intervals
WITH clipped AS (
    SELECT s.source_site, s.patient_key, m.index_date, m.first_ai_date, m.follow_up_end, m.follow_up_end_reason,
           greatest(s.segment_start, m.index_date + 1) AS first_day, least(s.segment_end, m.follow_up_end) AS last_day,
           s.ai_current, s.ai_drug, s.ai_dose_mg, s.e2_tier, s.e2_tier_lcms, s.glucocorticoid_current,
           m.first_ai_date IS NOT NULL AND greatest(s.segment_start, m.index_date + 1) >= m.first_ai_date AS ai_ever
    FROM cohort.exposure_segments s
    JOIN cohort.members m USING (data_cutoff, source_site, patient_key)
    WHERE s.data_cutoff = getvariable('data_cutoff')
      AND s.segment_end > m.index_date AND s.segment_start <= m.follow_up_end
), runs AS (
    -- gaps and islands: a new run starts where any exposure differs from the previous segment
    SELECT *, sum(changed) OVER (PARTITION BY source_site, patient_key ORDER BY first_day ROWS UNBOUNDED PRECEDING) AS run
    FROM (
        SELECT *, CASE WHEN (ai_current, ai_ever, ai_drug, ai_dose_mg, e2_tier, e2_tier_lcms, glucocorticoid_current)
                            IS NOT DISTINCT FROM lag((ai_current, ai_ever, ai_drug, ai_dose_mg, e2_tier, e2_tier_lcms, glucocorticoid_current))
                            OVER (PARTITION BY source_site, patient_key ORDER BY first_day)
                       THEN 0 ELSE 1 END AS changed
        FROM clipped
    )
)
SELECT getvariable('data_cutoff'), source_site, patient_key,
       (min(first_day) - any_value(index_date) - 1)::INTEGER AS start_day,
       (max(last_day) - any_value(index_date))::INTEGER AS stop_day,
       any_value(ai_current), any_value(ai_ever), any_value(ai_drug), any_value(ai_dose_mg),
       any_value(e2_tier), any_value(e2_tier_lcms), any_value(glucocorticoid_current),
       CASE WHEN max(last_day) = any_value(follow_up_end) AND any_value(follow_up_end_reason) IN ('fracture', 'death')
            THEN any_value(follow_up_end_reason) ELSE 'censored' END
FROM runs
GROUP BY source_site, patient_key, run;
