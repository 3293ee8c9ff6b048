-- Validation relation of suite cohort_ai_episodes: the aromatase-inhibitor episodes at one data
-- cutoff, each with its patient's observation window from the deliveries the cohort was built
-- from (meta.deliveries_as_of) and a row key. Variables: data_cutoff.
WITH source AS (
    SELECT p.source_site, p.patient_key, p.enrollment_start, p.death_date
    FROM staging.patients p
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')::DATE) d ON d.delivery_id = p.delivery_id
)
SELECT
    e.*,
    concat_ws(':', e.source_site, e.patient_key, e.episode_no) AS episode_key,
    s.patient_key IS NOT NULL AS patient_found,
    s.enrollment_start,
    s.death_date
FROM cohort.ai_episodes e
LEFT JOIN source s ON s.source_site = e.source_site AND s.patient_key = e.patient_key
WHERE e.data_cutoff = getvariable('data_cutoff')::DATE
