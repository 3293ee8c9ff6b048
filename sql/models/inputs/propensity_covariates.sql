-- Each member's baseline covariates for the propensity score of AI initiation (cohort/fracture.py:
-- PropensityScoreModel), in key order so weights line up with members and reruns are identical.
SELECT source_site, patient_key, ai_ever, age_at_index, bmi, estradiol_pg_ml, testosterone_ng_dl, vitamin_d_ng_ml,
       glucocorticoid_at_index, sbmd_femoral_neck, e2_tier_at_index, scanner_manufacturer
FROM cohort.members
WHERE data_cutoff = getvariable('data_cutoff')
ORDER BY source_site, patient_key;
