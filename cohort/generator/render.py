"""Render one site's world as a full snapshot at a data cutoff: the five contract tables.

A snapshot keeps every record dated on or before the cutoff (true calendar),
shifts each patient's dates back by the patient's secret offset, top-codes ages
of 90 and over, and turns catalog ids into the strings the source writes.
Snapshots older than the newest carry a few errors that later snapshots
correct: lab values with a slipped decimal point (vitamin D, lipids) and
diagnoses that are later retracted. Neither touches an exposure or outcome.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pyarrow as pa

from . import catalogs as cat
from . import labs as L
from ._common import DAYS_PER_YEAR, NA, day_number, rng_for, year_of
from .keys import patient_keys
from .outcomes import CODES, IS_FRACTURE_FOLLOW_UP, IS_FRACTURE_INITIAL
from .world import World

CORRECTION_RATE = 1 / 2000          # share of eligible records wrong in an older snapshot
_CORRECTABLE = np.zeros(len(cat.ANALYTES), dtype=bool)
_CORRECTABLE[[cat.A_VITD, cat.A_CHOL, cat.A_HDL, cat.A_LDL, cat.A_TG]] = True
_RETRACTED_CODES = ("M81.0", "E29.1", "I10")
_HAS_DOT = np.array(["." in c for c in CODES])


def _dates(days: np.ndarray, null: np.ndarray | None = None) -> pl.Series:
    return pl.from_arrow(pa.array(days.astype(np.int32), mask=null).cast(pa.date32()))


def _ints(values: np.ndarray, null: np.ndarray | None = None) -> pl.Series:
    return pl.from_arrow(pa.array(values.astype(np.int32), mask=null))


def _strings(lookup: list[str | None], codes: np.ndarray, null: np.ndarray | None = None) -> pl.Series:
    """Gather strings by code; rows flagged `null` get null (appended lookup slot)."""
    codes = codes.astype(np.int64)
    if null is not None:
        codes = np.where(null, len(lookup), codes)
    return pl.Series(list(lookup) + [None], dtype=pl.String).gather(codes)


class Snapshot:
    """The records of one site visible at `cutoff`, as contract tables (built one at a time)."""

    def __init__(self, world: World, cutoff: date, snapshot_index: int, final: bool):
        self.world = world
        self.cutoff = cutoff
        self.c = day_number(cutoff)
        self.final = final
        p = world.patients
        self.keys = patient_keys(world.seed, world.site, np.arange(len(p["index"])))
        self.offset = p["offset"].astype(np.int64)
        self.rng = rng_for(world.seed, world.site, "snapshot", snapshot_index)
        self.realism: dict[str, dict[str, int]] = {}
        self.corrections: dict[str, int] = {}

    # ------------------------------------------------------------------ patients
    def patients(self) -> pl.DataFrame:
        p = self.world.patients
        pid = np.flatnonzero(p["enroll_start"] <= self.c)
        off = self.offset[pid]
        death = p["death"][pid].astype(np.int64)
        has_death = (death != NA) & (death <= self.c)
        age_ref = np.where(has_death, death, self.c)
        age_90 = np.floor((age_ref - p["birth"][pid]) / DAYS_PER_YEAR) >= 90
        end = np.minimum(p["end_obs"][pid].astype(np.int64), self.c)
        index_visible = p["index"][pid] <= self.c
        self.realism["patients"] = dict(
            patients=len(pid), non_male=int((p["sex"][pid] != 0).sum()), age_90_plus=int(age_90.sum()),
            deaths=int(has_death.sum()), prevalent_users=int((p["prevalent"][pid] & index_visible).sum()),
            new_users=int((~p["prevalent"][pid] & index_visible).sum()),
            ai_users=int((p["ai_user"][pid] & (p["ai_start"][pid] <= self.c)).sum()),
            first_fragility_fractures=int(((p["fracture"][pid] != NA) & (p["fracture"][pid] <= self.c)).sum()))
        return pl.DataFrame([
            self.keys.gather(pid),
            _strings(["M", "F", "U"], p["sex"][pid]).alias("sex_at_birth"),
            _ints(year_of(p["birth"][pid] - off), age_90).alias("birth_year"),
            pl.Series("age_90_plus", age_90),
            _strings(cat.RACES, p["race"][pid]).alias("race"),
            _strings(cat.ETHNICITIES, p["ethnicity"][pid]).alias("ethnicity"),
            _dates(p["enroll_start"][pid] - off).alias("enrollment_start"),
            _dates(end - off).alias("enrollment_end"),
            _dates(np.where(has_death, death - off, 0), ~has_death).alias("death_date"),
        ])

    # ------------------------------------------------------------------ medications
    def medications(self) -> pl.DataFrame:
        m = self.world.medications
        sel = m["start"] <= self.c
        pid, code, name = m["pid"][sel], m["code"][sel], m["name"][sel]
        off = self.offset[pid]
        names = cat.name_table()
        ds, end = m["days_supply"][sel], m["end"][sel]
        product = m["product"][sel]
        drug_names = names["drug_name"].to_list()
        self.realism["medications"] = dict(
            rows=int(sel.sum()), name_only=int((code == cat.CODE_NAME_ONLY).sum()),
            end_date_only=int(((ds == NA) & (end != NA)).sum()), neither_supply_nor_end=int(((ds == NA) & (end == NA)).sum()),
            end_date_after_cutoff=int(((end != NA) & (end - off > self.c)).sum()),
            **{name: int(cat.in_group(product, group).sum()) for name, group in (
                ("testosterone", "trt"), ("aromatase_inhibitor", "ai"), ("glucocorticoid", "glucocorticoid"),
                ("bisphosphonate", "bisphosphonate"), ("denosumab", "denosumab"))},
            drug_name_with_comma=int(np.isin(name, [i for i, s in enumerate(drug_names) if "," in s]).sum()),
            drug_name_with_newline=int(np.isin(name, [i for i, s in enumerate(drug_names) if "\n" in s]).sum()))
        no_rx = (code == cat.CODE_ATC_ONLY) | (code == cat.CODE_NAME_ONLY)
        no_atc = (code == cat.CODE_RXNORM_ONLY) | (code == cat.CODE_NAME_ONLY)
        return pl.DataFrame([
            self.keys.gather(pid),
            names["drug_name"].gather(name),
            _strings(names["rxnorm_code"].to_list(), name, no_rx).alias("rxnorm_code"),
            _strings(names["atc_code"].to_list(), name, no_atc).alias("atc_code"),
            _dates(m["start"][sel] - off).alias("start_date"),
            _ints(ds, ds == NA).alias("days_supply"),
            _dates(np.where(end == NA, 0, end - off), end == NA).alias("end_date"),
            pl.Series("dose_mg", m["dose_mg"][sel]),
            pl.Series("doses_per_week", m["doses_per_week"][sel]),
            _strings(names["route"].to_list(), name, m["route_null"][sel]).alias("route"),
        ])

    # ------------------------------------------------------------------ labs
    def labs(self) -> pl.DataFrame:
        lab = self.world.labs
        sel = np.flatnonzero(lab["day"] <= self.c)
        pid, variant, status = lab["pid"][sel], lab["variant"][sel], lab["status"][sel]
        analyte = lab["analyte"][sel]
        value_code = lab["value_code"][sel]
        if not self.final:
            value_code = self._slip_decimal_points(value_code, analyte, status)
        system = self.world.patients["lab_system"][pid]
        e2 = analyte == cat.A_E2
        self.realism["labs"] = dict(
            rows=len(sel), censored_below_loq=int((status == L.STATUS_BELOW).sum()),
            censored_above=int((status == L.STATUS_ABOVE).sum()),
            non_numeric=int((status == L.STATUS_NON_NUMERIC).sum()), flagged=int((lab["flag"][sel] != 0).sum()),
            estradiol=int(e2.sum()),
            estradiol_pmol_per_l=int((e2 & (system == cat.LAB_SYSTEMS.index("lcms_molar"))).sum()),
            estradiol_immunoassay=int((e2 & (system == cat.LAB_SYSTEMS.index("immunoassay"))).sum()),
            estradiol_below_loq=int((e2 & (status == L.STATUS_BELOW)).sum()))
        vt = cat.lab_variant_table()
        return pl.DataFrame([
            self.keys.gather(pid), vt["loinc_code"].gather(variant), vt["test_name"].gather(variant),
            L.result_strings(value_code, variant, status, lab["flag"][sel], lab["non_numeric"][sel]),
            vt["unit"].gather(variant), _dates(lab["day"][sel] - self.offset[pid]).alias("collected_date"),
            vt["assay_method"].gather(variant), vt["loq"].gather(variant),
        ])

    def _slip_decimal_points(self, value_code, analyte, status) -> np.ndarray:
        """Older snapshot: a few vitamin D / lipid values x10 (corrected in later snapshots)."""
        eligible = np.flatnonzero(_CORRECTABLE[analyte] & (status == L.STATUS_NUMERIC))
        k = min(len(eligible), max(1, round(len(eligible) * CORRECTION_RATE))) if len(eligible) else 0
        chosen = self.rng.choice(eligible, k, replace=False) if k else np.zeros(0, dtype=np.int64)
        value_code = value_code.copy()
        value_code[chosen] *= 10
        self.corrections["lab_values_corrected_later"] = int(k)
        return value_code

    # ------------------------------------------------------------------ dxa
    def dxa(self) -> pl.DataFrame:
        d = self.world.dxa
        sel = d["day"] <= self.c
        pid, scanner = d["pid"][sel], d["scanner"][sel]
        maker = cat.SCANNER_MANUFACTURER[scanner]
        self.realism["dxa"] = dict(
            rows=int(sel.sum()), radius_33=int((d["site"][sel] == 3).sum()),
            **{m.lower().replace(" ", "_"): int((maker == i).sum()) for i, m in enumerate(cat.MANUFACTURERS)})
        lat = d["laterality"][sel]
        return pl.DataFrame([
            self.keys.gather(pid),
            _dates(d["day"][sel] - self.offset[pid]).alias("scan_date"),
            _strings(cat.DXA_SITES, d["site"][sel]).alias("skeletal_site"),
            _strings(["left", "right"], lat, lat < 0).alias("laterality"),
            pl.Series("bmd_g_cm2", d["bmd"][sel]),
            pl.Series("t_score", d["t_score"][sel]).fill_nan(None),
            pl.Series("z_score", d["z_score"][sel]).fill_nan(None),
            _strings(cat.MANUFACTURERS, maker).alias("manufacturer"),
            _strings([m for _, m in cat.SCANNERS], scanner, d["model_null"][sel]).alias("scanner_model"),
        ])

    # ------------------------------------------------------------------ diagnoses
    def diagnoses(self) -> pl.DataFrame:
        x = self.world.diagnoses
        sel = x["day"] <= self.c
        cols = {c: v[sel] for c, v in x.items()}
        if not self.final:
            cols = self._retracted(cols)
        code = cols["code"]
        self.realism["diagnoses"] = dict(
            rows=len(code), fracture_initial=int(IS_FRACTURE_INITIAL[code].sum()),
            fracture_follow_up=int(IS_FRACTURE_FOLLOW_UP[code].sum()),
            sequela=int(np.isin(code, [i for i, c in enumerate(CODES) if c.endswith("S") and len(c) == 8]).sum()),
            pathological_m84_5=int(np.isin(code, [i for i, c in enumerate(CODES) if c.startswith("M84.5")]).sum()),
            metastasis_c79_51=int((code == CODES.index(cat.METASTASIS_CODE)).sum()),
            undotted=int((cols["undotted"] & _HAS_DOT[code]).sum()))
        undotted_codes = [c.replace(".", "") for c in CODES]
        enc = cols["encounter"]
        return pl.DataFrame([
            self.keys.gather(cols["pid"]),
            _strings(CODES + undotted_codes, code + len(CODES) * cols["undotted"]).alias("icd10_code"),
            _dates(cols["day"] - self.offset[cols["pid"]]).alias("diagnosis_date"),
            _strings(cat.ENCOUNTERS, enc, enc < 0).alias("encounter_type"),
        ])

    def _retracted(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Older snapshot: a few diagnoses coded in error (absent from later snapshots)."""
        p = self.world.patients
        visible = np.flatnonzero(p["enroll_start"] <= self.c)
        k = min(len(visible), max(1, round(len(visible) * CORRECTION_RATE)))
        who = np.sort(self.rng.choice(visible, k, replace=False))
        lo = p["enroll_start"][who].astype(np.int64)
        hi = np.minimum(p["end_obs"][who].astype(np.int64), self.c)
        extra = dict(pid=who.astype(np.int32),
                     code=np.array([CODES.index(c) for c in _RETRACTED_CODES], np.int16)[self.rng.integers(0, 3, k)],
                     day=lo + np.floor(self.rng.random(k) * (hi - lo + 1)).astype(np.int64),
                     encounter=np.full(k, cat.ENC_OUTPATIENT, np.int8),
                     undotted=self.rng.random(k) < cat.site_profile(self.world.site).undotted_icd_share)
        new = ~np.isin(_row_key(extra), _row_key(cols))     # never duplicate a genuine row
        self.corrections["diagnoses_retracted_later"] = int(new.sum())
        return {c: np.concatenate([cols[c], extra[c][new]]) for c in cols}


def _row_key(cols: dict[str, np.ndarray]) -> np.ndarray:
    """(patient, code, day) packed into one int64 (code < 2**10, day < 2**16)."""
    return (cols["pid"].astype(np.int64) << 26) | (cols["code"].astype(np.int64) << 16) | cols["day"].astype(np.int64)
