-- Estradiol tier per patient and collection day, for one data cutoff (see cohort.e2_tier for the
-- rules on censored results). Two row sets: every assay (lcms_only = false; only LC-MS/MS when the
-- protocol asks for it) and LC-MS/MS only (lcms_only = true), the sensitivity analysis.
DELETE FROM cohort.estradiol_results WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO cohort.estradiol_results
WITH results AS (
    SELECT l.source_site, l.patient_key, l.collected_date,
           coalesce(regexp_matches(upper(l.assay_method), 'LC.?MS'), false) AS is_lcms,
           cohort.e2_tier(l.value, l.censoring, getvariable('e2_bound_low'), getvariable('e2_bound_mid'),
                          getvariable('e2_bound_high')) AS tier
    FROM staging.labs l
    JOIN meta.deliveries_as_of(getvariable('data_cutoff')) USING (delivery_id)
    WHERE l.analyte = 'estradiol'
), sets AS (
    SELECT *, false AS lcms_only FROM results WHERE is_lcms OR NOT getvariable('e2_lcms_only')
    UNION ALL
    SELECT *, true FROM results WHERE is_lcms
)
SELECT getvariable('data_cutoff'), source_site, patient_key, collected_date, lcms_only,
       -- the lowest known tier of the day; unknown only when no result of the day has a tier
       ['lt10', '10_20', '20_40', 'ge40', 'unknown'][min(list_position(['lt10', '10_20', '20_40', 'ge40', 'unknown'], tier))],
       count(*)::INTEGER
FROM sets
GROUP BY source_site, patient_key, collected_date, lcms_only;
