"""Lab results: a baseline draw before index, then draws every 3-8 months during follow-up.

Estradiol depends on BMI (latent), on TRT (lower off treatment) and on being a
current AI user on the collection day (the exposure definition, so the tiers
the analysis derives follow the AI exactly as planted). Values are rounded
and censored the way each lab reports them; the estradiol tier of every
emitted result is derived here from those reported numbers, exactly as the
analysis must derive it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from . import catalogs as cat
from . import params as P
from ._common import choice_codes, renewal_days, segment_positions
from .intervals import Intervals

STATUS_NUMERIC, STATUS_BELOW, STATUS_ABOVE, STATUS_NON_NUMERIC = range(4)
FLAG_NONE, FLAG_HIGH, FLAG_LOW = range(3)
# Per-draw probability that an analyte is measured: (baseline draw, follow-up draw).
# Lipids are one panel (cholesterol, HDL, LDL, triglycerides) measured together.
PRESENCE = {cat.A_E2: (1.0, 0.92), cat.A_T: (1.0, 0.70), cat.A_VITD: (0.4, 0.10), cat.A_CHOL: (0.4, 0.06),
            cat.A_BMI: (1.0, 0.25)}
FOLLOW_UP_INTERVAL_DAYS = (100, 240)   # between follow-up draws (about every 3-8 months)
NON_NUMERIC_SHARE = 0.006    # of estradiol / testosterone results
FLAG_SHARE = 0.15            # of out-of-range results from labs that flag


def simulate_labs(p: dict[str, np.ndarray], ai: Intervals, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All lab rows of one site (grouped by patient, in draw order) plus derived per-row fields."""
    pid, day, baseline = _draws(p, rng)
    n_draws = len(pid)
    present = np.zeros((n_draws, len(cat.ANALYTES)), dtype=bool)
    for analyte, (p_base, p_fu) in PRESENCE.items():
        present[:, analyte] = rng.random(n_draws) < np.where(baseline, p_base, p_fu)
    for lipid in (cat.A_HDL, cat.A_LDL, cat.A_TG):
        present[:, lipid] = present[:, cat.A_CHOL]
    draw_idx, analyte = np.nonzero(present)       # row-major: draw order, then analyte order
    rows = dict(pid=pid[draw_idx], day=day[draw_idx], analyte=analyte.astype(np.int8),
                baseline=baseline[draw_idx])
    canonical = _canonical_values(p, rows, ai, rng)
    _report(p, rows, canonical, rng)
    return rows


def _draws(p, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pid, day, is_baseline) of every blood draw, grouped by patient in time order."""
    n = len(p["index"])
    index, end = p["index"].astype(np.int64), p["end_obs"].astype(np.int64)
    base_day = np.maximum(index - rng.integers(0, 61, n), p["enroll_start"])
    first = index + rng.integers(60, 151, n)
    lo, hi = FOLLOW_UP_INTERVAL_DAYS
    max_fu = np.maximum(np.ceil((end - first + 1) / lo).astype(np.int64), 0)
    owner, pos = segment_positions(max_fu)
    fu_day = renewal_days(first, owner, pos, rng.integers(lo, hi + 1, len(owner)))
    keep = fu_day <= end[owner]                      # a prefix of each patient's candidates
    owner, pos, fu_day = owner[keep], pos[keep], fu_day[keep]
    # Lay out each patient's draws contiguously: the baseline, then the follow-ups in time order.
    start = np.cumsum(1 + np.bincount(owner, minlength=n)) - (1 + np.bincount(owner, minlength=n))
    size = n + len(owner)
    pid, day, baseline = np.empty(size, np.int32), np.empty(size, np.int32), np.zeros(size, bool)
    pid[start], day[start], baseline[start] = np.arange(n), base_day, True
    slot = start[owner] + 1 + pos
    pid[slot], day[slot] = owner, fu_day
    return pid, day, baseline


def _canonical_values(p, rows, ai: Intervals, rng) -> np.ndarray:
    """True value of each result in the canonical unit (pg/mL, ng/dL, ng/mL, mg/dL, kg/m2)."""
    n_pat = len(p["index"])
    pid, day, analyte = rows["pid"], rows["day"], rows["analyte"]
    value = np.zeros(len(pid))
    rows["ai_current"] = np.zeros(len(pid), dtype=bool)

    e2 = np.flatnonzero(analyte == cat.A_E2)
    pe, de = pid[e2], day[e2]
    ai_now = ai.covers(pe, de)
    ai_factor = np.ones(n_pat)
    for key, factor in P.AI_E2_FACTOR.items():
        ai_factor[p["ai_product"] == cat.PRODUCT_ID[key]] = factor
    log_e2 = p["log_e2"][pe] + rng.normal(0.0, P.E2_VISIT_SD_LOG, len(e2))
    log_e2[~_on_trt(p, pe, de)] += np.log(P.E2_OFF_TRT_FACTOR)
    log_e2[ai_now] += np.log(ai_factor[pe[ai_now]])
    value[e2] = np.exp(log_e2)
    rows["ai_current"][e2] = ai_now

    t_on, t_off = np.exp(rng.normal(np.log(550), 0.3, n_pat)), np.exp(rng.normal(np.log(260), 0.25, n_pat))
    t = np.flatnonzero(analyte == cat.A_T)
    pt = pid[t]
    value[t] = np.where(_on_trt(p, pt, day[t]), t_on[pt], t_off[pt]) * np.exp(rng.normal(0, 0.25, len(t)))

    vitd = np.clip(rng.normal(30, 8, n_pat), 5, None)
    v = np.flatnonzero(analyte == cat.A_VITD)
    value[v] = np.clip(vitd[pid[v]] + rng.normal(0, 5, len(v)), 2, None)

    chol, hdl = rng.normal(190, 32, n_pat), np.clip(rng.normal(46, 11, n_pat), 20, None)
    tg = np.exp(rng.normal(np.log(140), 0.4, n_pat))
    panel = np.flatnonzero(analyte == cat.A_CHOL)    # the panel's four rows are consecutive, in analyte order
    pp, k = pid[panel], len(panel)
    tc_v = chol[pp] + rng.normal(0, 12, k)
    hdl_v = np.clip(hdl[pp] + rng.normal(0, 4, k), 15, None)
    tg_v = tg[pp] * np.exp(rng.normal(0, 0.2, k))
    for offset, v in enumerate((tc_v, hdl_v, np.clip(tc_v - hdl_v - tg_v / 5, 20, None), tg_v)):
        value[panel + offset] = v

    b = np.flatnonzero(analyte == cat.A_BMI)
    noise = np.where(rows["baseline"][b], 0.3, 0.8)
    value[b] = np.clip(p["bmi_latent"][pid[b]] + rng.normal(0, 1, len(b)) * noise, 15, None)
    return value


def _on_trt(p, pid, day) -> np.ndarray:
    return (day >= p["index"][pid]) & (day <= p["trt_stop"][pid])


def _report(p, rows, canonical, rng) -> None:
    """Pick each row's lab variant, round, censor, flag, and derive the estradiol tier."""
    pid, analyte = rows["pid"], rows["analyte"]
    n = len(pid)
    system = p["lab_system"][pid]
    start, count = cat.lab_variant_index()
    variant = (start[analyte, system] + np.floor(rng.random(n) * count[analyte, system])).astype(np.int16)
    va = cat.lab_variant_arrays()

    immuno = np.flatnonzero((system == cat.LAB_SYSTEMS.index("immunoassay"))
                            & ((analyte == cat.A_E2) | (analyte == cat.A_T)))
    noisy = canonical
    noisy[immuno] *= np.exp(rng.normal(0, 0.25, len(immuno)))
    noisy[immuno] += np.where(analyte[immuno] == cat.A_E2, 4.0, 0.0)    # immunoassay cross-reactivity

    # The reported number is an integer count of the lab's last decimal (e.g. 23.4 -> 234); as a
    # float it is code / 10**decimals, the exact double a reader parses from the written string.
    scaled = noisy * va["factor"][variant]
    scale = va["scale"][variant]
    code = np.rint(scaled * scale).astype(np.int64)
    reported = code / scale
    status = np.full(n, STATUS_NUMERIC, dtype=np.int8)
    status[scaled < va["loq"][variant]] = STATUS_BELOW          # NaN loq compares False
    status[reported > va["uloq"][variant]] = STATUS_ABOVE
    hormone = np.flatnonzero((analyte == cat.A_E2) | (analyte == cat.A_T))
    odd = hormone[rng.random(len(hormone)) < NON_NUMERIC_SHARE]
    status[odd] = STATUS_NON_NUMERIC
    non_numeric = np.zeros(n, dtype=np.int8)
    non_numeric[odd] = choice_codes(rng, len(odd), (0.5, 0.35, 0.15))

    flag = np.zeros(n, dtype=np.int8)
    cand = np.flatnonzero(va["flags"][variant] & (status == STATUS_NUMERIC))
    cand = cand[rng.random(len(cand)) < FLAG_SHARE]
    r, is_e2 = reported[cand], analyte[cand] == cat.A_E2
    flag[cand[np.where(is_e2, r > 39, r > 916)]] = FLAG_HIGH
    flag[cand[np.where(is_e2, r < 8, r < 264)]] = FLAG_LOW

    # Estradiol tier of each result, from the reported numbers exactly as the analysis derives it.
    tier = np.full(n, -1, dtype=np.int8)          # -1: not an estradiol tier observation
    e2 = np.flatnonzero(analyte == cat.A_E2)
    per_pg = np.where(va["factor"][variant[e2]] != 1.0, P.PMOL_PER_PG, 1.0)
    value_pg = reported[e2] / per_pg
    e2_status = status[e2]
    e2_tier = np.where(e2_status == STATUS_NUMERIC,
                       np.searchsorted(np.array(P.TIER_UPPER[:3]), value_pg, side="right"),
                       np.where(va["loq"][variant[e2]] / per_pg <= P.TIER_UPPER[0], P.TIER_LT10, P.TIER_UNKNOWN))
    keep = (e2_status == STATUS_NUMERIC) | (e2_status == STATUS_BELOW)     # non-numeric results are ignored
    tier[e2[keep]] = e2_tier[keep]
    e2_pg_ml = np.full(n, np.nan, dtype=np.float32)
    numeric = e2_status == STATUS_NUMERIC
    e2_pg_ml[e2[numeric]] = value_pg[numeric]
    rows.update(variant=variant, value_code=code.astype(np.int32), status=status, flag=flag, e2_tier=tier,
                non_numeric=non_numeric, e2_pg_ml=e2_pg_ml)


def baseline_bmi(rows: dict[str, np.ndarray], n_pat: int) -> np.ndarray:
    """The BMI covariate: the reported BMI of each patient's baseline draw (last BMI on or before index)."""
    sel = rows["baseline"] & (rows["analyte"] == cat.A_BMI)
    out = np.full(n_pat, np.nan)
    out[rows["pid"][sel]] = reported_value(rows)[sel]
    return out


def reported_value(rows: dict[str, np.ndarray]) -> np.ndarray:
    """The reported number of every row as a float (meaningful where status is numeric)."""
    return rows["value_code"] / cat.lab_variant_arrays()["scale"][rows["variant"]]


def result_strings(value_code: np.ndarray, variant: np.ndarray, status: np.ndarray, flag: np.ndarray,
                   non_numeric: np.ndarray) -> pl.Series:
    """The `result` column as the lab writes it: `23.4`, `5.2 H`, `<5`, `>1500`, `HEMOLYZED`.

    Numbers with d decimals are always written with d decimals. Built by one
    gather from a lookup of every string needed (numbers up to the largest
    code per decimal count, times flag suffix, then the tokens), which is far
    cheaper than formatting millions of floats.
    """
    decimals = cat.lab_variant_arrays()["decimals"][variant]
    numeric = status == STATUS_NUMERIC
    lookup: list[str] = []
    base = np.zeros(3, dtype=np.int64)
    size = np.zeros(3, dtype=np.int64)
    for d in range(3):
        base[d] = len(lookup)
        codes = value_code[numeric & (decimals == d)]
        size[d] = int(codes.max()) + 1 if len(codes) else 0
        numbers = [_format(i, d) for i in range(size[d])]
        lookup += numbers + [s + " H" for s in numbers] + [s + " L" for s in numbers]
    tokens = sorted({v.below_token for v in cat.LAB_VARIANTS if v.below_token}
                    | {v.above_token for v in cat.LAB_VARIANTS if v.above_token} | set(cat.NON_NUMERIC_RESULTS))
    token_base = len(lookup)
    lookup += tokens
    position = {tok: token_base + i for i, tok in enumerate(tokens)}
    below = np.array([position.get(v.below_token, -1) for v in cat.LAB_VARIANTS])[variant]
    above = np.array([position.get(v.above_token, -1) for v in cat.LAB_VARIANTS])[variant]
    note = np.array([position[s] for s in cat.NON_NUMERIC_RESULTS])[non_numeric]
    number = base[decimals] + flag.astype(np.int64) * size[decimals] + value_code
    idx = np.select([numeric, status == STATUS_BELOW, status == STATUS_ABOVE], [number, below, above], note)
    return pl.Series("result", lookup, dtype=pl.String).gather(idx)


def _format(code: int, decimals: int) -> str:
    if decimals == 0:
        return str(code)
    whole, frac = divmod(code, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"
