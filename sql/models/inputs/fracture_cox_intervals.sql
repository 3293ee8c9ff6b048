-- The counting-process rows of the Cox models (analysis.fracture_intervals) by patient_id of
-- fracture_cox_members (run fracture_cox_members.sql first). Estradiol tiers and events come as
-- small integer codes, their 0-based positions in getvariable('e2_tiers') and getvariable('events')
-- (cohort/fracture.py: E2_TIER_ORDER, EVENT_CODES), so Python builds categoricals without a string
-- per row; a missing tier stays NULL, a missing event is code 0 (censored).
SELECT p.patient_id, i.start_day, i.stop_day, i.ai_current, i.ai_ever, i.glucocorticoid_current,
       (list_position(getvariable('e2_tiers'), i.e2_tier) - 1)::TINYINT AS e2_code,
       (list_position(getvariable('e2_tiers'), i.e2_tier_lcms) - 1)::TINYINT AS e2_lcms_code,
       coalesce(list_position(getvariable('events'), i.event) - 1, 0)::TINYINT AS event_code
FROM analysis.fracture_intervals i
JOIN fracture_cox_members p USING (source_site, patient_key)
WHERE i.data_cutoff = getvariable('data_cutoff')
ORDER BY p.patient_id, i.start_day;
