-- Person-time (days) and first fragility fractures per combination of the exposures current at the
-- time (AI, estradiol tier from all assays and from LC-MS/MS only, glucocorticoid), from the
-- counting-process rows: the input of results.incidence_rates.
SELECT ai_current, e2_tier, e2_tier_lcms, glucocorticoid_current,
       sum(stop_day - start_day)::DOUBLE AS person_days,
       count(*) FILTER (event = 'fracture') AS events
FROM analysis.fracture_intervals
WHERE data_cutoff = getvariable('data_cutoff')
GROUP BY ALL;
