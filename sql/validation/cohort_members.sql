-- Validation relation of suite cohort_members: the cohort at one data cutoff, each member with
-- what the expectations compare it to: the member's record in the deliveries the cohort was built
-- from (meta.deliveries_as_of), a row key, and consistency flags between columns.
-- Variables: data_cutoff.
WITH source AS (
    SELECT p.source_site, p.patient_key, p.sex_at_birth, p.enrollment_start
    FROM staging.patients p
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')::DATE) d ON d.delivery_id = p.delivery_id
)
SELECT
    m.*,
    concat_ws(':', m.source_site, m.patient_key) AS member_key,
    s.patient_key IS NOT NULL AS patient_found,
    s.sex_at_birth,
    s.enrollment_start,
    m.follow_up_days IS NOT DISTINCT FROM (m.follow_up_end - m.index_date) AS follow_up_days_consistent,
    m.ai_ever IS NOT DISTINCT FROM (m.first_ai_date IS NOT NULL) AS ai_exposure_consistent,
    NOT coalesce(m.in_bmd_analysis, false) OR m.baseline_scan_date IS NOT NULL AS bmd_analysis_has_baseline
FROM cohort.members m
LEFT JOIN source s ON s.source_site = m.source_site AND s.patient_key = m.patient_key
WHERE m.data_cutoff = getvariable('data_cutoff')::DATE
