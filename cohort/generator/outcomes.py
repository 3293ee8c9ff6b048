"""Outcomes: first fragility fracture (time-varying hazard) and the diagnosis codes that record it.

The fracture hazard is piecewise constant on the daily exposure grid:

    log h(d) = log h0 + b_ai AI(d) + b_tier[tier(d)] + b_gc GC(d)
               + b_age age_c + b_fn (FN sBMD - 0.8)/0.1 + b_bmi bmi_c

from the day after index to the end of observation. The grid is cut at every
day an exposure changes, so each segment has one rate; the first event time
is found by inverting the cumulative hazard against an Exp(1) draw.
Deaths (the competing event) are drawn with the population.
"""

from __future__ import annotations

import numpy as np

from . import catalogs as cat
from . import params as P
from ._common import DAYS_PER_YEAR, NA, choice_codes, segment_positions
from .intervals import Intervals, elementary_segments, first_event_time

CODES = cat.diagnosis_codes()
CODE_ID = {c: i for i, c in enumerate(CODES)}
_CHARS = "AB" + "".join(c for c, _ in cat.FOLLOW_UP_CHARS)
_SITES = tuple(P.FRACTURE_SITES)
_BASES = [b for s in _SITES for b in cat.FRACTURE_BASES[s]]
_BASE_SITE = np.array([i for i, s in enumerate(_SITES) for _ in cat.FRACTURE_BASES[s]])
_CODE_OF = np.array([[CODE_ID.get(b + c, -1) for c in _CHARS] for b in _BASES])   # [base, 7th char]
_BASE_IS_INJURY = np.array([b.startswith("S") for b in _BASES])   # S codes have open-fracture (B) variants
IS_FRACTURE_INITIAL = np.isin(np.arange(len(CODES)), _CODE_OF[:, :2])       # 7th character A or B
IS_FRACTURE_FOLLOW_UP = np.isin(np.arange(len(CODES)), _CODE_OF[:, 2:])     # D, G, K, P, S
# Encounter of the first initial-encounter code, per fracture site.
_FIRST_ENCOUNTER = {"hip": (0.0, 0.0, 1.0), "vertebral": (0.0, 0.6, 0.4), "distal_forearm": (0.0, 0.4, 0.6),
                    "proximal_humerus": (0.0, 0.3, 0.7), "osteoporotic_m80": (0.0, 1.0, 0.0)}


def fracture_log_rate_fixed(age_c: np.ndarray, fn_sbmd: np.ndarray, bmi_c: np.ndarray) -> np.ndarray:
    b = P.FRACTURE_LOG_HR
    return (b["age_per_10y"] * age_c + b["femoral_neck_sbmd_per_0_1"] * (fn_sbmd - P.FN_SBMD_REF) / P.FN_SBMD_SCALE
            + b["bmi_per_5"] * bmi_c)


def simulate_fractures(p, ai: Intervals, gc: Intervals, tiers: Intervals, fixed_log_rate: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Day of the first fragility fracture per patient (NA if none) and person-time by exposure."""
    n = len(p["index"])
    lo, hi = p["index"].astype(np.int64) + 1, p["end_obs"].astype(np.int64) + 1   # risk days [lo, hi)
    seg_pid, seg_start, seg_end = elementary_segments(lo, hi, (ai, gc, tiers))
    on_ai = ai.covers(seg_pid, seg_start)
    on_gc = gc.covers(seg_pid, seg_start)
    j = tiers.lookup(seg_pid, seg_start)
    tier = np.where(j >= 0, tiers.label[np.maximum(j, 0)], P.TIER_UNKNOWN)
    b = P.FRACTURE_LOG_HR
    tier_lhr = np.array([b["e2_lt10"], b["e2_10_20"], 0.0, b["e2_ge40"], b["e2_unknown"]])
    log_rate = (np.log(P.FRACTURE_BASELINE_PER_1000PY / 1000.0 / DAYS_PER_YEAR) + fixed_log_rate[seg_pid]
                + b["ai_current"] * on_ai + tier_lhr[tier] + b["glucocorticoid_current"] * on_gc)
    t_event = first_event_time(seg_pid, seg_start, seg_end, np.exp(log_rate), rng.exponential(1.0, n))
    day_of_event = np.minimum(np.floor(np.nan_to_num(t_event)), hi - 1)      # guard float rounding at the end
    fracture = np.where(np.isnan(t_event), NA, day_of_event).astype(np.int32)

    length = (seg_end - seg_start).astype(np.float64)
    person_time = {"total": length.sum(), "ai_current": length[on_ai].sum(),
                   "glucocorticoid_current": length[on_gc].sum()}
    for k, name in enumerate(P.TIERS):
        person_time[name] = length[tier == k].sum()
        person_time[f"{name}_on_ai"] = length[(tier == k) & on_ai].sum()
    at_risk_end = np.where(fracture != NA, fracture + 1, hi)
    person_time["until_first_fracture"] = float((at_risk_end - lo).sum())
    return fracture, {k: float(v) / DAYS_PER_YEAR for k, v in person_time.items()}


def simulate_diagnoses(p, fracture: np.ndarray, site: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Diagnosis rows: fracture episodes, look-alike codes that must not count, and background noise."""
    blocks = [_fracture_episodes(p, fracture, rng), _history_codes(p, rng), _pathological(p, rng), _noise(p, rng)]
    rows = {c: np.concatenate([b[c] for b in blocks]) for c in ("pid", "code", "day", "encounter")}
    keep = rows["day"] <= p["end_obs"][rows["pid"]]
    rows = {c: v[keep] for c, v in rows.items()}
    rows["undotted"] = rng.random(len(rows["pid"])) < cat.site_profile(site).undotted_icd_share
    rows["encounter"] = np.where(rng.random(len(rows["pid"])) < 0.02, -1, rows["encounter"]).astype(np.int8)
    return _unique_sorted(rows)


def _block(pid, code, day, encounter) -> dict[str, np.ndarray]:
    n = len(pid)
    return dict(pid=np.asarray(pid, np.int32), code=np.broadcast_to(code, (n,)).astype(np.int16),
                day=np.asarray(day, np.int64), encounter=np.broadcast_to(encounter, (n,)).astype(np.int8))


def _fracture_episodes(p, fracture, rng) -> dict[str, np.ndarray]:
    """Initial-encounter code(s) on the fracture day (+ a second within 90 days) and follow-up codes."""
    who = np.flatnonzero(fracture != NA)
    f_day = fracture[who].astype(np.int64)
    fsite = choice_codes(rng, len(who), list(P.FRACTURE_SITES.values()))
    starts = np.searchsorted(_BASE_SITE, np.arange(len(_SITES)))
    counts = np.bincount(_BASE_SITE, minlength=len(_SITES))
    base = starts[fsite] + np.floor(rng.random(len(who)) * counts[fsite]).astype(np.int64)
    open_fx = (rng.random(len(who)) < 0.05) & _BASE_IS_INJURY[base]
    initial = _CODE_OF[base, open_fx.astype(np.int64)]
    enc = np.zeros(len(who), dtype=np.int8)
    for i, s in enumerate(_SITES):
        sel = fsite == i
        enc[sel] = choice_codes(rng, sel.sum(), _FIRST_ENCOUNTER[s])
    blocks = [_block(who, initial, f_day, enc)]

    hip = fsite == _SITES.index("hip")
    second = rng.random(len(who)) < np.where(hip, 0.75, 0.20)
    delay = np.where(hip, rng.integers(0, 2, len(who)), rng.integers(1, 61, len(who)))
    blocks.append(_block(who[second], initial[second], (f_day + delay)[second],
                         np.where(hip, cat.ENC_INPATIENT, cat.ENC_OUTPATIENT)[second]))

    owner, _ = segment_positions(np.minimum(1 + rng.poisson(1.0, len(who)), 4))
    char = 2 + choice_codes(rng, len(owner), [w for _, w in cat.FOLLOW_UP_CHARS])
    blocks.append(_block(who[owner], _CODE_OF[base[owner], char], f_day[owner] + rng.integers(14, 401, len(owner)),
                         cat.ENC_OUTPATIENT))
    return {c: np.concatenate([b[c] for b in blocks]) for c in blocks[0]}


def _uniform_day(rng, p, who) -> np.ndarray:
    lo, hi = p["enroll_start"][who].astype(np.int64), p["end_obs"][who].astype(np.int64)
    return lo + np.floor(rng.random(len(who)) * (hi - lo + 1)).astype(np.int64)


def _history_codes(p, rng) -> dict[str, np.ndarray]:
    """Follow-up / sequela codes of fractures that predate the data: no initial encounter, never counted."""
    who = np.flatnonzero(rng.random(len(p["index"])) < 0.015)
    base = rng.integers(0, len(_BASES), len(who))
    char = np.where(rng.random(len(who)) < 0.6, _CHARS.index("D"), _CHARS.index("S"))
    return _block(who, _CODE_OF[base, char], _uniform_day(rng, p, who), cat.ENC_OUTPATIENT)


def _pathological(p, rng) -> dict[str, np.ndarray]:
    """Bone metastasis and pathological fractures in neoplastic disease (not fragility fractures)."""
    who = np.flatnonzero(rng.random(len(p["index"])) < 0.006)
    c_day = _uniform_day(rng, p, who)
    which = rng.integers(0, len(cat.PATHOLOGICAL_BASES), len(who))
    initial = np.array([CODE_ID[b + "A"] for b in cat.PATHOLOGICAL_BASES])[which]
    follow = np.array([CODE_ID[b + "D"] for b in cat.PATHOLOGICAL_BASES])[which]
    fx_day = c_day + rng.integers(0, 201, len(who))
    later = rng.random(len(who)) < 0.5
    blocks = [_block(who, CODE_ID[cat.METASTASIS_CODE], c_day, cat.ENC_OUTPATIENT),
              _block(who, initial, fx_day, cat.ENC_EMERGENCY),
              _block(who[later], follow[later], (fx_day + rng.integers(30, 121, len(who)))[later],
                     cat.ENC_OUTPATIENT)]
    return {c: np.concatenate([b[c] for b in blocks]) for c in blocks[0]}


def _noise(p, rng) -> dict[str, np.ndarray]:
    """Background diagnoses; hypogonadism (E29.1) is coded around the index date."""
    n = len(p["index"])
    blocks = []
    for code, share in cat.NOISE_DIAGNOSES:
        if code == "E66.9":
            who = np.flatnonzero((p["bmi_latent"] >= 30) & (rng.random(n) < 0.5))
        else:
            who = np.flatnonzero(rng.random(n) < share)
        if code == "E29.1":
            day = np.maximum(p["index"][who] - rng.integers(0, 31, len(who)), p["enroll_start"][who])
        else:
            day = _uniform_day(rng, p, who)
        enc = choice_codes(rng, len(who), (0.05, 0.95, 0.0))
        blocks.append(_block(who, CODE_ID[code], day, enc))
    return {c: np.concatenate([b[c] for b in blocks]) for c in blocks[0]}


def _unique_sorted(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop exact duplicate rows (two follow-ups coded the same day) and sort by (patient, day, code)."""
    cols = ("pid", "day", "code", "encounter", "undotted")
    order = np.lexsort([rows[c] for c in reversed(cols)])
    srt = {c: rows[c][order] for c in cols}
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(np.column_stack([srt[c][1:] != srt[c][:-1] for c in cols]), axis=1)
    return {c: v[first] for c, v in srt.items()}
