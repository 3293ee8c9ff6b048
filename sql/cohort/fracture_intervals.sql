-- Counting-process rows for the time-varying fracture model: each member's follow-up (index, end]
-- in days since index, split where current AI, estradiol tier or glucocorticoid use changes
-- (adjacent segments with the same exposure are merged). A covariate's value on day d of follow-up
-- is its value on calendar day index + d, so the row (start_day, stop_day] covers days
-- start_day + 1 .. stop_day; the event, if any, happens at the member's last stop_day.
DELETE FROM analysis.fracture_intervals WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO analysis.fracture_intervals
WITH members AS MATERIALIZED (
    -- pid: an integer key local to this statement, so the windows and the grouping below sort one
    -- BIGINT instead of (source_site, patient_key); the strings are joined back at the end.
    SELECT row_number() OVER () AS pid, source_site, patient_key, index_date, first_ai_date, follow_up_end,
           follow_up_end_reason
    FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')
), clipped AS (
    SELECT m.pid, m.index_date,
           greatest(s.segment_start, m.index_date + 1) AS first_day, least(s.segment_end, m.follow_up_end) AS last_day,
           s.ai_current, s.ai_drug, s.ai_dose_mg, s.e2_tier, s.e2_tier_lcms, s.glucocorticoid_current,
           m.first_ai_date IS NOT NULL AND greatest(s.segment_start, m.index_date + 1) >= m.first_ai_date AS ai_ever
    FROM cohort.exposure_segments s
    JOIN members m USING (source_site, patient_key)
    WHERE s.data_cutoff = getvariable('data_cutoff')
      AND s.segment_end > m.index_date AND s.segment_start <= m.follow_up_end
), runs AS (
    -- gaps and islands: a new run starts where any exposure differs from the previous segment
    SELECT *, sum(changed) OVER (PARTITION BY pid ORDER BY first_day ROWS UNBOUNDED PRECEDING) AS run
    FROM (
        -- one lag per column (cheaper than a lag of the whole struct); IS NOT DISTINCT FROM as NULLs match
        SELECT *, CASE WHEN ai_current IS NOT DISTINCT FROM lag(ai_current) OVER w
                        AND ai_ever IS NOT DISTINCT FROM lag(ai_ever) OVER w
                        AND ai_drug IS NOT DISTINCT FROM lag(ai_drug) OVER w
                        AND ai_dose_mg IS NOT DISTINCT FROM lag(ai_dose_mg) OVER w
                        AND e2_tier IS NOT DISTINCT FROM lag(e2_tier) OVER w
                        AND e2_tier_lcms IS NOT DISTINCT FROM lag(e2_tier_lcms) OVER w
                        AND glucocorticoid_current IS NOT DISTINCT FROM lag(glucocorticoid_current) OVER w
                            -- the first segment has no predecessor: a run starts
                        AND lag(first_day) OVER w IS NOT NULL
                       THEN 0 ELSE 1 END AS changed
        FROM clipped
        WINDOW w AS (PARTITION BY pid ORDER BY first_day)
    )
), merged AS (
    SELECT pid, any_value(index_date) AS index_date, min(first_day) AS first_day, max(last_day) AS last_day,
           any_value(ai_current) AS ai_current, any_value(ai_ever) AS ai_ever, any_value(ai_drug) AS ai_drug,
           any_value(ai_dose_mg) AS ai_dose_mg, any_value(e2_tier) AS e2_tier, any_value(e2_tier_lcms) AS e2_tier_lcms,
           any_value(glucocorticoid_current) AS glucocorticoid_current
    FROM runs
    GROUP BY pid, run
)
SELECT getvariable('data_cutoff'), m.source_site, m.patient_key,
       (r.first_day - r.index_date - 1)::INTEGER AS start_day,
       (r.last_day - r.index_date)::INTEGER AS stop_day,
       r.ai_current, r.ai_ever, r.ai_drug, r.ai_dose_mg, r.e2_tier, r.e2_tier_lcms, r.glucocorticoid_current,
       CASE WHEN r.last_day = m.follow_up_end AND m.follow_up_end_reason IN ('fracture', 'death')
            THEN m.follow_up_end_reason ELSE 'censored' END
FROM merged r JOIN members m ON m.pid = r.pid;
