-- Time-varying exposure of every member, as calendar-day segments over which current AI, estradiol
-- tier and glucocorticoid use are all constant: from the earlier of baseline scan and index to the
-- end of follow-up. A segment starts only where one of them changes: an AI episode or a period of
-- glucocorticoid use starting or ending, or the estradiol tier changing (a result with another tier
-- arriving, or the latest result ageing out of the lookback: a result collected on day r counts on
-- days r .. r + lookback - 1). So no two adjacent segments are alike (sql/cohort/fracture_intervals.sql
-- relies on it).
--
-- Built in sorted passes over integer keys (speed, issue #6). One over each member's estradiol results
-- finds the days the tier really changes: a new result with the tier already current, or a result
-- ageing out when the next one arrives within the lookback, changes nothing (7.2M segments instead of
-- 11.9M at 1M patients). Then every change day becomes a row, and one window over the member's days
-- gives the segment end (next change day - 1), the glucocorticoid use at the segment start and the
-- latest tier change up to it.
DELETE FROM cohort.exposure_segments WHERE data_cutoff = getvariable('data_cutoff');

INSERT INTO cohort.exposure_segments
WITH members AS MATERIALIZED (
    -- pid: an integer key local to this statement, so the big sort and joins below carry one BIGINT
    -- instead of (source_site, patient_key); the strings are joined back at the end.
    SELECT row_number() OVER () AS pid, source_site, patient_key,
           least(coalesce(baseline_scan_date, index_date), index_date) AS range_start,
           follow_up_end AS range_end
    FROM cohort.members WHERE data_cutoff = getvariable('data_cutoff')
), ai AS (
    SELECT m.pid, m.range_end, a.episode_start, a.episode_end, a.ingredients, a.mean_dose_mg
    FROM cohort.ai_episodes a JOIN members m USING (source_site, patient_key)
    WHERE a.data_cutoff = getvariable('data_cutoff')
), glucocorticoid_supplies AS (
    -- supplies in start order, with the last day covered by the ones before (an inverted supply,
    -- ending before it starts, never counts)
    SELECT pid, range_end, start_date, end_date,
           max(end_date) OVER (PARTITION BY pid ORDER BY start_date, end_date
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered_until
    FROM (SELECT mb.pid, mb.range_end, m.start_date,
                 coalesce(m.end_date, m.start_date + getvariable('default_days_supply') - 1) AS end_date
          FROM staging.medications m
          JOIN meta.deliveries_as_of(getvariable('data_cutoff')) USING (delivery_id)
          JOIN members mb ON mb.source_site = m.source_site AND mb.patient_key = m.patient_key
          WHERE m.drug_class = 'glucocorticoid')
    WHERE end_date >= start_date
), glucocorticoids AS (
    -- Overlapping or adjacent supplies merged into periods of use, so that use starts and stops only
    -- where it really does (a segment boundary then always changes something).
    SELECT pid, any_value(range_end) AS range_end, min(start_date) AS start_date, max(end_date) AS end_date
    FROM (SELECT *, sum(CASE WHEN start_date <= covered_until + 1 THEN 0 ELSE 1 END)
                        OVER (PARTITION BY pid ORDER BY start_date, end_date ROWS UNBOUNDED PRECEDING) AS period
          FROM glucocorticoid_supplies)
    GROUP BY pid, period
), estradiol AS (
    -- Each tier set's results (all assays; LC-MS/MS only) in day order, with the set's tier the day
    -- before (the previous result's while it is in the lookback, else unknown) and the next result day.
    SELECT pid, range_end, lcms_only, collected_date, tier_pos,
           CASE WHEN collected_date - lag(collected_date) OVER w <= getvariable('e2_lookback_days')
                THEN lag(tier_pos) OVER w ELSE 5 END AS tier_before,
           lead(collected_date) OVER w AS next_day
    FROM (SELECT m.pid, m.range_end, e.lcms_only, e.collected_date,
                 list_position(['lt10', '10_20', '20_40', 'ge40', 'unknown'], e.e2_tier) AS tier_pos
          FROM cohort.estradiol_results e JOIN members m USING (source_site, patient_key)
          WHERE e.data_cutoff = getvariable('data_cutoff'))
    WINDOW w AS (PARTITION BY pid, lcms_only ORDER BY collected_date)
), e2_changes AS (
    -- The days a set's tier changes, each with the new tier packed with its day in one BIGINT that
    -- grows with the day (day * 8 + tier position 1..5, days offset to stay positive): a running max
    -- over the days then yields the tier current on each day. A result changes the tier when it
    -- differs from the tier the day before; it ages out (to unknown) unless its tier is unknown or
    -- the next result arrives within the lookback.
    SELECT pid, lcms_only, collected_date AS day,
           (collected_date - DATE '1970-01-01' + 1000000) * 8 + tier_pos AS packed
    FROM estradiol WHERE tier_pos <> tier_before AND collected_date <= range_end + 1
    UNION ALL
    SELECT pid, lcms_only, collected_date + getvariable('e2_lookback_days'),
           (collected_date + getvariable('e2_lookback_days') - DATE '1970-01-01' + 1000000) * 8 + 5
    FROM estradiol
    WHERE tier_pos <> 5 AND (next_day IS NULL OR next_day > collected_date + getvariable('e2_lookback_days'))
      AND collected_date + getvariable('e2_lookback_days') <= range_end + 1
), events AS (
    -- Change days up to the end of follow-up (+1, where the last segment stops). Days before the
    -- range are kept: they carry supplies and estradiol tiers into it.
    SELECT pid, range_start AS day, 0 AS gc_delta, NULL::BIGINT AS e2_all, NULL::BIGINT AS e2_lcms FROM members
    UNION ALL SELECT pid, range_end + 1, 0, NULL, NULL FROM members
    UNION ALL SELECT pid, episode_start, 0, NULL, NULL FROM ai WHERE episode_start <= range_end + 1
    UNION ALL SELECT pid, episode_end + 1, 0, NULL, NULL FROM ai WHERE episode_end + 1 <= range_end + 1
    -- a period of use [start, end] counts +1 from its start and -1 from end + 1
    UNION ALL SELECT pid, start_date, 1, NULL, NULL FROM glucocorticoids WHERE start_date <= range_end + 1
    UNION ALL SELECT pid, end_date + 1, -1, NULL, NULL FROM glucocorticoids WHERE end_date + 1 <= range_end + 1
    UNION ALL SELECT pid, day, 0, CASE WHEN NOT lcms_only THEN packed END, CASE WHEN lcms_only THEN packed END
              FROM e2_changes
), days AS (
    SELECT pid, day, sum(gc_delta)::INTEGER AS gc_delta, max(e2_all) AS e2_all, max(e2_lcms) AS e2_lcms
    FROM events GROUP BY pid, day
), walked AS (
    SELECT pid, day AS segment_start,
           lead(day) OVER (PARTITION BY pid ORDER BY day) - 1 AS segment_end,
           sum(gc_delta) OVER (PARTITION BY pid ORDER BY day ROWS UNBOUNDED PRECEDING) > 0 AS glucocorticoid_current,
           max(e2_all) OVER (PARTITION BY pid ORDER BY day ROWS UNBOUNDED PRECEDING) AS e2_all,
           max(e2_lcms) OVER (PARTITION BY pid ORDER BY day ROWS UNBOUNDED PRECEDING) AS e2_lcms
    FROM days
)
SELECT getvariable('data_cutoff'), m.source_site, m.patient_key, w.segment_start, w.segment_end,
       a.ingredients IS NOT NULL, a.ingredients, a.mean_dose_mg,
       -- the tier of the latest change (unknown before any result)
       coalesce(['lt10', '10_20', '20_40', 'ge40', 'unknown'][w.e2_all % 8], 'unknown'),
       coalesce(['lt10', '10_20', '20_40', 'ge40', 'unknown'][w.e2_lcms % 8], 'unknown'),
       w.glucocorticoid_current
FROM walked w
JOIN members m ON m.pid = w.pid
LEFT JOIN ai a ON a.pid = w.pid AND w.segment_start BETWEEN a.episode_start AND a.episode_end
WHERE w.segment_end IS NOT NULL AND w.segment_start >= m.range_start;
