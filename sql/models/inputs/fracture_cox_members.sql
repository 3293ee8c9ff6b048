-- The members of the Cox models: an integer patient_id (0, 1, ... in key order), the baseline
-- covariates the models adjust for and the member's IPTW (NULL when the propensity model was not
-- fitted). Kept as temp table fracture_cox_members for fracture_cox_intervals.sql.
CREATE OR REPLACE TEMP TABLE fracture_cox_members AS
SELECT (row_number() OVER (ORDER BY m.source_site, m.patient_key) - 1)::INTEGER AS patient_id,
       m.source_site, m.patient_key, m.age_at_index, m.bmi, m.sbmd_femoral_neck, m.ai_ever, w.iptw
FROM cohort.members m
LEFT JOIN analysis.fracture_iptw_weights w
       ON w.data_cutoff = m.data_cutoff AND w.source_site = m.source_site AND w.patient_key = m.patient_key
WHERE m.data_cutoff = getvariable('data_cutoff');

SELECT patient_id, age_at_index, bmi, sbmd_femoral_neck, ai_ever, iptw
FROM fracture_cox_members
ORDER BY patient_id;
