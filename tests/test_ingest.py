"""Ingest: integrity, conservation, harmonization, robustness, privacy and atomicity, on real DuckDB files."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import textwrap

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort.contract import DeliveryRejected
from cohort.ingest import DeliveryHeld, ingest_delivery
from tests.conftest import PARTNER_DELIVERY
from tests.deliveries import PATIENT, csv_bytes, write_delivery


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    yield connection
    connection.close()


def rows(con, sql, params=None):
    return con.execute(sql, params or []).fetchall()


def lab(result, unit="pg/mL", loinc="2243-4", name="Estradiol", date="2024-01-10", loq=""):
    return {"patient_key": PATIENT["patient_key"], "loinc_code": loinc, "test_name": name, "result": result,
            "unit": unit, "collected_date": date, "assay_method": "LC-MS/MS", "loq": loq}


# --- integrity -------------------------------------------------------------------------------

def test_idempotent_reingest_changes_nothing(con, tmp_path):
    folder = shutil.copytree(PARTNER_DELIVERY, tmp_path / PARTNER_DELIVERY.name)
    first = ingest_delivery(con, folder)
    snapshot = {t: rows(con, f"SELECT * FROM staging.{t} ORDER BY ALL") for t in ("patients", "labs", "fractures")}
    second = ingest_delivery(con, folder)
    assert (first.status, second.status) == ("loaded", "unchanged")
    assert second.counts == first.counts
    assert {t: rows(con, f"SELECT * FROM staging.{t} ORDER BY ALL") for t in snapshot} == snapshot
    assert rows(con, "SELECT count(*) FROM raw.labs") == [(first.counts["labs"]["raw"],)]
    assert [e for (e,) in rows(con, "SELECT event FROM meta.delivery_events ORDER BY occurred_at")] == ["loaded", "unchanged"]


def test_corrected_redelivery_replaces_its_predecessor(con, tmp_path):
    folder = write_delivery(tmp_path / "v1", tables={"labs": [lab("25"), lab("30", date="2024-02-10")]})
    ingest_delivery(con, folder)
    corrected = write_delivery(tmp_path / "v2", tables={"labs": [lab("26")]}, extracted_at="2025-07-10T10:00:00Z")
    outcome = ingest_delivery(con, corrected)
    assert outcome.status == "loaded"
    assert rows(con, "SELECT value FROM staging.labs") == [(26.0,)]
    assert rows(con, "SELECT count(*) FROM raw.labs") == [(1,)]
    assert [e for (e,) in rows(con, "SELECT event FROM meta.delivery_events ORDER BY occurred_at")] == ["loaded", "replaced"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: (f / "labs.csv").write_bytes(b"tampered"), "sha256 of labs.csv does not match the manifest"),
        (lambda f: (f / "labs.csv").unlink(), "file listed in the manifest is absent: labs.csv"),
        (lambda f: (f / "notes.txt").write_text("x"), "file present but not listed in the manifest: notes.txt"),
        (lambda f: (f / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
        (lambda f: _edit_manifest(f, contract_version="2"), "unsupported contract_version '2'"),
        (lambda f: _edit_manifest(f, delivery_id="other"), "manifest delivery_id differs from the folder name"),
        (lambda f: _edit_manifest(f, files=lambda files: {**files, "labs.csv": {**files["labs.csv"], "rows": 5}}),
         "labs.csv holds 2 records but the manifest says 5"),
        (lambda f: _edit_manifest(f, files=lambda files: {k: v for k, v in files.items() if k != "dxa.csv"}),
         "file present but not listed in the manifest: dxa.csv"),
    ],
)
def test_contract_breaches_reject_the_whole_delivery(con, tmp_path, damage, reason):
    folder = write_delivery(tmp_path, tables={"labs": [lab("25"), lab("30")]})
    damage(folder)
    with pytest.raises(DeliveryRejected) as raised:
        ingest_delivery(con, folder)
    assert reason in str(raised.value)
    assert rows(con, "SELECT status, reason FROM meta.deliveries") == [("rejected", raised.value.reason)]
    for table in ("raw.patients", "raw.labs", "staging.patients", "quarantine.rows"):
        assert rows(con, f"SELECT count(*) FROM {table}") == [(0,)]


def _edit_manifest(folder, **changes):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        data[key] = value(data[key]) if callable(value) else value
    path.write_text(json.dumps(data))


def test_unsafe_delivery_id_is_rejected(con, tmp_path):
    folder = write_delivery(tmp_path, delivery_id="site a;drop")
    with pytest.raises(DeliveryRejected, match="not a valid delivery_id"):
        ingest_delivery(con, folder)


# --- conservation and harmonization ----------------------------------------------------------

def test_row_conservation_with_duplicates_and_quarantine(con, tmp_path):
    labs = [lab("25"), lab("25"), lab("25"), lab("HEMOLYZED"), lab("12", unit="furlongs"), lab("40", date="2026-01-01")]
    folder = write_delivery(tmp_path, tables={"labs": labs})
    outcome = ingest_delivery(con, folder)
    assert outcome.counts["labs"] == {"raw": 6, "staging": 1, "quarantined": 3, "duplicates": 2}
    assert rows(con, "SELECT rule, column_name, source_record, source_line FROM quarantine.rows ORDER BY source_record") == [
        ("non_numeric_result", "result", 4, 5),
        ("unknown_unit", "unit", 5, 6),
        ("after_data_cutoff", "collected_date", 6, 7),
    ]
    original = json.loads(rows(con, "SELECT original_values FROM quarantine.rows WHERE source_record = 4")[0][0])
    assert original["result"] == "HEMOLYZED" and original["source_file"] == "labs.csv"


@pytest.mark.parametrize(
    "result, unit, loinc, name, expected",
    [
        ("25", "pg/mL", "2243-4", "Estradiol", ("estradiol", 25.0, "pg/mL", "none")),
        ("91.8", "pmol/L", "14715-7", "Estradiol", ("estradiol", pytest.approx(25.0068, abs=1e-3), "pg/mL", "none")),
        ("91.8", "PMOL/L", "", "ESTRADIOL, SERUM", ("estradiol", pytest.approx(25.0068, abs=1e-3), "pg/mL", "none")),
        ("<5", "pg/ml", "2243-4", "Estradiol", ("estradiol", 5.0, "pg/mL", "left")),
        ("<18.4", "pmol/L", "14715-7", "Estradiol", ("estradiol", pytest.approx(5.0123, abs=1e-3), "pg/mL", "left")),
        (">1500", "ng/dL", "2986-8", "Testosterone", ("testosterone", 1500.0, "ng/dL", "right")),
        ("17.3", "nmol/L", "2986-8", "Testosterone", ("testosterone", pytest.approx(498.93, abs=1e-2), "ng/dL", "none")),
        ("75", "nmol/L", "14635-7", "25-OH vitamin D", ("vitamin_d", pytest.approx(30.048, abs=1e-3), "ng/mL", "none")),
        ("5.2 H", "mmol/L", "2093-3", "Cholesterol", ("cholesterol_total", pytest.approx(201.084), "mg/dL", "none")),
        ("1.7", "mmol/L", "2571-8", "Triglycerides", ("triglycerides", pytest.approx(150.569), "mg/dL", "none")),
        ("27.5", "kg/m²", "39156-5", "BMI", ("bmi", 27.5, "kg/m2", "none")),
    ],
)
def test_lab_units_and_censoring_are_harmonized(con, tmp_path, result, unit, loinc, name, expected):
    folder = write_delivery(tmp_path, tables={"labs": [lab(result, unit=unit, loinc=loinc, name=name)]})
    ingest_delivery(con, folder)
    assert rows(con, "SELECT analyte, value, unit, censoring FROM staging.labs") == [expected]
    assert rows(con, "SELECT result_raw FROM staging.labs") == [(result,)]


def test_drugs_map_by_code_then_name_and_end_dates_derive_from_supply(con, tmp_path):
    base = {"patient_key": PATIENT["patient_key"], "start_date": "2024-01-01", "dose_mg": "1", "doses_per_week": "7", "route": "oral"}
    meds = [
        {**base, "drug_name": "ARIMIDEX 1MG", "atc_code": "L02BG03", "rxnorm_code": "", "days_supply": "30", "end_date": ""},
        {**base, "drug_name": "letrozole tab", "atc_code": "", "rxnorm_code": "72965", "days_supply": "", "end_date": "2024-03-30"},
        {**base, "drug_name": "EXEMESTANE 25 MG", "atc_code": "", "rxnorm_code": "", "days_supply": "90", "end_date": ""},
        {**base, "drug_name": "ALENDRONATE 70 MG", "atc_code": "M05BA04", "rxnorm_code": "", "days_supply": "28", "end_date": ""},
        {**base, "drug_name": "PREDNISONE 5 MG", "atc_code": "H02AB07", "rxnorm_code": "", "days_supply": "10", "end_date": ""},
        {**base, "drug_name": "LISINOPRIL 10 MG", "atc_code": "C09AA03", "rxnorm_code": "", "days_supply": "30", "end_date": ""},
    ]
    ingest_delivery(con, write_delivery(tmp_path, tables={"medications": meds}))
    assert rows(con, "SELECT ingredient, drug_class, mapped_by, end_date::VARCHAR FROM staging.medications ORDER BY source_record") == [
        ("anastrozole", "aromatase_inhibitor", "atc", "2024-01-30"),
        ("letrozole", "aromatase_inhibitor", "rxnorm", "2024-03-30"),
        ("exemestane", "aromatase_inhibitor", "name", "2024-03-30"),
        ("bisphosphonate", "bisphosphonate", "atc", "2024-01-28"),
        ("glucocorticoid", "glucocorticoid", "atc", "2024-01-10"),
        (None, None, None, "2024-01-30"),
    ]


def test_dxa_is_standardized_per_manufacturer_and_raw_value_kept(con, tmp_path):
    def scan(site, maker, bmd):
        return {"patient_key": PATIENT["patient_key"], "scan_date": "2024-01-01", "skeletal_site": site, "laterality": "",
                "bmd_g_cm2": str(bmd), "t_score": "", "z_score": "", "manufacturer": maker, "scanner_model": ""}
    scans = [scan("lumbar_spine", "Hologic", 1.0), scan("lumbar_spine", "GE Lunar", 1.1), scan("total_hip", "Hologic", 1.0),
             scan("total_hip", "GE Lunar", 1.0), scan("femoral_neck", "Hologic", 0.8), scan("femoral_neck", "GE Lunar", 0.8),
             scan("femoral_neck", "Norland", 0.8), scan("radius_33", "Hologic", 0.7)]
    ingest_delivery(con, write_delivery(tmp_path, tables={"dxa": scans}))
    got = rows(con, "SELECT bmd_g_cm2, sbmd_g_cm2, standardized FROM staging.dxa ORDER BY source_record")
    expected = [1.0550 * (1.0 - 0.972) + 1.0436, 1.0436, 0.006 + 1.008, -0.031 + 0.979, 0.019 + 1.087 * 0.8,
                -0.023 + 0.939 * 0.8, None, None]
    for (bmd, sbmd, standardized), want, source in zip(got, expected, scans):
        assert bmd == float(source["bmd_g_cm2"])
        assert (sbmd is None) == (want is None) and standardized == (want is not None)
        if want is not None:
            assert sbmd == pytest.approx(want, abs=1e-12)


def test_fracture_derivation_follows_the_contract(con, tmp_path):
    def dx(key, code, date):
        return {"patient_key": key, "icd10_code": code, "diagnosis_date": date, "encounter_type": "inpatient"}
    other = {**PATIENT, "patient_key": "PT00000002"}
    diagnoses = [
        dx("PT00000001", "S72.001A", "2024-01-01"),   # hip fracture, ER visit
        dx("PT00000001", "S72001A", "2024-01-02"),    # the admission: same fracture
        dx("PT00000001", "S72.001D", "2024-02-15"),   # subsequent encounter: not a new fracture
        dx("PT00000001", "S72.001A", "2024-03-31"),   # 90 days after the first code: still the same fracture
        dx("PT00000001", "S72.001A", "2024-04-01"),   # 91 days after: a new hip fracture
        dx("PT00000001", "S52.501A", "2024-01-03"),   # distal radius: a different site, a fracture of its own
        dx("PT00000001", "S72.001S", "2024-06-01"),   # sequela: not a fracture
        dx("PT00000002", "M84.50XA", "2024-01-01"),   # pathological fracture: never a fragility fracture
        dx("PT00000002", "C79.51", "2024-01-01"),     # bone metastasis
        dx("PT00000002", "M80.08XA", "2024-05-01"),   # osteoporotic vertebral fracture
        dx("PT00000002", "M48.50XA", "2024-05-20"),   # collapsed vertebra, same site within 90 days: same fracture
        dx("PT00000002", "s32.000a", "2024-09-01"),   # lumbar vertebra, lower case, 123 days later: new
    ]
    ingest_delivery(con, write_delivery(tmp_path, tables={"patients": [PATIENT, other], "diagnoses": diagnoses}))
    assert rows(con, "SELECT patient_key, fracture_date::VARCHAR, fracture_site, n_codes FROM staging.fractures ORDER BY ALL") == [
        ("PT00000001", "2024-01-01", "hip", 3),
        ("PT00000001", "2024-01-03", "distal_forearm", 1),
        ("PT00000001", "2024-04-01", "hip", 1),
        ("PT00000002", "2024-05-01", "vertebral", 2),
        ("PT00000002", "2024-09-01", "vertebral", 1),
    ]


# --- robustness ------------------------------------------------------------------------------

LAB_HEADER = b"patient_key,loinc_code,test_name,result,unit,collected_date,assay_method,loq\n"


@pytest.mark.parametrize(
    "name, data, records, message",
    [
        ("labs.csv", LAB_HEADER + b"PT00000001,2243-4,Estradiol,\xff\xfe,pg/mL,2024-01-01,,\n", 1,
         "labs.csv could not be read: line 2: Invalid unicode"),
        ("labs.csv", LAB_HEADER.replace(b",", b";") + b"PT00000001;2243-4;E2;25;pg/mL;2024-01-01;;\n", 1,
         "labs.csv lacks required column(s): patient_key, test_name, result, collected_date (is it comma-separated?)"),
        ("labs.csv", LAB_HEADER + b"PT00000001,2243-4,Estradiol,25\n", 1,
         "labs.csv could not be read: line 2: Expected Number of Columns: 8 Found: 4"),
        ("labs.csv", LAB_HEADER + b'PT00000001,2243-4,"Estradiol,25,pg/mL,2024-01-01,,\n', 1,
         "labs.csv could not be read: line 2: Value with unterminated quote found."),
        ("labs.csv.gz", b"\x1f\x8b\x08\x00garbage" + bytes(range(256)), 50,
         "labs.csv.gz is not a valid gzip file"),
        ("labs.csv", b"", 0, "labs.csv is empty: a header row is required"),
    ],
)
def test_malformed_files_reject_with_a_specific_message(con, tmp_path, name, data, records, message):
    folder = write_delivery(tmp_path, files={name: data}, rows={name: records})
    with pytest.raises(DeliveryRejected) as raised:
        ingest_delivery(con, folder)
    assert message in str(raised.value)
    assert "\\xff" not in str(raised.value) and "Original Line" not in str(raised.value)
    assert rows(con, "SELECT count(*) FROM raw.patients") == [(0,)]


def test_truncated_gzip_stream_is_rejected(con, tmp_path):
    body = LAB_HEADER + b"".join(b"PT%08d,2243-4,E2,%d,pg/mL,2024-01-01,,\n" % (i, i * 7919 % 997) for i in range(5000))
    data = gzip.compress(body)
    data = data[: len(data) // 2]  # the header decompresses; the stream then ends early
    folder = write_delivery(tmp_path, files={"labs.csv.gz": data}, rows={"labs.csv.gz": 5000})
    with pytest.raises(DeliveryRejected, match="labs.csv.gz could not be read: the gzip stream is corrupt or ends early") as raised:
        ingest_delivery(con, folder)
    assert str(tmp_path) not in str(raised.value)


@pytest.mark.parametrize(
    "value, rule",
    [("inf", "non_finite_number"), ("NaN", "non_finite_number"), ("1e400", "non_finite_number"),
     ("9" * 400, "non_finite_number"), ("-4", "implausible_value"), ("12,5", "non_numeric_result")],
)
def test_non_finite_and_huge_numbers_are_quarantined(con, tmp_path, value, rule):
    ingest_delivery(con, write_delivery(tmp_path, tables={"labs": [lab(value)]}))
    assert rows(con, "SELECT rule, column_name FROM quarantine.rows") == [(rule, "result")]


@pytest.mark.parametrize("date", ["03/15/2024", "15.03.2024", "20240315", "2024-02-30", "yesterday"])
def test_other_date_formats_are_quarantined_not_guessed(con, tmp_path, date):
    ingest_delivery(con, write_delivery(tmp_path, tables={"labs": [lab("25", date=date)]}))
    assert rows(con, "SELECT rule, column_name FROM quarantine.rows") == [("invalid_date", "collected_date")]
    assert rows(con, "SELECT count(*) FROM staging.labs") == [(0,)]


def test_parquet_with_wrong_types_is_read_as_text_and_checked(con, tmp_path):
    table = pa.table({
        "patient_key": ["PT00000001", "PT00000001"], "loinc_code": ["2243-4", "2243-4"], "test_name": ["E2", "E2"],
        "result": [25.5, 30.0],                      # a float where the contract says string
        "unit": ["pg/mL", "pg/mL"],
        "collected_date": pa.array([19723, 19724], pa.int64()),   # epoch days, not a date
        "assay_method": [None, None], "loq": [None, None],
    })
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    folder = write_delivery(tmp_path, files={"labs.parquet": buffer.getvalue().to_pybytes()}, rows={"labs.parquet": 2})
    outcome = ingest_delivery(con, folder)
    assert outcome.counts["labs"] == {"raw": 2, "staging": 0, "quarantined": 2, "duplicates": 0}
    assert rows(con, "SELECT DISTINCT rule, column_name FROM quarantine.rows") == [("invalid_date", "collected_date")]


def test_text_is_stored_verbatim(con, tmp_path):
    hostile = "'); DROP TABLE labs;--"
    patient = {**PATIENT, "race": hostile}
    ingest_delivery(con, write_delivery(tmp_path, tables={"patients": [patient]}))
    assert rows(con, "SELECT race FROM staging.patients") == [(hostile,)]
    assert rows(con, "SELECT count(*) FROM raw.labs") == [(0,)]


def test_bom_crlf_quoted_newlines_and_extra_columns(con, tmp_path):
    patients = [{**PATIENT, "note": 'first line\r\nsecond, "quoted"'}, {**PATIENT, "patient_key": "PT00000002", "note": ""}]
    data = b"\xef\xbb\xbf" + csv_bytes(patients, ["note", *PATIENT], line_end="\r\n")
    folder = write_delivery(tmp_path, files={"patients.csv": data}, rows={"patients.csv": 2})
    outcome = ingest_delivery(con, folder)
    assert outcome.extra_columns == {"patients": ["note"]}
    assert rows(con, "SELECT source_record, source_line, extra_columns->>'note' FROM raw.patients ORDER BY 1") == [
        (1, 2, 'first line\r\nsecond, "quoted"'), (2, 4, None)
    ]
    assert rows(con, "SELECT count(*) FROM staging.patients") == [(2,)]


# --- privacy ---------------------------------------------------------------------------------

SECRET_SSN = "078-05-1120"


@pytest.mark.parametrize(
    "change, finding",
    [
        ({"race": SECRET_SSN}, "patients.csv column 'race': 1 row(s) looks like ssn"),
        ({"ethnicity": "john.doe@example.org"}, "patients.csv column 'ethnicity': 1 row(s) looks like email"),
        ({"patient_name": "John Doe"}, "patients.csv column 'patient_name': 1 row(s) is named like a direct identifier"),
        ({"home": "42 Elm Street"}, "patients.csv column 'home': 1 row(s) looks like street address"),
        ({"contact": "(555) 123-4567"}, "patients.csv column 'contact': 1 row(s) looks like phone"),
    ],
)
def test_direct_identifiers_hold_the_delivery_without_echoing_values(con, tmp_path, change, finding):
    patient = {**PATIENT, **change}
    folder = write_delivery(tmp_path, files={"patients.csv": csv_bytes([patient])}, rows={"patients.csv": 1})
    with pytest.raises(DeliveryHeld) as raised:
        ingest_delivery(con, folder)
    assert finding in str(raised.value)
    assert rows(con, "SELECT status FROM meta.deliveries") == [("held",)]
    assert rows(con, "SELECT count(*) FROM raw.patients") == [(0,)]
    dump = json.dumps(rows(con, "SELECT * FROM meta.deliveries") + rows(con, "SELECT * FROM meta.delivery_events"), default=str)
    for value in change.values():
        if value not in ("John Doe",) or "patient_name" not in change:
            assert value not in dump and value not in str(raised.value)


def test_drug_and_analyte_names_are_not_mistaken_for_identifiers(con, tmp_path):
    meds = [{"patient_key": PATIENT["patient_key"], "drug_name": "TESTOSTERONE CYPIONATE 200 MG/ML INJ", "start_date": "2024-01-01",
             "days_supply": "28", "route": "intramuscular"},
            {"patient_key": PATIENT["patient_key"], "drug_name": "Anastrozole 1 mg tablet (Arimidex)", "start_date": "2024-01-01",
             "days_supply": "30", "route": "oral"}]
    outcome = ingest_delivery(con, write_delivery(tmp_path, tables={"medications": meds, "labs": [lab("<5", name="Estradiol, LC/MS")]}))
    assert outcome.status == "loaded"


# --- atomicity -------------------------------------------------------------------------------

def test_failure_mid_load_leaves_the_warehouse_as_it_was(con, tmp_path, monkeypatch):
    ingest_delivery(con, write_delivery(tmp_path / "a", "site_a_2025q1", cutoff="2025-03-31"))
    before = {t: rows(con, f"SELECT * FROM {t} ORDER BY ALL") for t in ("meta.deliveries", "staging.patients", "raw.patients")}

    import cohort.ingest as ingest_module

    real = ingest_module.sql_text

    def failing(name, **kw):
        if name == "staging/dxa":
            raise RuntimeError("injected failure")
        return real(name, **kw)

    monkeypatch.setattr(ingest_module, "sql_text", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        ingest_delivery(con, write_delivery(tmp_path / "b", "site_a_2025q2", tables={"labs": [lab("25")]}))
    assert {t: rows(con, f"SELECT * FROM {t} ORDER BY ALL") for t in before} == before
    assert rows(con, "SELECT count(*) FROM raw.labs") == [(0,)]


def test_killed_process_mid_ingest_leaves_the_warehouse_as_it_was(tmp_path):
    database = tmp_path / "warehouse.duckdb"
    first = write_delivery(tmp_path / "a", "site_a_2025q1", cutoff="2025-03-31")
    second = write_delivery(tmp_path / "b", "site_a_2025q2", tables={"labs": [lab("25")]})
    with duckdb.connect(str(database)) as con:
        ingest_delivery(con, first)
    script = textwrap.dedent(f"""
        import os, signal, duckdb
        import cohort.ingest as ingest
        real = ingest.sql_text
        def killing(name, **kw):
            if name == "staging/dxa":
                os.kill(os.getpid(), signal.SIGKILL)
            return real(name, **kw)
        ingest.sql_text = killing
        ingest.ingest_delivery(duckdb.connect({str(database)!r}), __import__("pathlib").Path({str(second)!r}))
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert process.returncode == -9
    with duckdb.connect(str(database), read_only=True) as con:
        assert rows(con, "SELECT delivery_id, status FROM meta.deliveries") == [("site_a_2025q1", "loaded")]
        assert rows(con, "SELECT count(*) FROM raw.labs") == [(0,)]
        assert rows(con, "SELECT DISTINCT delivery_id FROM raw.patients") == [("site_a_2025q1",)]


def test_row_conservation_check_finds_a_lost_row(con, tmp_path):
    from cohort.sql import set_variables, sql_text

    ingest_delivery(con, write_delivery(tmp_path, tables={"labs": [lab("25"), lab("25"), lab("HEMOLYZED")]}))
    set_variables(con, delivery_id="site_a_2025q2")
    assert con.execute(sql_text("staging/row_conservation")).fetchall() == []
    con.execute("DELETE FROM staging.labs")  # a row lost between layers
    assert [r[0] for r in con.execute(sql_text("staging/row_conservation")).fetchall()] == ["labs"]
