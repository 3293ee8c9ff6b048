-- Incident fragility fractures of one delivery, per the contract:
-- only initial-encounter codes (7th character A, B or C) start a fracture; later-encounter and
-- sequela codes do not; same-site initial codes within 90 days of a fracture's first code are that
-- fracture (an emergency visit, then the admission); pathological codes (M84.5, C79.51) never match.
INSERT INTO staging.fractures
WITH coded AS (
    SELECT d.patient_key, d.diagnosis_date, d.icd10_code, f.fracture_site
    FROM staging.diagnoses d
    JOIN LATERAL (
        SELECT fracture_site FROM reference.fracture_codes
        WHERE starts_with(d.icd10_code, code_prefix) ORDER BY length(code_prefix) DESC LIMIT 1
    ) f ON true
    WHERE d.delivery_id = getvariable('delivery_id')
      AND length(d.icd10_code) = 7 AND substr(d.icd10_code, 7, 1) IN ('A', 'B', 'C')
), ordered AS (
    SELECT *, row_number() OVER (PARTITION BY patient_key, fracture_site ORDER BY diagnosis_date, icd10_code) AS seq
    FROM coded
), episodes AS (
    -- Walk each patient's same-site codes in date order, carrying the current fracture's first date.
    WITH RECURSIVE walk AS (
        SELECT patient_key, fracture_site, seq, diagnosis_date, icd10_code, diagnosis_date AS fracture_date
        FROM ordered WHERE seq = 1
        UNION ALL
        SELECT o.patient_key, o.fracture_site, o.seq, o.diagnosis_date, o.icd10_code,
               CASE WHEN o.diagnosis_date - w.fracture_date > 90 THEN o.diagnosis_date ELSE w.fracture_date END
        FROM walk w JOIN ordered o
          ON o.patient_key = w.patient_key AND o.fracture_site = w.fracture_site AND o.seq = w.seq + 1
    )
    SELECT * FROM walk
)
SELECT getvariable('delivery_id'), getvariable('source_site'), patient_key, fracture_date, fracture_site,
       arg_min(icd10_code, seq), count(*)::INTEGER
FROM episodes
GROUP BY patient_key, fracture_site, fracture_date;
