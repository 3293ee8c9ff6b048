"""The cohort SQL on hand-built patients: each protocol rule at its edges, with exact expected rows."""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import pytest

from cohort.ingest import ingest_delivery
from cohort.protocol import Protocol, ProtocolError, load_protocol
from cohort.sql import run_sql, sql_text
from tests.deliveries import PATIENT, write_delivery

CUTOFF = date(2025, 6, 30)
COHORT_SQL = ("ai_episodes", "estradiol_results", "members", "exposure_segments", "fracture_intervals", "bmd_long")
ENROLLED = date(2015, 1, 1)
INDEX = date(2018, 1, 1)


def d(day: date, offset: int = 0) -> str:
    return (day + timedelta(days=offset)).isoformat()


def patient(key: str, **changes) -> dict:
    return {**PATIENT, "patient_key": key, **changes}


def trt(key: str, start: date, days: int = 90) -> dict:
    return {"patient_key": key, "drug_name": "TESTOSTERONE CYPIONATE 200 MG/ML", "atc_code": "G03BA03",
            "start_date": start.isoformat(), "days_supply": str(days), "route": "intramuscular"}


def ai(key: str, start: date, days: int = 30, drug: str = "ANASTROZOLE 1 MG", atc: str = "L02BG03") -> dict:
    return {"patient_key": key, "drug_name": drug, "atc_code": atc, "start_date": start.isoformat(),
            "days_supply": str(days), "dose_mg": "1", "route": "oral"}


def e2(key: str, when: date, result: str, method: str = "LC-MS/MS") -> dict:
    return {"patient_key": key, "loinc_code": "2243-4", "test_name": "Estradiol", "result": result, "unit": "pg/mL",
            "collected_date": when.isoformat(), "assay_method": method, "loq": ""}


def fracture(key: str, when: date, code: str = "S72.001A") -> dict:
    return {"patient_key": key, "icd10_code": code, "diagnosis_date": when.isoformat(), "encounter_type": "inpatient"}


def scan(key: str, when: date, site: str = "femoral_neck", bmd: float = 0.8) -> dict:
    return {"patient_key": key, "scan_date": when.isoformat(), "skeletal_site": site, "laterality": "left",
            "bmd_g_cm2": str(bmd), "manufacturer": "Hologic"}


def build(tmp_path, tables: dict, protocol: Protocol | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ingest_delivery(con, write_delivery(tmp_path / "landing", tables=tables))
    con.execute("UPDATE meta.deliveries SET validation_passed = true")
    con.execute(sql_text("cohort/schema"))
    variables = (protocol or load_protocol()).sql_variables()
    for name in COHORT_SQL:
        run_sql(con, f"cohort/{name}", data_cutoff=CUTOFF, **variables)
    return con


def members(con) -> dict[str, tuple]:
    return {key: tuple(rest) for key, *rest in con.execute(
        "SELECT patient_key, index_date::VARCHAR, follow_up_end_reason, follow_up_days FROM cohort.members"
    ).fetchall()}


def test_washout_and_population_edges(tmp_path):
    keys = {"washout365": 365, "washout364": 364}
    patients = [patient(k, enrollment_start=d(INDEX, -days)) for k, days in keys.items()]
    patients += [patient("female0001", sex_at_birth="F", enrollment_start=d(ENROLLED)),
                 patient("child00001", birth_year="2001", enrollment_start=d(ENROLLED)),   # 17 at index
                 patient("adult00001", birth_year="2000", enrollment_start=d(ENROLLED)),   # 18 at index
                 patient("bisphos001", enrollment_start=d(ENROLLED)),
                 patient("nodrug0001", enrollment_start=d(ENROLLED))]
    meds = [trt(k, INDEX) for k in [*keys, "female0001", "child00001", "adult00001", "bisphos001"]]
    meds.append({"patient_key": "bisphos001", "drug_name": "ALENDRONATE", "atc_code": "M05BA04",
                 "start_date": d(INDEX, -1), "days_supply": "28"})
    con = build(tmp_path, {"patients": patients, "medications": meds})
    assert set(members(con)) == {"washout365", "adult00001"}
    attrition = con.execute(
        "SELECT step, patients_remaining, patients_excluded FROM cohort.attrition ORDER BY step_order").fetchall()
    assert attrition[:8] == [
        ("source_population", 7, 0), ("sex_at_birth", 6, 1), ("testosterone_user", 5, 1), ("new_user", 4, 1),
        ("adult_at_index", 3, 1), ("no_prior_bone_active_drug", 2, 1), ("no_prior_fracture", 2, 0),
        ("positive_follow_up", 2, 0),
    ]
    for (_, before, _), (_, after, excluded) in zip(attrition, attrition[1:]):
        assert before - excluded == after


def test_events_on_the_index_day_and_death_before_fracture(tmp_path):
    patients = [patient(k, enrollment_start=d(ENROLLED)) for k in ("fxindex001", "fxbefore01", "fxafter001")]
    patients += [patient("deadindex1", enrollment_start=d(ENROLLED), death_date=d(INDEX)),
                 patient("deadfirst1", enrollment_start=d(ENROLLED), death_date=d(INDEX, 100))]
    meds = [trt(p["patient_key"], INDEX) for p in patients]
    diagnoses = [fracture("fxindex001", INDEX), fracture("fxbefore01", INDEX - timedelta(days=365)),
                 fracture("fxafter001", INDEX + timedelta(days=1)), fracture("deadfirst1", INDEX + timedelta(days=200))]
    con = build(tmp_path, {"patients": patients, "medications": meds, "diagnoses": diagnoses})
    assert members(con) == {
        "fxafter001": (d(INDEX), "fracture", 1),
        "deadfirst1": (d(INDEX), "death", 100),
    }
    assert con.execute(
        "SELECT patient_key, start_day, stop_day, event FROM analysis.fracture_intervals ORDER BY ALL").fetchall() == [
        ("deadfirst1", 0, 100, "death"), ("fxafter001", 0, 1, "fracture"),
    ]


@pytest.mark.parametrize("gap, episodes", [(29, 1), (30, 1), (31, 2)])
def test_ai_grace_period_edges(tmp_path, gap, episodes):
    first = INDEX + timedelta(days=10)
    second = first + timedelta(days=30 + gap)   # the first supply covers 30 days; then `gap` uncovered days
    tables = {"patients": [patient("aiuser0001", enrollment_start=d(ENROLLED))],
              "medications": [trt("aiuser0001", INDEX, 2000), ai("aiuser0001", first), ai("aiuser0001", second)]}
    con = build(tmp_path, tables)
    rows = con.execute("SELECT episode_start::VARCHAR, episode_end::VARCHAR FROM cohort.ai_episodes ORDER BY 1").fetchall()
    assert len(rows) == episodes
    assert rows[0][0] == d(first)
    assert rows[-1][1] == d(second, 29 + 30)   # last covered day + the 30-day grace period


@pytest.mark.parametrize(
    "result, tier",
    [("9.99", "lt10"), ("10", "10_20"), ("19.99", "10_20"), ("20", "20_40"), ("39.99", "20_40"), ("40", "ge40"),
     ("<10", "lt10"), ("<5", "lt10"), ("<10.5", "unknown"), ("<20", "unknown"), (">40", "ge40"), (">39", "unknown")],
)
def test_estradiol_tier_edges_and_censored_results(tmp_path, result, tier):
    tables = {"patients": [patient("e2patient1", enrollment_start=d(ENROLLED))],
              "medications": [trt("e2patient1", INDEX, 365)], "labs": [e2("e2patient1", INDEX - timedelta(days=5), result)]}
    con = build(tmp_path, tables)
    assert con.execute("SELECT e2_tier_at_index FROM cohort.members").fetchall() == [(tier,)]


def test_estradiol_tier_ages_out_after_the_lookback_and_lcms_sensitivity(tmp_path):
    key = "e2patient2"
    tables = {
        "patients": [patient(key, enrollment_start=d(ENROLLED), enrollment_end=d(INDEX, 400))],
        "medications": [trt(key, INDEX, 365)],
        "labs": [e2(key, INDEX + timedelta(days=10), "8", method="immunoassay"),
                 e2(key, INDEX + timedelta(days=20), "25", method="LC-MS/MS")],
    }
    con = build(tmp_path, tables)
    rows = con.execute(
        "SELECT start_day, stop_day, e2_tier, e2_tier_lcms, event FROM analysis.fracture_intervals ORDER BY start_day").fetchall()
    # Day d of follow-up is calendar day index + d: the immunoassay result (day 10) counts from day 10,
    # the LC-MS/MS result (day 20) from day 20 through day 199 (a 180-day lookback: days r .. r + 179).
    assert rows == [
        (0, 9, "unknown", "unknown", "censored"),
        (9, 19, "lt10", "unknown", "censored"),
        (19, 199, "20_40", "20_40", "censored"),
        (199, 400, "unknown", "unknown", "censored"),
    ]


@pytest.mark.parametrize("gap, segments", [
    # the next result on the last day of the lookback: the tier never lapses, and a result with the
    # tier already current starts no segment
    (180, [(0, 9, "unknown"), (10, 369, "20_40"), (370, 400, "unknown")]),
    # one day later: unknown for the one day between
    (181, [(0, 9, "unknown"), (10, 189, "20_40"), (190, 190, "unknown"), (191, 370, "20_40"), (371, 400, "unknown")]),
])
def test_estradiol_segments_start_only_where_the_tier_changes(tmp_path, gap, segments):
    key = "e2patient3"
    tables = {
        "patients": [patient(key, enrollment_start=d(ENROLLED), enrollment_end=d(INDEX, 400))],
        "medications": [trt(key, INDEX, 365)],
        "labs": [e2(key, INDEX + timedelta(days=10), "25"), e2(key, INDEX + timedelta(days=10 + gap), "30")],
    }
    con = build(tmp_path, tables)
    # days since index; segments are inclusive calendar-day ranges
    assert con.execute(
        "SELECT segment_start - ?::DATE, segment_end - ?::DATE, e2_tier FROM cohort.exposure_segments ORDER BY 1",
        [INDEX, INDEX]).fetchall() == segments
    assert con.execute(
        "SELECT start_day, stop_day, e2_tier FROM analysis.fracture_intervals ORDER BY start_day").fetchall() == [
        (max(start - 1, 0), end, tier) for start, end, tier in segments]


def test_intervals_split_at_ai_and_glucocorticoid_changes_and_bmd_exposure_time(tmp_path):
    key = "tvpatient1"
    tables = {
        "patients": [patient(key, enrollment_start=d(ENROLLED), enrollment_end=d(INDEX, 730))],
        "medications": [trt(key, INDEX, 730), ai(key, INDEX + timedelta(days=100), days=100),
                        {"patient_key": key, "drug_name": "PREDNISONE 5 MG", "atc_code": "H02AB07",
                         "start_date": d(INDEX, 300), "days_supply": "10"}],
        "dxa": [scan(key, INDEX - timedelta(days=30)), scan(key, INDEX + timedelta(days=700), bmd=0.78)],
    }
    con = build(tmp_path, tables)
    assert con.execute(
        "SELECT start_day, stop_day, ai_current, ai_ever, glucocorticoid_current FROM analysis.fracture_intervals ORDER BY 1"
    ).fetchall() == [
        (0, 99, False, False, False),
        (99, 229, True, True, False),     # supply days 100..199, then the 30-day grace: exposed through day 229
        (229, 299, False, True, False),
        (299, 309, False, True, True),    # prednisone days 300..309
        (309, 730, False, True, False),
    ]
    (years_on_ai, years, log_sbmd), = con.execute(
        "SELECT years_on_ai, years_since_baseline, log_sbmd FROM analysis.bmd_long WHERE scan_date > DATE '2018-01-01'"
    ).fetchall()
    assert years_on_ai == pytest.approx(130 / 365.25)
    assert years == pytest.approx(730 / 365.25)
    assert log_sbmd == pytest.approx(__import__("math").log(0.019 + 1.087 * 0.78))


def test_overlapping_and_adjacent_glucocorticoid_supplies_are_one_period_of_use(tmp_path):
    key = "gcpatient1"

    def prednisone(start: int, days: int, end: int | None = None) -> dict:
        return {"patient_key": key, "drug_name": "PREDNISONE 5 MG", "atc_code": "H02AB07", "start_date": d(INDEX, start),
                "days_supply": str(days), **({"end_date": d(INDEX, end)} if end is not None else {})}

    tables = {
        "patients": [patient(key, enrollment_start=d(ENROLLED), enrollment_end=d(INDEX, 400))],
        # days 100..129 and 120..149 overlap, 150..159 follows on: one period, days 100..159; an
        # inverted supply (ending before it starts) never counts; 200..209 is a period of its own
        "medications": [trt(key, INDEX, 365), prednisone(100, 30), prednisone(120, 30), prednisone(150, 10),
                        prednisone(180, 10, end=170), prednisone(200, 10)],
    }
    con = build(tmp_path, tables)
    assert con.execute(
        "SELECT segment_start - ?::DATE, segment_end - ?::DATE, glucocorticoid_current FROM cohort.exposure_segments ORDER BY 1",
        [INDEX, INDEX]).fetchall() == [(0, 99, False), (100, 159, True), (160, 199, False), (200, 209, True), (210, 400, False)]
    assert con.execute(
        "SELECT start_day, stop_day, glucocorticoid_current FROM analysis.fracture_intervals ORDER BY 1").fetchall() == [
        (0, 99, False), (99, 159, True), (159, 199, False), (199, 209, True), (209, 400, False)]


def test_protocol_file_is_validated_with_a_clear_message(tmp_path):
    bad = tmp_path / "protocol.toml"
    bad.write_text("[estradiol]\ntier_bounds_pg_ml = [20, 10, 40]\n[exposure]\ngrace_period_days = -3\n")
    with pytest.raises(ProtocolError) as raised:
        load_protocol(bad)
    message = str(raised.value)
    assert "estradiol.tier_bounds_pg_ml" in message and "strictly increasing" in message
    assert "exposure.grace_period_days" in message
    bad.write_text("[exposure]\ngrace_days = 30\n")
    with pytest.raises(ProtocolError, match="exposure.grace_days: Extra inputs are not permitted"):
        load_protocol(bad)


def test_launchpad_protocol_overrides_are_validated_and_applied():
    from pipelines.resources import StudyProtocol

    assert StudyProtocol().load() == load_protocol()
    assert StudyProtocol(grace_period_days=60).load().exposure.grace_period_days == 60
    with pytest.raises(ProtocolError) as raised:
        StudyProtocol(e2_tier_bounds_pg_ml=[40, 20, 10], washout_days=-1).load()
    assert "e2_tier_bounds_pg_ml: Value error, tier bounds must be positive and strictly increasing" in str(raised.value)
    assert "washout_days: Input should be greater than or equal to 0" in str(raised.value)


def test_cohort_on_a_generated_delivery_matches_the_planted_world(tmp_path):
    from cohort.generator import generate

    truth = generate(tmp_path / "landing", patients=2000, seed=3)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ingest_delivery(con, next((tmp_path / "landing").glob("*/")))
    con.execute("UPDATE meta.deliveries SET validation_passed = true")
    con.execute(sql_text("cohort/schema"))
    for name in COHORT_SQL:
        run_sql(con, f"cohort/{name}", data_cutoff=CUTOFF, **load_protocol().sql_variables())
    attrition = dict(con.execute("SELECT step, patients_excluded FROM cohort.attrition").fetchall())
    realism = truth["realism"]["patients"]
    assert attrition["sex_at_birth"] == realism["non_male"]
    assert realism["prevalent_users"] - realism["non_male"] <= attrition["new_user"] <= realism["prevalent_users"]
    # Person-time by current estradiol tier and on AI: the generator plants outcomes on exactly these
    # exposures, so the cohort's split of follow-up must match the planted world's.
    shares = dict(con.execute(
        "SELECT 'e2_' || e2_tier, sum(stop_day - start_day) / (SELECT sum(stop_day - start_day) FROM analysis.fracture_intervals) "
        "FROM analysis.fracture_intervals GROUP BY 1").fetchall())
    for tier, planted in truth["exposure_summary"]["share_by_e2_tier"].items():
        assert shares[tier] == pytest.approx(planted, abs=0.02), tier
    (on_ai,) = con.execute(
        "SELECT sum(stop_day - start_day) FILTER (ai_current) / sum(stop_day - start_day) FROM analysis.fracture_intervals"
    ).fetchone()
    assert on_ai == pytest.approx(truth["exposure_summary"]["share_ai_current"], abs=0.01)
    # Segments and intervals start only where the exposure changes: no two adjacent ones are alike.
    for table, start, end in (("cohort.exposure_segments", "segment_start", "segment_end"),
                              ("analysis.fracture_intervals", "start_day", "stop_day - 1")):
        assert con.execute(f"""
            SELECT count(*) FROM (
                SELECT {start} AS start, lag({end}) OVER w AS previous_end,
                       lag((ai_current, ai_drug, ai_dose_mg, e2_tier, e2_tier_lcms, glucocorticoid_current)) OVER w AS previous,
                       (ai_current, ai_drug, ai_dose_mg, e2_tier, e2_tier_lcms, glucocorticoid_current) AS exposure
                FROM {table} WINDOW w AS (PARTITION BY patient_key ORDER BY {start}))
            WHERE previous_end + 1 = start AND previous IS NOT DISTINCT FROM exposure
        """).fetchone() == (0,), table
    # Intervals partition each member's follow-up exactly: contiguous from 0 to follow_up_days.
    assert con.execute("""
        SELECT count(*) FROM (
            SELECT patient_key, start_day, lag(stop_day) OVER (PARTITION BY patient_key ORDER BY start_day) AS previous_stop
            FROM analysis.fracture_intervals) WHERE previous_stop IS NOT NULL AND previous_stop <> start_day
    """).fetchone() == (0,)
    assert con.execute("""
        SELECT count(*) FROM cohort.members m LEFT JOIN (
            SELECT patient_key, min(start_day) AS first, max(stop_day) AS last, count(*) FILTER (event <> 'censored') AS events
            FROM analysis.fracture_intervals GROUP BY 1) i USING (patient_key)
        WHERE i.first <> 0 OR i.last <> m.follow_up_days
           OR i.events <> (m.follow_up_end_reason IN ('fracture', 'death'))::INTEGER
    """).fetchone() == (0,)
