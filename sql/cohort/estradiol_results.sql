-- Estradiol tier per patient and collection day, for one data cutoff (see cohort.e2_tier for the
-- rules on censored results). Two row sets: every assay (lcms_only = false; only LC-MS/MS when the
-- protocol asks for it) and LC-MS/MS only (lcms_only = true), the sensitivity analysis.
DELETE FROM cohort.estradiol_results WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO cohort.estradiol_results
WITH results AS (
    SELECT l.source_site, l.patient_key, l.collected_date,
           coalesce(regexp_matches(upper(l.assay_method), 'LC.?MS'), false) AS is_lcms,
           list_position(['lt10', '10_20', '20_40', 'ge40', 'unknown'],
                         cohort.e2_tier(l.value, l.censoring, getvariable('e2_bound_low'), getvariable('e2_bound_mid'),
                                        getvariable('e2_bound_high'))) AS tier_pos
    FROM staging.labs l
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')) USING (delivery_id)
    WHERE l.analyte = 'estradiol'
), days AS (
    -- Both row sets from one grouping of the day's results (one pass instead of grouping twice);
    -- the lowest known tier of the day, unknown only when no result of the day has a tier.
    SELECT source_site, patient_key, collected_date,
           min(tier_pos) FILTER (is_lcms OR NOT getvariable('e2_lcms_only')) AS all_pos,
           count(*) FILTER (is_lcms OR NOT getvariable('e2_lcms_only')) AS all_n,
           min(tier_pos) FILTER (is_lcms) AS lcms_pos,
           count(*) FILTER (is_lcms) AS lcms_n
    FROM results
    GROUP BY source_site, patient_key, collected_date
)
SELECT getvariable('data_cutoff'), d.source_site, d.patient_key, d.collected_date, s.lcms_only,
       ['lt10', '10_20', '20_40', 'ge40', 'unknown'][CASE WHEN s.lcms_only THEN d.lcms_pos ELSE d.all_pos END],
       (CASE WHEN s.lcms_only THEN d.lcms_n ELSE d.all_n END)::INTEGER
FROM days d CROSS JOIN (VALUES (false), (true)) s(lcms_only)
-- a set has a row for the day only if it has a result that day
WHERE CASE WHEN s.lcms_only THEN d.lcms_n ELSE d.all_n END > 0;
