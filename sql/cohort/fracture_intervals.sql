-- Counting-process rows for the time-varying fracture model: each member's follow-up (index, end]
-- in days since index, split where current AI, estradiol tier or glucocorticoid use changes. A
-- covariate's value on day d of follow-up is its value on calendar day index + d, so the row
-- (start_day, stop_day] covers days start_day + 1 .. stop_day; the event, if any, happens at the
-- member's last stop_day.
--
-- The rows are the member's exposure segments clipped to follow-up: a segment starts only where
-- something changes (sql/cohort/exposure_segments.sql), and "AI ever" turns true only on the day an
-- AI episode starts (or from index), so no two adjacent rows have the same exposure.
DELETE FROM analysis.fracture_intervals WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO analysis.fracture_intervals
SELECT getvariable('data_cutoff'), m.source_site, m.patient_key,
       (greatest(s.segment_start, m.index_date + 1) - m.index_date - 1)::INTEGER AS start_day,
       (least(s.segment_end, m.follow_up_end) - m.index_date)::INTEGER AS stop_day,
       s.ai_current,
       m.first_ai_date IS NOT NULL AND greatest(s.segment_start, m.index_date + 1) >= m.first_ai_date AS ai_ever,
       s.ai_drug, s.ai_dose_mg, s.e2_tier, s.e2_tier_lcms, s.glucocorticoid_current,
       CASE WHEN s.segment_end >= m.follow_up_end AND m.follow_up_end_reason IN ('fracture', 'death')
            THEN m.follow_up_end_reason ELSE 'censored' END AS event
FROM cohort.exposure_segments s
JOIN cohort.members m USING (data_cutoff, source_site, patient_key)
WHERE s.data_cutoff = getvariable('data_cutoff')
  AND s.segment_end > m.index_date AND s.segment_start <= m.follow_up_end;
