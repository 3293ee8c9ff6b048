-- Aromatase-inhibitor episodes for one data cutoff, from the deliveries current at that cutoff.
DELETE FROM cohort.ai_episodes WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO cohort.ai_episodes
WITH dispensings AS (
    SELECT m.source_site, m.patient_key, m.ingredient, m.dose_mg, m.start_date,
           coalesce(m.end_date, m.start_date + getvariable('default_days_supply') - 1) AS end_date
    FROM staging.medications m
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')) USING (delivery_id)
    WHERE m.drug_class = 'aromatase_inhibitor'
), ordered AS (
    SELECT *, max(end_date) OVER (PARTITION BY source_site, patient_key ORDER BY start_date, end_date
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered_until
    FROM dispensings
), numbered AS (
    -- A new episode starts when the gap since everything covered so far exceeds the grace period.
    SELECT *, sum(CASE WHEN covered_until IS NULL
                        OR start_date - covered_until - 1 > getvariable('grace_period_days') THEN 1 ELSE 0 END)
              OVER (PARTITION BY source_site, patient_key ORDER BY start_date, end_date ROWS UNBOUNDED PRECEDING) AS episode_no
    FROM ordered
)
SELECT getvariable('data_cutoff'), source_site, patient_key, episode_no::INTEGER,
       min(start_date), max(end_date) + getvariable('grace_period_days'),
       string_agg(DISTINCT ingredient, ',' ORDER BY ingredient), count(*)::INTEGER, avg(dose_mg)
FROM numbered
GROUP BY source_site, patient_key, episode_no;
