"""Tests for cohort.generator: contract conformance, determinism, planted truth and exact defect counts.

Everything the tests check is re-derived from the delivered files with an
independent implementation of the contract and of the exposure definitions
(daily grids in numpy), never from the generator's internals.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from cohort.generator import generate

TABLES = ("patients", "medications", "labs", "dxa", "diagnoses")
CONTRACT = {
    "patients": {"patient_key": pl.String, "sex_at_birth": pl.String, "birth_year": pl.Int32,
                 "age_90_plus": pl.Boolean, "race": pl.String, "ethnicity": pl.String,
                 "enrollment_start": pl.Date, "enrollment_end": pl.Date, "death_date": pl.Date},
    "medications": {"patient_key": pl.String, "drug_name": pl.String, "rxnorm_code": pl.String,
                    "atc_code": pl.String, "start_date": pl.Date, "days_supply": pl.Int32, "end_date": pl.Date,
                    "dose_mg": pl.Float64, "doses_per_week": pl.Float64, "route": pl.String},
    "labs": {"patient_key": pl.String, "loinc_code": pl.String, "test_name": pl.String, "result": pl.String,
             "unit": pl.String, "collected_date": pl.Date, "assay_method": pl.String, "loq": pl.Float64},
    "dxa": {"patient_key": pl.String, "scan_date": pl.Date, "skeletal_site": pl.String, "laterality": pl.String,
            "bmd_g_cm2": pl.Float64, "t_score": pl.Float64, "z_score": pl.Float64, "manufacturer": pl.String,
            "scanner_model": pl.String},
    "diagnoses": {"patient_key": pl.String, "icd10_code": pl.String, "diagnosis_date": pl.Date,
                  "encounter_type": pl.String},
}
DATE_COLUMNS = {"patients": ["enrollment_start", "enrollment_end", "death_date"], "medications": ["start_date"],
                "labs": ["collected_date"], "dxa": ["scan_date"], "diagnoses": ["diagnosis_date"]}
KNOWN_UNITS = {"pg/ml", "pmol/l", "ng/dl", "nmol/l", "ng/ml", "mg/dl", "mmol/l", "kg/m2"}
FEMORAL_NECK_SBMD = {"Hologic": (1.087, 0.019), "GE Lunar": (0.939, -0.023)}   # contract: sBMD = a * BMD + b
NUMBER = r"^-?[0-9]+(\.[0-9]+)?( [HL])?$"


# ----------------------------------------------------------------------------- reading deliveries

def read_table(folder: Path, table: str) -> pl.DataFrame:
    """A delivered table with contract types, whatever its format."""
    (path,) = [p for p in folder.iterdir() if p.name.split(".")[0] == table]
    if path.name.endswith(".parquet"):
        return pl.read_parquet(path)
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    raw = pl.read_csv(io.BytesIO(data), infer_schema=False)
    casts = []
    for col, dtype in CONTRACT[table].items():
        if dtype == pl.Date:
            casts.append(pl.col(col).str.to_date("%Y-%m-%d"))
        elif dtype == pl.Boolean:
            casts.append(pl.col(col) == "true")
        else:
            casts.append(pl.col(col).cast(dtype))
    return raw.with_columns(casts)


def record_count(path: Path) -> int:
    """Records in a file, counted independently (csv module for CSV: quoted newlines are one record)."""
    if path.name.endswith(".parquet"):
        return pq.read_metadata(path).num_rows
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))) - 1


def deliveries(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def cutoff_of(folder: Path) -> date:
    return date.fromisoformat(json.loads((folder / "manifest.json").read_text())["data_cutoff"])


def days(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Int32)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def parquet_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("parquet_world")
    truth = generate(out, patients=5000, seed=11, fmt="parquet")
    folder = deliveries(out)[0]
    return folder, truth, {t: read_table(folder, t) for t in TABLES}


@pytest.fixture(scope="module")
def csv_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("csv_world")
    truth = generate(out, patients=2400, sites=2, seed=5, fmt="csv")
    return out, truth


@pytest.fixture(scope="module")
def multi_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi_world")
    truth = generate(out, patients=1500, sites=3, quarters=2, seed=3, fmt="parquet")
    return out, truth


@pytest.fixture(scope="module")
def defect_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("defect_world")
    truth = generate(out, patients=2000, sites=2, quarters=2, seed=8, fmt="csv.gz", defects=0.02)
    return out, truth


# ----------------------------------------------------------------------------- determinism and layout

@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_same_seed_gives_byte_identical_files(tmp_path, fmt):
    def digests(out: Path) -> dict[str, str]:
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file()}

    kwargs = dict(patients=600, sites=2, quarters=2, fmt=fmt, defects=0.01)
    generate(tmp_path / "a", seed=42, **kwargs)
    generate(tmp_path / "b", seed=42, **kwargs)
    generate(tmp_path / "c", seed=43, **kwargs)
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert len(a) == 1 + 4 * 6 and a == b
    assert a["site01_2025q2/patients." + fmt] != c["site01_2025q2/patients." + fmt]
    if fmt == "csv.gz":   # gzip member header: no file name (FLG.FNAME unset), MTIME = 0
        header = (tmp_path / "a" / "site01_2025q2" / "labs.csv.gz").read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b" and not header[3] & 0x08 and header[4:8] == b"\0\0\0\0"


def test_manifests_match_files(csv_world, multi_world, defect_world):
    for out, truth in (csv_world, multi_world, defect_world):
        for folder in deliveries(out):
            manifest = json.loads((folder / "manifest.json").read_text())
            assert list(manifest) == ["contract_version", "delivery_id", "source_site", "extracted_at",
                                      "data_cutoff", "deidentification", "files"]
            assert manifest["contract_version"] == "1" and manifest["deidentification"] == "date_shifted"
            assert manifest["delivery_id"] == folder.name and re.fullmatch(r"site\d\d_\d{4}q[1-4]", folder.name)
            assert folder.name.startswith(manifest["source_site"] + "_")
            extracted = date.fromisoformat(manifest["extracted_at"][:10])
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["extracted_at"])
            assert 0 < (extracted - cutoff_of(folder)).days <= 10
            present = {p.name for p in folder.iterdir()} - {"manifest.json"}
            assert set(manifest["files"]) == present and {n.split(".")[0] for n in present} == set(TABLES)
            for name, meta in manifest["files"].items():
                assert meta["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
                assert meta["rows"] == record_count(folder / name)
            assert truth["deliveries"][folder.name]["files"] == manifest["files"]


def test_contract_columns_types_and_value_sets(parquet_world, csv_world):
    frames = [parquet_world[2]] + [{t: read_table(f, t) for t in TABLES} for f in deliveries(csv_world[0])]
    schema = pq.read_schema(parquet_world[0] / "labs.parquet")
    assert str(schema.field("collected_date").type) == "date32[day]"
    for tables in frames:
        for table, frame in tables.items():
            assert dict(frame.schema) == CONTRACT[table], table
            assert frame["patient_key"].str.contains(r"^[A-Za-z0-9_-]{8,64}$").all()
        p, m, lab, d, x = (tables[t] for t in TABLES)
        assert p["patient_key"].is_unique().all()
        assert set(p["sex_at_birth"]) <= {"M", "F", "U"}
        assert (p["birth_year"].is_null() == p["age_90_plus"]).all()
        assert (p["enrollment_start"] <= p["enrollment_end"]).all()
        assert set(m["route"].drop_nulls()) <= {"oral", "intramuscular", "subcutaneous", "transdermal",
                                                 "intravenous", "nasal"}
        assert m.filter(pl.col("days_supply").is_null() & pl.col("end_date").is_null())["atc_code"].drop_nulls() \
            .is_in(["G03BA03"]).all()        # only a few testosterone rows lack both
        assert set(d["skeletal_site"]) == {"lumbar_spine", "femoral_neck", "total_hip", "radius_33"}
        hip = d["skeletal_site"].is_in(["femoral_neck", "total_hip"])
        assert (d["laterality"].is_not_null() == hip).all() and set(d["laterality"].drop_nulls()) <= {"left", "right"}
        assert set(d["manufacturer"]) <= {"Hologic", "GE Lunar", "Norland"}
        assert d["bmd_g_cm2"].is_between(0.2, 2.5).all()
        assert set(x["encounter_type"].drop_nulls()) <= {"inpatient", "outpatient", "emergency"}
        assert x["icd10_code"].str.contains(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$").all()
        assert lab["unit"].str.to_lowercase().is_in(list(KNOWN_UNITS)).all()


def test_dates_are_shifted_within_enrollment_and_cutoff(parquet_world, csv_world, multi_world):
    folders = [parquet_world[0]] + deliveries(csv_world[0]) + deliveries(multi_world[0])
    for folder in folders:
        cutoff = cutoff_of(folder)
        p = read_table(folder, "patients")
        assert (p["enrollment_end"] <= cutoff).all() and (p["death_date"].drop_nulls() <= cutoff).all()
        window = p.select("patient_key", "enrollment_start", "enrollment_end")
        for table, cols in DATE_COLUMNS.items():
            if table == "patients":
                continue
            frame = read_table(folder, table).join(window, on="patient_key", how="left")
            assert frame["enrollment_start"].null_count() == 0
            col = pl.col(cols[0])
            assert frame.filter((col < pl.col("enrollment_start")) | (col > pl.col("enrollment_end"))).height == 0
        m = read_table(folder, "medications")
        running = m.filter(pl.col("end_date") > cutoff)      # the only dates allowed past the cutoff
        assert (running["start_date"] <= cutoff).all()
        if folder == parquet_world[0]:
            assert running.height > 0


# ----------------------------------------------------------------------------- independent exposure derivation

def ai_rows(m: pl.DataFrame) -> pl.DataFrame:
    name = pl.col("drug_name").str.to_uppercase()
    is_ai = (pl.col("atc_code").is_in(["L02BG03", "L02BG04", "L02BG06"]).fill_null(False)
             | pl.col("rxnorm_code").is_in(["84857", "72965"]).fill_null(False)
             | name.str.contains("ANASTROZOLE|LETROZOLE|EXEMESTANE"))
    covered = pl.when(pl.col("days_supply").is_not_null()).then(days("start_date") + pl.col("days_supply") - 1) \
        .otherwise(days("end_date"))
    return m.filter(is_ai).select("patient_key", days("start_date").alias("start"), (covered + 30).alias("stop"),
                                  name.alias("name"))


def index_dates(m: pl.DataFrame) -> pl.DataFrame:
    trt = (pl.col("atc_code") == "G03BA03").fill_null(False) | (pl.col("rxnorm_code") == "10379").fill_null(False) \
        | pl.col("drug_name").str.to_uppercase().str.contains("TESTOSTERONE")
    return m.filter(trt).group_by("patient_key").agg(days("start_date").min().alias("index"))


def estradiol(lab: pl.DataFrame) -> pl.DataFrame:
    """Estradiol results as (patient_key, day, pg_ml, tier); tier 0..3 numeric tiers, 4 unknown."""
    e2 = lab.filter(pl.col("loinc_code").is_in(["2243-4", "14715-7"]))
    per_pg = pl.when(pl.col("unit").str.to_lowercase() == "pmol/l").then(3.671).otherwise(1.0)
    numeric = pl.col("result").str.contains(NUMBER)
    below = pl.col("result").str.starts_with("<")
    value = pl.col("result").str.replace(r" [HL]$", "").str.replace("<", "").cast(pl.Float64) / per_pg
    tier = (pl.when(numeric).then(pl.when(value < 10).then(0).when(value < 20).then(1).when(value < 40).then(2)
                                  .otherwise(3))
            .otherwise(pl.when(value <= 10).then(0).otherwise(4)))
    return e2.filter(numeric | below).select("patient_key", days("collected_date").alias("day"),
                                              value.alias("pg_ml"), numeric.alias("numeric"), tier.alias("tier"))


class DailyGrid:
    """Per-patient daily exposure matrices over the whole date range of a delivery."""

    def __init__(self, patients: pl.DataFrame, m: pl.DataFrame, lab: pl.DataFrame):
        keys = patients["patient_key"].to_list()
        self.row = {k: i for i, k in enumerate(keys)}
        ai = ai_rows(m)
        e2 = estradiol(lab)
        self.d0 = patients["enrollment_start"].cast(pl.Int32).min()        # every record lies in enrollment
        width = max(ai["stop"].max(), patients["enrollment_end"].cast(pl.Int32).max()) - self.d0 + 2
        n = len(keys)
        diff = np.zeros((n, width + 1), dtype=np.int32)
        r = np.array([self.row[k] for k in ai["patient_key"]])
        np.add.at(diff, (r, ai["start"].to_numpy() - self.d0), 1)
        np.add.at(diff, (r, ai["stop"].to_numpy() + 1 - self.d0), -1)
        self.ai = np.cumsum(diff, axis=1)[:, :width] > 0
        last = np.full((n, width), -1, dtype=np.int32)
        tier_at = np.full((n, width), 4, dtype=np.int8)
        r = np.array([self.row[k] for k in e2["patient_key"]])
        c = e2["day"].to_numpy() - self.d0
        last[r, c] = c
        tier_at[r, c] = e2["tier"].to_numpy()
        np.maximum.accumulate(last, axis=1, out=last)
        cols = np.arange(width)
        fresh = (last >= 0) & (cols - last < 180)
        self.tier = np.where(fresh, np.take_along_axis(tier_at, np.maximum(last, 0), axis=1), 4)
        self.ai_cum = np.concatenate([np.zeros((n, 1), np.int32), np.cumsum(self.ai, axis=1, dtype=np.int32)], 1)
        self.tier_cum = {k: np.concatenate([np.zeros((n, 1), np.int32), np.cumsum(self.tier == k, 1, dtype=np.int32)], 1)
                         for k in range(5)}

    def ai_on(self, keys, day) -> np.ndarray:
        return self.ai[[self.row[k] for k in keys], np.asarray(day) - self.d0]

    def years(self, keys, start, stop) -> dict[str, np.ndarray]:
        """Years on AI and in each tier over the days [start, stop)."""
        r = np.array([self.row[k] for k in keys])
        a, b = np.asarray(start) - self.d0, np.asarray(stop) - self.d0
        out = {"ai": (self.ai_cum[r, b] - self.ai_cum[r, a]) / 365.25}
        for k, name in enumerate(["lt10", "10_20", "20_40", "ge40", "unknown"]):
            out[name] = (self.tier_cum[k][r, b] - self.tier_cum[k][r, a]) / 365.25
        return out


@pytest.fixture(scope="module")
def grid(parquet_world):
    _, _, t = parquet_world
    return DailyGrid(t["patients"], t["medications"], t["labs"])


def test_estradiol_on_trt_and_on_ai(parquet_world, grid):
    _, truth, t = parquet_world
    e2 = estradiol(t["labs"]).filter("numeric").join(index_dates(t["medications"]), on="patient_key") \
        .filter(pl.col("day") > pl.col("index"))
    on_ai = grid.ai_on(e2["patient_key"], e2["day"].to_numpy())
    values = e2["pg_ml"].to_numpy()
    assert 22 <= np.median(values[~on_ai]) <= 35
    assert np.mean(values[on_ai] < 20) >= 0.85 and np.mean(values[on_ai] < 10) >= 0.5
    assert truth["estradiol"]["numeric_results_on_trt_current_ai"]["share_lt20"] >= 0.85


def test_baseline_bmd_in_reference_ranges(parquet_world):
    _, _, t = parquet_world
    p = t["patients"].join(index_dates(t["medications"]), on="patient_key")
    age = pl.col("index").cast(pl.Date).dt.year() - pl.col("birth_year")
    men = p.filter((pl.col("sex_at_birth") == "M") & age.is_between(51, 80)).select("patient_key", "index")
    base = t["dxa"].filter(pl.col("manufacturer") == "Hologic").join(men, on="patient_key") \
        .filter((days("scan_date") - pl.col("index")).is_between(-365, 90))
    for site, (mean, sd) in {"lumbar_spine": (1.06, 0.15), "total_hip": (0.99, 0.14),
                             "femoral_neck": (0.80, 0.13)}.items():
        bmd = base.filter(pl.col("skeletal_site") == site)["bmd_g_cm2"]
        assert bmd.len() > 500
        assert abs(bmd.mean() - mean) < 0.04 and abs(bmd.std() - sd) < 0.04, site


def _fractures(t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """First fragility fracture per patient after index (contract rules), with index and enrollment end."""
    code = pl.col("icd10_code").str.replace(".", "", literal=True)
    fragility = code.str.contains(r"^(S72[012]|S220|S320|M485|M8008|S52[56]|S422|M80)") \
        & (code.str.len_chars() == 7) & code.str.slice(6, 1).is_in(["A", "B", "C"])
    first = t["diagnoses"].filter(fragility).join(index_dates(t["medications"]), on="patient_key") \
        .filter(days("diagnosis_date") > pl.col("index")).group_by("patient_key") \
        .agg(days("diagnosis_date").min().alias("fracture"))
    return t["patients"].join(index_dates(t["medications"]), on="patient_key") \
        .join(first, on="patient_key", how="left") \
        .select("patient_key", "index", days("enrollment_end").alias("end"), "fracture")


def test_fracture_incidence_and_coding(parquet_world):
    _, truth, t = parquet_world
    f = _fractures(t)
    events = f["fracture"].is_not_null().sum()
    person_years = (pl.min_horizontal("fracture", "end") - pl.col("index"))
    rate = 1000 * events / (f.select(person_years.sum()).item() / 365.25)
    assert events == truth["fracture_model"]["observed"]["first_fractures"]
    assert 7 <= rate <= 15
    assert abs(rate - truth["fracture_model"]["observed"]["rate_per_1000py"]) < 0.05
    x = t["diagnoses"].with_columns(code=pl.col("icd10_code").str.replace(".", "", literal=True))
    initial = x.filter(pl.col("code").str.contains(r"^S72[012].{2}A$")).group_by("patient_key", "code") \
        .agg(pl.col("diagnosis_date").sort(), pl.col("encounter_type").sort_by("diagnosis_date"))
    er_then_admission = initial.filter(pl.col("diagnosis_date").list.len() >= 2)
    assert er_then_admission.height > 0
    encounters = er_then_admission["encounter_type"]
    assert (encounters.list.contains("emergency") & encounters.list.contains("inpatient")).mean() > 0.8
    first_with_follow_up = f.filter(pl.col("fracture").is_not_null()).join(
        x.filter(pl.col("code").str.contains(r"^(S|M80|M48).{5}[DGKPS]$")), on="patient_key")
    assert (first_with_follow_up["diagnosis_date"].cast(pl.Int32) > first_with_follow_up["fracture"]).all()
    codes = set(x["code"])
    assert {"C7951"} <= codes and any(c.startswith("M845") for c in codes)
    assert any(c.endswith("S") for c in codes) and any(re.fullmatch(r"S\d\d\.\d{3}A|S\d{5}A", c) for c in
                                                        t["diagnoses"]["icd10_code"])


def _bmd_changes(t: dict[str, pl.DataFrame], grid: DailyGrid) -> pl.DataFrame:
    """Annualized femoral-neck log-sBMD change baseline -> last scan, with covariates and exposure years."""
    fn = t["dxa"].filter((pl.col("skeletal_site") == "femoral_neck") & pl.col("manufacturer").is_in(["Hologic", "GE Lunar"]))
    hologic = pl.col("manufacturer") == "Hologic"
    a = pl.when(hologic).then(FEMORAL_NECK_SBMD["Hologic"][0]).otherwise(FEMORAL_NECK_SBMD["GE Lunar"][0])
    b = pl.when(hologic).then(FEMORAL_NECK_SBMD["Hologic"][1]).otherwise(FEMORAL_NECK_SBMD["GE Lunar"][1])
    idx = index_dates(t["medications"])
    fn = fn.with_columns(log_sbmd=(a * pl.col("bmd_g_cm2") + b).log(), day=days("scan_date")).join(idx, on="patient_key")
    base = fn.filter((pl.col("day") - pl.col("index")).is_between(-365, 90)) \
        .sort((pl.col("day") - pl.col("index")).abs()).group_by("patient_key").first() \
        .select("patient_key", pl.col("day").alias("b_day"), pl.col("log_sbmd").alias("b_log"))
    last = fn.join(base, on="patient_key").filter(pl.col("day") > pl.col("b_day")).sort("day") \
        .group_by("patient_key").last().select("patient_key", "day", "log_sbmd", "b_day", "b_log")
    bmi = t["labs"].filter(pl.col("loinc_code") == "39156-5").join(idx, on="patient_key") \
        .filter(days("collected_date") <= pl.col("index")).sort("collected_date").group_by("patient_key").last() \
        .select("patient_key", pl.col("result").cast(pl.Float64).alias("bmi"))
    p = t["patients"].join(idx, on="patient_key").select(
        "patient_key", ((pl.col("index").cast(pl.Date).dt.year() - pl.col("birth_year") - 65) / 10).alias("age_c"))
    ai_users = ai_rows(t["medications"]).select("patient_key").unique().with_columns(ever_ai=pl.lit(1.0))
    d = last.join(bmi, on="patient_key").join(p, on="patient_key").join(ai_users, on="patient_key", how="left") \
        .drop_nulls(["age_c", "bmi"]).with_columns(pl.col("ever_ai").fill_null(0.0))
    yrs = grid.years(d["patient_key"], d["b_day"].to_numpy(), d["day"].to_numpy())
    t_years = (d["day"] - d["b_day"]).to_numpy() / 365.25
    return d.with_columns(
        y=pl.Series(100 * (d["log_sbmd"] - d["b_log"]).to_numpy() / t_years), bmi_c=(pl.col("bmi") - 28) / 5,
        t_years=pl.Series(t_years),
        **{f"x_{k}": pl.Series(v / t_years) for k, v in yrs.items()})


def _wls(d: pl.DataFrame, cols: list[str]) -> dict[str, float]:
    """Least squares weighted by 1 / Var(annualized change): random slope (0.5 %/yr) + two scans' error (1.5 %)."""
    t_years = d["t_years"].to_numpy()
    w = np.sqrt(1 / (0.5**2 + 2 * 1.5**2 / t_years**2))
    x = np.column_stack([np.ones(d.height)] + [d[c].to_numpy() for c in cols])
    coef, *_ = np.linalg.lstsq(x * w[:, None], d["y"].to_numpy() * w, rcond=None)
    return dict(zip(["intercept"] + cols, coef))


def test_planted_bmd_effects_are_recoverable_and_confounded(parquet_world, grid):
    _, truth, t = parquet_world
    planted = truth["bmd_model"]["sites"]["femoral_neck"]
    d = _bmd_changes(t, grid)
    assert d.height > 2000
    exposures = ["x_ai", "x_lt10", "x_10_20", "x_ge40", "x_unknown"]
    adjusted = _wls(d, ["age_c", "bmi_c"] + exposures)
    # Per-patient two-scan changes are noisy: tolerances are about two standard errors at this size.
    assert abs(adjusted["x_ai"] - planted["ai_current"]) < 0.35
    assert abs(adjusted["x_lt10"] - planted["e2_lt10"]) < 0.45
    assert abs(adjusted["bmi_c"] - planted["bmi_x_time_per_5"]) < 0.1
    assert abs(adjusted["age_c"] - planted["age_x_time_per_10y"]) < 0.1
    assert abs(adjusted["intercept"] - planted["time"]) < 0.15
    # Confounding: AI users are heavier, and leaving BMI out biases the AI effect towards zero.
    bmi_ai = d.filter(pl.col("ever_ai") == 1)["bmi"].mean()
    assert bmi_ai - d.filter(pl.col("ever_ai") == 0)["bmi"].mean() > 2.5
    assert truth["confounding"]["mean_bmi_ai"] > truth["confounding"]["mean_bmi_non_ai"] + 2.5
    no_bmi = _wls(d, ["age_c"] + exposures)
    assert no_bmi["x_ai"] - adjusted["x_ai"] > 0.25
    crude = _wls(d, ["ever_ai"])
    assert abs(crude["ever_ai"] - planted["ai_current"]) > 0.2


def test_realism_features(parquet_world, csv_world):
    _, truth, t = parquet_world
    p, m, lab, d, x = (t[k] for k in TABLES)
    assert 0.003 < (p["sex_at_birth"] != "M").mean() < 0.02
    idx = index_dates(m).join(p, on="patient_key")
    prevalent = (idx["index"] - idx["enrollment_start"].cast(pl.Int32) < 365).mean()
    assert 0.07 < prevalent < 0.13
    ai = ai_rows(m)
    users = ai.group_by("patient_key").agg(pl.col("name").first())
    assert 0.15 <= users.height / p.height <= 0.21
    assert 0.6 < users["name"].str.contains("ANASTROZOLE").mean() < 0.8
    first_ai = ai.group_by("patient_key").agg(pl.col("start").min()).join(index_dates(m), on="patient_key")
    assert (first_ai["start"] > first_ai["index"]).all()
    gaps = ai.sort("patient_key", "start").with_columns(
        gap=pl.col("start") - pl.col("stop").shift().over("patient_key") + 30 - 1)
    assert (gaps["gap"] <= 30).sum() > 0 and (gaps["gap"] > 30).sum() > 0   # bridged and broken episodes
    assert m.filter(pl.col("rxnorm_code").is_null() & pl.col("atc_code").is_null()).height > 0
    assert m.filter(pl.col("days_supply").is_null() & pl.col("end_date").is_not_null()).height > 0
    assert m.filter(pl.col("atc_code").str.starts_with("H02AB")).height > 0
    assert m.filter(pl.col("atc_code").str.starts_with("M05BA")).height > 0
    results = lab["result"]
    for pattern in (r"^<", r"^>", r"^(HEMOLYZED|QNS)$", r" [HL]$"):
        assert results.str.contains(pattern).sum() > 0, pattern
    assert set(lab.filter(pl.col("loinc_code") == "2243-4")["unit"]) >= {"pg/mL", "pg/ml", "PG/ML"}
    assert lab.filter((pl.col("assay_method") == "immunoassay") & (pl.col("result") == "<20")).height > 0
    assert lab.filter(pl.col("loinc_code") == "14715-7")["unit"].str.to_lowercase().eq("pmol/l").all()
    assert {"Norland", "GE Lunar", "Hologic"} <= set(d["manufacturer"])
    assert m["drug_name"].str.contains("\n").any()       # a quoted newline for RFC 4180 readers
    real = truth["realism"]
    assert real["patients"]["non_male"] == (p["sex_at_birth"] != "M").sum()
    assert real["labs"]["non_numeric"] == results.str.contains(r"^(HEMOLYZED|QNS|CANCELLED)$").sum()
    assert real["diagnoses"]["undotted"] == (
        ~x["icd10_code"].str.contains(".", literal=True) & (x["icd10_code"].str.len_chars() > 3)).sum()
    site02 = read_table(sorted(deliveries(csv_world[0]))[1], "diagnoses")
    assert not site02["icd10_code"].str.contains(".", literal=True).any()   # that site writes no dots
    raw = (sorted(deliveries(csv_world[0]))[1] / "labs.csv").read_bytes()
    assert b"\r\n" in raw and raw.count(b"\n") == raw.count(b"\r\n")


# ----------------------------------------------------------------------------- defects

def count_defects(folder: Path) -> dict[str, dict[str, int]]:
    """Every defect kind counted from the files alone (contract and truth definitions)."""
    cutoff = cutoff_of(folder)
    t = {name: read_table(folder, name) for name in TABLES}
    keys = t["patients"]["patient_key"]
    out = {k: {name: 0 for name in TABLES} for k in ("exact_duplicate_rows", "impossible_values", "future_dates",
                                                    "unknown_units", "orphan_rows", "end_before_start")}
    for name, frame in t.items():
        out["exact_duplicate_rows"][name] = frame.height - frame.unique().height
        late = pl.any_horizontal([pl.col(c) > cutoff for c in DATE_COLUMNS[name]]).fill_null(False)
        out["future_dates"][name] = frame.filter(late).height
        if name != "patients":
            out["orphan_rows"][name] = frame.filter(~pl.col("patient_key").is_in(keys.implode())).height
    out["impossible_values"]["patients"] = t["patients"].filter(pl.col("birth_year") < 1900).height
    out["impossible_values"]["medications"] = t["medications"].filter(pl.col("days_supply") <= 0).height
    number = pl.col("result").str.replace(r" [HL]$", "").cast(pl.Float64, strict=False)
    out["impossible_values"]["labs"] = t["labs"].filter(pl.col("result").str.contains(NUMBER) & (number < 0)).height
    out["impossible_values"]["dxa"] = t["dxa"].filter(  # the delivered_dxa rule
        (pl.col("bmd_g_cm2") <= 0) | (pl.col("bmd_g_cm2") > 3)
        | (pl.col("t_score").abs() > 10) | (pl.col("z_score").abs() > 10)).height
    out["unknown_units"]["labs"] = t["labs"].filter(
        ~pl.col("unit").str.to_lowercase().is_in(list(KNOWN_UNITS))).height
    out["end_before_start"]["medications"] = t["medications"].filter(pl.col("end_date") < pl.col("start_date")).height
    return out


def test_defect_counts_in_truth_match_the_files(defect_world):
    out, truth = defect_world
    total = {k: {t: 0 for t in TABLES} for k in truth["defects"]}
    for folder in deliveries(out):
        counted = count_defects(folder)
        assert counted == truth["deliveries"][folder.name]["defects"], folder.name
        for kind, per in counted.items():
            for table, n in per.items():
                total[kind][table] += n
    assert total == truth["defects"]
    assert all(n > 0 for kind, per in truth["defects"].items() for table, n in per.items()
               if (kind, table) in {("exact_duplicate_rows", "labs"), ("impossible_values", "dxa"),
                                    ("future_dates", "medications"), ("unknown_units", "labs"),
                                    ("orphan_rows", "diagnoses"), ("end_before_start", "medications"),
                                    ("impossible_values", "patients")})


def test_clean_deliveries_have_no_defects(csv_world, parquet_world):
    for folder in deliveries(csv_world[0]) + [parquet_world[0]]:
        assert all(n == 0 for per in count_defects(folder).values() for n in per.values()), folder.name
    assert all(n == 0 for per in csv_world[1]["defects"].values() for n in per.values())


# ----------------------------------------------------------------------------- sites and snapshots

def test_multi_site_multi_quarter_snapshots(multi_world):
    out, truth = multi_world
    names = [f.name for f in deliveries(out)]
    assert names == [f"site{s:02d}_2025q{q}" for s in (1, 2, 3) for q in (1, 2)]
    assert truth["generator"]["patients_per_site"] == {"site01": 500, "site02": 500, "site03": 500}
    all_keys = []
    for s in (1, 2, 3):
        old, new = out / f"site{s:02d}_2025q1", out / f"site{s:02d}_2025q2"
        assert cutoff_of(old) == date(2025, 3, 31) and cutoff_of(new) == date(2025, 6, 30)
        po, pn = read_table(old, "patients"), read_table(new, "patients")
        assert set(po["patient_key"]) <= set(pn["patient_key"])
        both = po.join(pn, on="patient_key", suffix="_new")
        assert (both["sex_at_birth"] == both["sex_at_birth_new"]).all()
        assert (both["enrollment_start"] == both["enrollment_start_new"]).all()
        assert (both["enrollment_end"] <= both["enrollment_end_new"]).all()
        for table, col in (("labs", "collected_date"), ("medications", "start_date"), ("dxa", "scan_date")):
            a, b = read_table(old, table), read_table(new, table)
            assert b.height > a.height and b[col].max() > a[col].max()
        for table in ("medications", "dxa"):         # unchanged history is carried over verbatim
            assert read_table(old, table).join(read_table(new, table), on=list(CONTRACT[table]), how="anti",
                                               nulls_equal=True).height == 0
        corrections = truth["deliveries"][old.name]["corrections"]
        for table, key in (("labs", "lab_values_corrected_later"), ("diagnoses", "diagnoses_retracted_later")):
            gone = read_table(old, table).join(read_table(new, table), on=list(CONTRACT[table]), how="anti",
                                               nulls_equal=True)
            assert gone.height == corrections[key] >= 1, (old.name, table)
        assert truth["deliveries"][new.name]["corrections"] == {}
        assert truth["deliveries"][new.name]["is_current"] and not truth["deliveries"][old.name]["is_current"]
        all_keys += pn["patient_key"].to_list()
    assert len(all_keys) == len(set(all_keys)) == 1500


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path, patients=10, fmt="xlsx")
    with pytest.raises(ValueError):
        generate(tmp_path, patients=10, last_cutoff=date(2025, 5, 31))


def test_scores_off_the_reference_scale_are_not_reported():
    """A clean scan must never break the delivered_dxa plausibility rule (|T| or |Z| above 10), which
    counts planted defects only: at 1M patients the lumbar-spine tail reached Z = 10."""
    from cohort.generator import catalogs as cat
    from cohort.generator.dxa import _scores

    young_mean, young_sd = cat.YOUNG_REFERENCE["Hologic"]["lumbar_spine"]
    bmd = np.array([young_mean, young_mean + 10.08 * young_sd, young_mean + 9.96 * young_sd, young_mean - 10.08 * young_sd])
    rows = {"pid": np.zeros(4, dtype=int), "site": np.zeros(4, dtype=int), "scanner": np.zeros(4, dtype=int),
            "day": np.zeros(4, dtype=int), "bmd": bmd}
    _scores({"age_index": np.array([30.0]), "index": np.array([0])}, rows, np.random.default_rng(0))
    # T = Z at age 30; some scores are missing at random (2% / 10%), the rest must be on the scale
    for score in (rows["t_score"], rows["z_score"]):
        assert np.isnan(score[[1, 3]]).all()
        assert np.isnan(score[[0, 2]]).all() or set(score[[0, 2]][~np.isnan(score[[0, 2]])]) <= {0.0, 10.0}
