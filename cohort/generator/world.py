"""One site's simulated world, observed up to the newest cutoff.

Order matters because every outcome is driven by exposures computed from the
records actually emitted: dispensings -> AI / glucocorticoid exposure ->
estradiol results (which depend on current AI) -> estradiol tiers -> BMD and
fracture hazard -> diagnoses. All exposures are causal (they depend only on
records dated on or before the day in question), so truncating the world at an
earlier cutoff leaves the planted relationships intact for older snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import catalogs as cat
from . import params as P
from ._common import DAYS_PER_YEAR, NA, rng_for
from .dxa import simulate_dxa
from .intervals import Intervals, last_value_intervals, union
from .labs import baseline_bmi, simulate_labs
from .medications import concat, covered_end, simulate_medications, start_bone_drug
from .outcomes import fracture_log_rate_fixed, simulate_diagnoses, simulate_fractures
from .population import simulate_population


@dataclass
class World:
    site: int
    seed: int
    patients: dict[str, np.ndarray]
    medications: dict[str, np.ndarray]
    labs: dict[str, np.ndarray]
    dxa: dict[str, np.ndarray]
    diagnoses: dict[str, np.ndarray]
    stats: dict = field(default_factory=dict)


def exposure_intervals(meds: dict[str, np.ndarray], group: str, grace: int) -> Intervals:
    """Covered days of a drug group's dispensings, extended by `grace` days, merged per patient."""
    sel = cat.in_group(meds["product"], group)
    end = covered_end(meds)[sel]
    ok = end != NA
    return union(meds["pid"][sel][ok], meds["start"][sel][ok], end[ok] + grace)


def simulate_site(n: int, site: int, seed: int, last_day: int,
                  progress: Callable[[str], None] = lambda _: None) -> World:
    rng = {name: rng_for(seed, site, name) for name in
           ("population", "trt", "ai", "glucocorticoid", "bone_drugs", "background_meds", "labs", "dxa",
            "fracture", "diagnoses")}
    label = f"site{site:02d}"
    progress(f"{label}: simulating {n:,} patients")
    p = simulate_population(n, site, last_day, rng["population"])
    meds = simulate_medications(p, rng)
    ai = exposure_intervals(meds, "ai", P.GRACE_DAYS)
    gc = exposure_intervals(meds, "glucocorticoid", 0)
    progress(f"{label}: {len(meds['pid']):,} dispensings; simulating labs")
    labs = simulate_labs(p, ai, rng["labs"])
    obs = labs["e2_tier"] >= 0
    tiers = last_value_intervals(labs["pid"][obs], labs["day"][obs], labs["e2_tier"][obs], P.E2_LOOKBACK_DAYS)
    bmi = baseline_bmi(labs, n)
    bmi_c = (bmi - P.BMI_REF) / P.BMI_SCALE
    age_c = (p["age_years"] - P.AGE_REF) / P.AGE_SCALE
    progress(f"{label}: {len(labs['pid']):,} lab results; simulating DXA")
    dxa, fn_sbmd, dxa_counts = simulate_dxa(p, site, ai, tiers, bmi_c, rng["dxa"])
    progress(f"{label}: {len(dxa['pid']):,} DXA rows; simulating fractures")
    fracture, person_years = simulate_fractures(p, ai, gc, tiers, fracture_log_rate_fixed(age_c, fn_sbmd, bmi_c),
                                                rng["fracture"])
    dx = simulate_diagnoses(p, fracture, site, rng["diagnoses"])
    meds = concat([meds, _after_fracture_treatment(p, fracture, rng["bone_drugs"])])
    p["fracture"] = fracture
    world = World(site, seed, p, meds, labs, dxa, dx)
    world.stats = _stats(p, labs, bmi, fracture, person_years, dxa_counts)
    return world


def _after_fracture_treatment(p, fracture: np.ndarray, rng) -> dict[str, np.ndarray]:
    """30% of patients start a bone drug 2-17 weeks after their fracture (they are censored by then)."""
    who = np.flatnonzero((fracture != NA) & (rng.random(len(fracture)) < 0.30))
    lo = fracture[who].astype(np.int64) + 14
    hi = np.minimum(fracture[who].astype(np.int64) + 120, p["end_obs"][who])
    ok = lo <= hi
    who, lo, hi = who[ok], lo[ok], hi[ok]
    ids = np.array([cat.PRODUCT_ID["alendronate"], cat.PRODUCT_ID["zoledronic_acid"]], dtype=np.int16)
    products = ids[(rng.random(len(who)) < 0.2).astype(np.int64)]
    return start_bone_drug(rng, who, lo, hi, products, p["end_obs"][who].astype(np.int64))


def _stats(p, labs, bmi, fracture, person_years, dxa_counts) -> dict:
    """Additive summaries of the world (sums and counts) that truth.json pools across sites."""
    ai = p["ai_user"]
    index, end = p["index"].astype(np.int64), p["end_obs"].astype(np.int64)
    died = (p["death"] != NA) & (p["death"] == p["end_obs"])      # deaths observed while enrolled
    e2 = labs["e2_pg_ml"]
    post = (labs["analyte"] == cat.A_E2) & ~np.isnan(e2) & (labs["day"] > p["index"][labs["pid"]]) & (
        labs["day"] <= p["trt_stop"][labs["pid"]])
    on_ai = post & labs["ai_current"]
    trt_only = post & ~labs["ai_current"]
    return dict(
        patients=len(index), ai_users=int(ai.sum()),
        bmi_sum_ai=float(bmi[ai].sum()), bmi_sum_non_ai=float(bmi[~ai].sum()),
        log_e2_sum_ai=float(p["log_e2"][ai].sum()), log_e2_sum_non_ai=float(p["log_e2"][~ai].sum()),
        fractures=int((fracture != NA).sum()), fracture_person_years=person_years["until_first_fracture"],
        person_years=person_years, deaths=int(died.sum()), death_person_years=float((end - index).sum()) / DAYS_PER_YEAR,
        e2_trt_only=e2[trt_only], e2_on_ai=e2[on_ai], dxa=dxa_counts,
    )
