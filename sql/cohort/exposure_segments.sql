-- Time-varying exposure of every member, as calendar-day segments over which current AI, estradiol
-- tier and glucocorticoid use are all constant: from the earlier of baseline scan and index to the
-- end of follow-up. A segment starts wherever any of them may change (an AI episode or glucocorticoid
-- supply starting or ending, an estradiol result arriving or ageing out of the lookback: a result
-- collected on day r counts on days r .. r + lookback - 1).
--
-- Built in one sorted pass per member (speed, issue #6): every change day becomes a row, and a single
-- window over the member's days gives the segment end (next change day - 1), the glucocorticoid supplies
-- running at the segment start and the latest estradiol result of each tier set up to it.
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
), glucocorticoids AS (
    SELECT mb.pid, mb.range_end, g.start_date, g.end_date
    FROM (SELECT m.source_site, m.patient_key, m.start_date,
                 coalesce(m.end_date, m.start_date + getvariable('default_days_supply') - 1) AS end_date
          FROM staging.medications m
          JOIN meta.deliveries_as_of(getvariable('data_cutoff')) USING (delivery_id)
          WHERE m.drug_class = 'glucocorticoid') g
    JOIN members mb USING (source_site, patient_key)
), estradiol AS (
    -- The collection day and tier packed in one BIGINT that grows with the day (day * 8 + tier
    -- position 1..5, days offset to stay positive): a running max then yields the latest result
    -- and its tier at once.
    SELECT m.pid, m.range_end, e.collected_date, e.lcms_only,
           (e.collected_date - DATE '1970-01-01' + 1000000) * 8
               + list_position(['lt10', '10_20', '20_40', 'ge40', 'unknown'], e.e2_tier) AS packed
    FROM cohort.estradiol_results e JOIN members m USING (source_site, patient_key)
    WHERE e.data_cutoff = getvariable('data_cutoff')
), events AS (
    -- Change days up to the end of follow-up (+1, where the last segment stops). Days before the
    -- range are kept: they carry supplies and estradiol results into it.
    SELECT pid, range_start AS day, 0 AS gc_delta, NULL::BIGINT AS e2_all, NULL::BIGINT AS e2_lcms FROM members
    UNION ALL SELECT pid, range_end + 1, 0, NULL, NULL FROM members
    UNION ALL SELECT pid, episode_start, 0, NULL, NULL FROM ai WHERE episode_start <= range_end + 1
    UNION ALL SELECT pid, episode_end + 1, 0, NULL, NULL FROM ai WHERE episode_end + 1 <= range_end + 1
    -- a supply [start, end] counts +1 from its start and -1 from end + 1 (an inverted one never counts)
    UNION ALL SELECT pid, start_date, CASE WHEN end_date >= start_date THEN 1 ELSE 0 END, NULL, NULL
              FROM glucocorticoids WHERE start_date <= range_end + 1
    UNION ALL SELECT pid, end_date + 1, CASE WHEN end_date >= start_date THEN -1 ELSE 0 END, NULL, NULL
              FROM glucocorticoids WHERE end_date + 1 <= range_end + 1
    UNION ALL SELECT pid, collected_date, 0, CASE WHEN NOT lcms_only THEN packed END, CASE WHEN lcms_only THEN packed END
              FROM estradiol WHERE collected_date <= range_end + 1
    UNION ALL SELECT pid, collected_date + getvariable('e2_lookback_days'), 0, NULL, NULL
              FROM estradiol WHERE collected_date + getvariable('e2_lookback_days') <= range_end + 1
), days AS (
    SELECT pid, day, sum(gc_delta)::INTEGER AS gc_delta, max(e2_all) AS e2_all, max(e2_lcms) AS e2_lcms
    FROM events GROUP BY pid, day
), walked AS (
    SELECT pid, day AS segment_start,
           lead(day) OVER (PARTITION BY pid ORDER BY day) - 1 AS segment_end,
           sum(gc_delta) OVER (PARTITION BY pid ORDER BY day ROWS UNBOUNDED PRECEDING) > 0 AS glucocorticoid_current,
           max(e2_all) OVER (PARTITION BY pid ORDER BY day ROWS UNBOUNDED PRECEDING) AS e2_all,
           max(e2_lcms) OVER (PARTITION BY pid ORDER BY day ROWS UNBOUNDED PRECEDING) AS e2_lcms,
           day - DATE '1970-01-01' + 1000000 AS day_no
    FROM days
)
SELECT getvariable('data_cutoff'), m.source_site, m.patient_key, w.segment_start, w.segment_end,
       a.ingredients IS NOT NULL, a.ingredients, a.mean_dose_mg,
       -- the latest result's tier while it is inside the lookback, else unknown
       CASE WHEN w.day_no - w.e2_all // 8 < getvariable('e2_lookback_days')
            THEN ['lt10', '10_20', '20_40', 'ge40', 'unknown'][w.e2_all % 8] ELSE 'unknown' END,
       CASE WHEN w.day_no - w.e2_lcms // 8 < getvariable('e2_lookback_days')
            THEN ['lt10', '10_20', '20_40', 'ge40', 'unknown'][w.e2_lcms % 8] ELSE 'unknown' END,
       w.glucocorticoid_current
FROM walked w
JOIN members m ON m.pid = w.pid
LEFT JOIN ai a ON a.pid = w.pid AND w.segment_start BETWEEN a.episode_start AND a.episode_end
WHERE w.segment_end IS NOT NULL AND w.segment_start >= m.range_start;
