-- One skeletal site's scans as the BMD mixed models read them (cohort/bmd.py: fit_bmd_models), with
-- an integer patient_id (dense rank of the patient keys), sorted by patient and scan date.
SELECT dense_rank() OVER (ORDER BY source_site, patient_key)::INTEGER AS patient_id, source_site, manufacturer,
       years_since_baseline, log_sbmd, years_on_ai, years_e2_lt10, years_e2_10_20, years_e2_ge40, years_e2_unknown,
       years_e2_lcms_lt10, years_e2_lcms_10_20, years_e2_lcms_ge40, years_e2_lcms_unknown,
       age_at_index, bmi
FROM analysis.bmd_long
WHERE data_cutoff = getvariable('data_cutoff') AND skeletal_site = getvariable('skeletal_site')
ORDER BY patient_id, scan_date;
