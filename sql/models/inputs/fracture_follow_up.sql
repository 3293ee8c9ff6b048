-- Each member's follow-up from index to first fragility fracture (days, and why it ended) with the
-- groups the curves compare: AI during follow-up and estradiol tier at index. The input of
-- results.km_curves, results.km_curves_e2_tier and results.cumulative_incidence.
SELECT ai_ever, e2_tier_at_index, follow_up_days, follow_up_end_reason
FROM cohort.members
WHERE data_cutoff = getvariable('data_cutoff');
