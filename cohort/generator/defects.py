"""Injected defects, counted exactly.

Every defect is an INJECTED ROW: a copy of one genuine row (or, in `patients`,
a copy under a fresh key) with exactly one field corrupted, placed right after
its source row. Genuine rows are never altered, so the planted world is intact
once a pipeline drops or quarantines the defective rows, and each defect is
counted once:

| kind                 | tables                                  | corrupted column(s)                              |
|----------------------|-----------------------------------------|--------------------------------------------------|
| exact_duplicate_rows | all                                     | none (verbatim copy)                             |
| impossible_values    | patients                                | fresh key; birth_year = 1850                     |
|                      | medications                             | days_supply <= 0 (distinct negative values)      |
|                      | labs                                    | result negated (e.g. `-23.4`), numeric rows only |
|                      | dxa                                     | bmd_g_cm2 <= 0 or > 3                            |
| future_dates         | patients                                | fresh key; enrollment_end after data_cutoff      |
|                      | medications                             | start_date after cutoff (end_date moved with it) |
|                      | labs / dxa / diagnoses                  | collected_date / scan_date / diagnosis_date      |
| unknown_units        | labs                                    | unit (`mIU/mL`, `U/L`, `mg`)                     |
| orphan_rows          | medications, labs, dxa, diagnoses       | patient_key absent from patients                 |
| end_before_start     | medications                             | end_date before start_date                       |

Corrupted values are distinct per injected row (future dates, negative supplies,
end-date offsets, keys), so no two injected rows coincide and only the
exact-duplicate kind ever produces duplicate rows.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

from .catalogs import UNKNOWN_UNITS

KINDS = ("exact_duplicate_rows", "impossible_values", "future_dates", "unknown_units", "orphan_rows",
         "end_before_start")
TABLES = ("patients", "medications", "labs", "dxa", "diagnoses")
APPLICABLE = {
    "patients": ("exact_duplicate_rows", "impossible_values", "future_dates"),
    "medications": ("exact_duplicate_rows", "impossible_values", "future_dates", "orphan_rows", "end_before_start"),
    "labs": ("exact_duplicate_rows", "impossible_values", "future_dates", "unknown_units", "orphan_rows"),
    "dxa": ("exact_duplicate_rows", "impossible_values", "future_dates", "orphan_rows"),
    "diagnoses": ("exact_duplicate_rows", "future_dates", "orphan_rows"),
}
DATE_COLUMN = {"medications": "start_date", "labs": "collected_date", "dxa": "scan_date",
               "diagnoses": "diagnosis_date", "patients": "enrollment_end"}
_NUMBER = r"^[0-9]+(\.[0-9]+)?$"


def empty_counts() -> dict[str, dict[str, int]]:
    return {kind: {table: 0 for table in TABLES} for kind in KINDS}


def inject(table: str, frame: pl.DataFrame, rate: float, cutoff: date, rng: np.random.Generator,
           fresh_keys) -> tuple[pl.DataFrame, dict[str, int]]:
    """Add round(rate x rows) defective rows to `frame`, split evenly at random over the table's kinds.

    `fresh_keys(k)` returns k patient keys that exist nowhere in the delivery.
    Returns the new frame and {kind: count}.
    """
    kinds = APPLICABLE[table]
    total = min(int(round(rate * frame.height)), frame.height)
    counts = dict(zip(kinds, rng.multinomial(total, [1 / len(kinds)] * len(kinds)).tolist()))
    if total == 0:
        return frame, {k: 0 for k in kinds}
    unused = np.ones(frame.height, dtype=bool)
    injected, sources = [], []
    for kind in kinds:
        eligible = unused & _eligible(table, kind, frame)
        k = min(counts[kind], int(eligible.sum()))
        counts[kind] = k
        if k == 0:
            continue
        src = np.sort(rng.choice(np.flatnonzero(eligible), k, replace=False))
        unused[src] = False
        injected.append(_corrupt(table, kind, frame[src], cutoff, rng, fresh_keys))
        sources.append(src)
    src = np.concatenate(sources)
    combined = pl.concat([frame, pl.concat(injected)])
    order = np.argsort(np.concatenate([np.arange(frame.height) * 2, src * 2 + 1]), kind="stable")
    return combined[order], counts


def _eligible(table: str, kind: str, frame: pl.DataFrame) -> np.ndarray:
    if table == "labs" and kind == "impossible_values":     # plain positive numbers, so "-" + result < 0
        plain = frame["result"].str.contains(_NUMBER)
        return (plain & (frame["result"].cast(pl.Float64, strict=False) > 0)).fill_null(False).to_numpy()
    return np.ones(frame.height, dtype=bool)


def _corrupt(table: str, kind: str, rows: pl.DataFrame, cutoff: date, rng: np.random.Generator,
             fresh_keys) -> pl.DataFrame:
    k = rows.height
    distinct = 1 + rng.permutation(max(k, 365))[:k]          # distinct positive offsets, >= 1
    if kind == "exact_duplicate_rows":
        return rows
    if kind == "orphan_rows":
        return rows.with_columns(patient_key=fresh_keys(k))
    if table == "patients":
        rows = rows.with_columns(patient_key=fresh_keys(k))
        if kind == "impossible_values":
            return rows.with_columns(birth_year=pl.lit(1850, pl.Int32), age_90_plus=pl.lit(False))
        return rows.with_columns(enrollment_end=_after(cutoff, distinct))
    if kind == "future_dates":
        col = DATE_COLUMN[table]
        new = _after(cutoff, distinct)
        if table == "medications":      # move the whole dispensing, so end_date stays >= start_date
            shift = new.to_numpy() - rows["start_date"].to_numpy()
            return rows.with_columns(start_date=new, end_date=pl.Series(rows["end_date"].to_numpy() + shift))
        return rows.with_columns(new.alias(col))
    if kind == "end_before_start":
        return rows.with_columns(
            end_date=pl.Series(rows["start_date"].to_numpy() - distinct.astype("timedelta64[D]")))
    if kind == "unknown_units":
        return rows.with_columns(unit=pl.Series(np.array(UNKNOWN_UNITS)[rng.integers(0, len(UNKNOWN_UNITS), k)]))
    # impossible_values
    if table == "medications":
        return rows.with_columns(days_supply=pl.Series(-distinct + 1, dtype=pl.Int32))   # 0, -1, -2, ...
    if table == "labs":
        return rows.with_columns(result=pl.lit("-") + pl.col("result"))
    if table == "dxa":
        bad = np.where(rng.random(k) < 0.5, -np.round(rng.random(k), 3), np.round(3.01 + 5 * rng.random(k), 3))
        return rows.with_columns(bmd_g_cm2=pl.Series(bad))
    raise ValueError(f"no {kind} defect for {table}")


def _after(cutoff: date, offsets: np.ndarray) -> pl.Series:
    """Dates `offsets` days after the cutoff."""
    base = np.datetime64(cutoff + timedelta(0), "D")
    return pl.Series(base + offsets.astype("timedelta64[D]"))
