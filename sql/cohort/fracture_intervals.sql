-- Counting-process rows for the time-varying fracture model: each member's follow-up (index, end]
-- in days since index, split where current AI, estradiol tier or glucocorticoid use changes
-- (adjacent segments with the same exposure are merged). A covariate's value on day d of follow-up
-- is its value on calendar day index + d, so the row (start_day, stop_day] covers days
-- start_day + 1 .. stop_day; the event, if any, happens at the member's last stop_day.
--
-- Speed (issue #6): a member's segments are contiguous (each starts the day after the previous one
-- ends), so a segment's successor is found by a hash self-join on the day instead of a lag window
-- over all segments; only the run boundaries (about 2/3 of the segments) then go through one window.
DELETE FROM analysis.fracture_intervals WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO analysis.fracture_intervals
WITH members AS MATERIALIZED (
    -- pid: an integer key local to this statement, so the joins and the window below use one BIGINT
    -- instead of (source_site, patient_key); the strings are joined back at the end.
    SELECT row_number() OVER () AS pid, source_site, patient_key, index_date, first_ai_date, follow_up_end,
           follow_up_end_reason
    FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')
), clipped AS MATERIALIZED (
    SELECT m.pid, m.index_date,
           greatest(s.segment_start, m.index_date + 1) AS first_day, least(s.segment_end, m.follow_up_end) AS last_day,
           s.ai_current, s.ai_drug, s.ai_dose_mg, s.e2_tier, s.e2_tier_lcms, s.glucocorticoid_current,
           m.first_ai_date IS NOT NULL AND greatest(s.segment_start, m.index_date + 1) >= m.first_ai_date AS ai_ever
    FROM cohort.exposure_segments s
    JOIN members m USING (source_site, patient_key)
    WHERE s.data_cutoff = getvariable('data_cutoff')
      AND s.segment_end > m.index_date AND s.segment_start <= m.follow_up_end
), pairs AS (
    -- one full outer self-join pairs every segment with its successor (starting the day after):
    -- where their exposures differ (or either is missing) the earlier one ends a run and the later one
    -- starts one. IS NOT DISTINCT FROM as NULLs match
    SELECT p.pid AS p_pid, p.last_day AS p_last_day, n.* EXCLUDE (last_day),
           p.pid IS NOT NULL AND n.pid IS NOT NULL
               AND p.ai_current IS NOT DISTINCT FROM n.ai_current AND p.ai_ever IS NOT DISTINCT FROM n.ai_ever
               AND p.ai_drug IS NOT DISTINCT FROM n.ai_drug AND p.ai_dose_mg IS NOT DISTINCT FROM n.ai_dose_mg
               AND p.e2_tier IS NOT DISTINCT FROM n.e2_tier AND p.e2_tier_lcms IS NOT DISTINCT FROM n.e2_tier_lcms
               AND p.glucocorticoid_current IS NOT DISTINCT FROM n.glucocorticoid_current AS same
    FROM clipped p
    FULL JOIN clipped n ON n.pid = p.pid AND n.first_day = p.last_day + 1
), merged AS (
    -- boundaries only, in day order per member: a run started by one boundary ends where the next
    -- boundary ends the run before it. The last boundary (a member's last segment paired with no
    -- successor, pid NULL) only ends a run and is dropped by the join to members below.
    SELECT * EXCLUDE (p_pid, p_last_day, same),
           lead(p_last_day) OVER (PARTITION BY coalesce(pid, p_pid) ORDER BY coalesce(first_day, p_last_day + 1)) AS last_day
    FROM pairs WHERE NOT same
)
SELECT getvariable('data_cutoff'), m.source_site, m.patient_key,
       (r.first_day - r.index_date - 1)::INTEGER AS start_day,
       (r.last_day - r.index_date)::INTEGER AS stop_day,
       r.ai_current, r.ai_ever, r.ai_drug, r.ai_dose_mg, r.e2_tier, r.e2_tier_lcms, r.glucocorticoid_current,
       CASE WHEN r.last_day = m.follow_up_end AND m.follow_up_end_reason IN ('fracture', 'death')
            THEN m.follow_up_end_reason ELSE 'censored' END
FROM merged r JOIN members m ON m.pid = r.pid;
