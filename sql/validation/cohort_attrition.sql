-- Validation relation of suite cohort_attrition: the cohort flow at one data cutoff, each step
-- with the step before it, whether the counts balance (remaining = previous remaining - excluded),
-- and, on the step that defines the cohort (positive_follow_up), whether it matches the number of
-- rows in cohort.members. Variables: data_cutoff.
WITH steps AS (
    SELECT a.*, lag(a.patients_remaining) OVER (ORDER BY a.step_order) AS previous_remaining
    FROM cohort.attrition a
    WHERE a.data_cutoff = getvariable('data_cutoff')::DATE
), members AS (
    SELECT count(*) AS n FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')::DATE
)
SELECT
    s.*,
    coalesce(s.previous_remaining - s.patients_excluded = s.patients_remaining,
             s.patients_excluded = 0) AS flow_balances,
    CASE WHEN s.step = 'positive_follow_up' THEN s.patients_remaining = m.n END AS matches_cohort_members
FROM steps s CROSS JOIN members m
