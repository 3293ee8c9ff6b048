"""Dispensings: testosterone, aromatase inhibitors, glucocorticoids, bone drugs and background drugs.

Each generator returns a block of rows (dict of equal-length arrays); rows
carry a product id and a drug_name variant id into catalogs.PRODUCTS, and a
covered-days representation like real sources: days_supply only, end_date
only, or both (a few testosterone rows carry neither).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from . import catalogs as cat
from ._common import NA, choice_codes, renewal_days, segment_positions

MED_COLUMNS = ("pid", "product", "name", "code", "start", "days_supply", "end", "dose_mg", "doses_per_week",
               "route_null")
REPR_MIX = (0.80, 0.12, 0.08)      # days_supply only, end_date only, both
TRT_NEITHER_SHARE = 0.005          # testosterone rows with neither (index uses the start date only)
PID = cat.PRODUCT_ID
assert len(cat.PRODUCTS) <= 32   # concat() packs product ids into 5 bits (and day numbers into 16)


def simulate_medications(p: dict[str, np.ndarray], rngs: dict[str, np.random.Generator]) -> dict[str, np.ndarray]:
    """All dispensings of one site except post-fracture bone drugs (added with the outcomes)."""
    return concat([
        _trt(p, rngs["trt"]),
        _aromatase_inhibitors(p, rngs["ai"]),
        _glucocorticoids(p, rngs["glucocorticoid"]),
        _bone_drugs(p, rngs["bone_drugs"]),
        _background(p, rngs["background_meds"]),
    ])


def concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate blocks, sort by (patient, start, product) and keep one dispensing per such triple.

    Refill series never repeat a day, so only independently scattered fills
    can collide; dropping them keeps the delivered rows free of exact duplicates.
    """
    rows = _stack(blocks)
    packed = (rows["pid"].astype(np.int64) << 21) | (rows["start"].astype(np.int64) << 5) | rows["product"]
    # (key, row number) is unique, so the order - and the row kept among equal keys - is deterministic.
    order = pl.DataFrame({"key": packed, "row": np.arange(len(packed))}).sort("key", "row")["row"].to_numpy()
    packed = packed[order]
    first = np.r_[True, packed[1:] != packed[:-1]]
    return {c: v[order[first]] for c, v in rows.items()}


def covered_end(m: dict[str, np.ndarray]) -> np.ndarray:
    """Last covered day: start + days_supply - 1, else end_date (NA when neither is present)."""
    return np.where(m["days_supply"] != NA, m["start"] + m["days_supply"] - 1, m["end"])


def make_rows(rng: np.random.Generator, pid: np.ndarray, product: np.ndarray, start: np.ndarray,
              days: np.ndarray, dose: np.ndarray, per_week: np.ndarray, allow_neither: bool = False
              ) -> dict[str, np.ndarray]:
    """Rows for dispensings covering `days` days from `start`, in a source-like representation."""
    n = len(pid)
    product = np.broadcast_to(product, (n,)).astype(np.int16)
    rep = choice_codes(rng, n, REPR_MIX)
    if allow_neither:
        rep[rng.random(n) < TRT_NEITHER_SHARE] = 3
    days = days.astype(np.int64)
    code = choice_codes(rng, n, cat.CODE_VARIANT_MIX)
    no_rx = np.array([pr.rxnorm is None for pr in cat.PRODUCTS])[product]
    # Without an RxNorm code, "both" and "RxNorm only" collapse to what the row really shows.
    code[no_rx & (code == cat.CODE_BOTH)] = cat.CODE_ATC_ONLY
    code[no_rx & (code == cat.CODE_RXNORM_ONLY)] = cat.CODE_NAME_ONLY
    return dict(
        pid=pid.astype(np.int32), product=product, name=cat.name_choice(rng, product), code=code,
        start=start.astype(np.int32),
        days_supply=np.where((rep == 0) | (rep == 2), days, NA).astype(np.int32),
        end=np.where((rep == 1) | (rep == 2), start + days - 1, NA).astype(np.int32),
        dose_mg=np.broadcast_to(dose, (n,)).astype(np.float64),
        doses_per_week=np.broadcast_to(per_week, (n,)).astype(np.float64),
        route_null=rng.random(n) < 0.03,
    )


def _draw(rng, products: np.ndarray, attr: str) -> np.ndarray:
    return cat.product_attribute_draw(rng, products, attr)


def _refill_series(rng, first: np.ndarray, last: np.ndarray, max_fills: np.ndarray, usual_days: np.ndarray,
                   products: np.ndarray, gap_mix: tuple[tuple[float, int, int], ...]):
    """Refill sequences per owner from `first` while <= `last`.

    The next fill starts `days + gap` after the previous one, where gap (days
    left uncovered, negative for an early refill) follows `gap_mix` =
    ((share, low, high), ...). Returns (owner, start, days) of the kept fills.
    """
    owner, pos = segment_positions(max_fills)
    days = usual_days[owner].copy()
    redraw = rng.random(len(owner)) < 0.15
    days[redraw] = _draw(rng, products[owner[redraw]], "days_supply")
    kind = choice_codes(rng, len(owner), [s for s, _, _ in gap_mix])
    lows = np.array([lo for _, lo, _ in gap_mix])[kind]
    highs = np.array([hi for _, _, hi in gap_mix])[kind]
    gap = lows + np.floor(rng.random(len(owner)) * (highs - lows + 1)).astype(np.int64)
    start = renewal_days(first, owner, pos, days + gap)
    keep = start <= last[owner]
    return owner[keep], start[keep], days[keep]


def _trt(p, rng) -> dict[str, np.ndarray]:
    """Testosterone fills from the index date until discontinuation or end of observation."""
    product = p["trt_product"]
    usual = _draw(rng, product, "days_supply")
    dose, per_week = _draw(rng, product, "doses_mg"), _draw(rng, product, "doses_per_week")
    last = np.minimum(p["trt_stop"], p["end_obs"]).astype(np.int64)
    # Candidate fills: enough to cover the span at the mean refill interval (usual + ~28 days) with margin.
    max_fills = np.ceil((last - p["index"]) / (usual + 15) * 1.2).astype(np.int64) + 3
    owner, start, days = _refill_series(rng, p["index"], last, max_fills, usual, product,
                                        ((0.80, -7, 14), (0.20, 15, 240)))
    return make_rows(rng, owner, product[owner], start, days, dose[owner], per_week[owner], allow_neither=True)


def _aromatase_inhibitors(p, rng) -> dict[str, np.ndarray]:
    """AI courses after TRT start: refill gaps within and beyond the 30-day grace, stops and restarts."""
    users = np.flatnonzero(p["ai_user"])
    product = p["ai_product"][users]
    usual = _draw(rng, product, "days_supply")
    dose, per_week = _draw(rng, product, "doses_mg"), _draw(rng, product, "doses_per_week")
    n_fills = rng.geometric(0.13, len(users))
    owner, start, days = _refill_series(
        rng, p["ai_start"][users], p["end_obs"][users].astype(np.int64), n_fills, usual, product,
        ((0.68, -7, 30), (0.24, 31, 180), (0.08, 181, 540)))
    return make_rows(rng, users[owner], product[owner], start, days, dose[owner], per_week[owner])


def _scattered(rng, users: np.ndarray, counts: np.ndarray, products: np.ndarray,
               lo: np.ndarray, hi: np.ndarray) -> dict[str, np.ndarray]:
    """`counts` single dispensings per user on days uniform in [lo, hi] (per user), one product per user."""
    owner, _ = segment_positions(counts)
    day = lo[owner] + np.floor(rng.random(len(owner)) * (hi[owner] - lo[owner] + 1)).astype(np.int64)
    prod = products[owner]
    return make_rows(rng, users[owner], prod, day, _draw(rng, prod, "days_supply"),
                     _draw(rng, prod, "doses_mg"), _draw(rng, prod, "doses_per_week"))


def _glucocorticoids(p, rng) -> dict[str, np.ndarray]:
    """Systemic glucocorticoid bursts (intermittent) and a few chronic prednisone users."""
    n = len(p["index"])
    lo, hi = p["enroll_start"].astype(np.int64), p["end_obs"].astype(np.int64)
    burst = np.flatnonzero(rng.random(n) < 0.12)
    gc_ids = np.array([PID["prednisone"], PID["methylprednisolone"], PID["dexamethasone"]], dtype=np.int16)
    counts = np.minimum(1 + rng.poisson(0.8, len(burst)), 5)
    prods = gc_ids[choice_codes(rng, len(burst), (0.7, 0.2, 0.1))]
    bursts = _scattered(rng, burst, counts, prods, lo[burst], hi[burst])

    chronic = np.flatnonzero((rng.random(n) < 0.015) & (hi - lo > 60))
    first = lo[chronic] + np.floor(rng.random(len(chronic)) * (hi[chronic] - lo[chronic] - 30)).astype(np.int64)
    pred = np.full(len(chronic), PID["prednisone"], dtype=np.int16)
    owner, start, days = _refill_series(rng, first, hi[chronic], rng.integers(4, 21, len(chronic)),
                                        np.full(len(chronic), 30), pred, ((1.0, -3, 10),))
    chronic_rows = make_rows(rng, chronic[owner], PID["prednisone"], start, np.full(len(owner), 30),
                             np.full(len(owner), 5.0), np.full(len(owner), 7.0))
    return _stack([bursts, chronic_rows])


def _bone_drugs(p, rng) -> dict[str, np.ndarray]:
    """Bisphosphonates before index (cohort exclusion) and anti-osteoporotics started during follow-up."""
    n = len(p["index"])
    index, lo, hi = p["index"].astype(np.int64), p["enroll_start"].astype(np.int64), p["end_obs"].astype(np.int64)
    pre = np.flatnonzero((rng.random(n) < 0.025) & (index - lo >= 60))
    first = lo[pre] + np.floor(rng.random(len(pre)) * (index[pre] - 30 - lo[pre])).astype(np.int64)
    alen = np.full(len(pre), PID["alendronate"], dtype=np.int16)
    owner, start, days = _refill_series(rng, first, index[pre] - 1, rng.integers(1, 5, len(pre)),
                                        _draw(rng, alen, "days_supply"), alen, ((1.0, -3, 20),))
    before = make_rows(rng, pre[owner], PID["alendronate"], start, days, np.full(len(owner), 70.0),
                       np.full(len(owner), 1.0))

    during = np.flatnonzero((rng.random(n) < 0.025) & (hi - index > 60))
    ids = np.array([PID["alendronate"], PID["zoledronic_acid"], PID["denosumab"]], dtype=np.int16)
    prods = ids[choice_codes(rng, len(during), (0.80, 0.15, 0.05))]
    return _stack([before, start_bone_drug(rng, during, index[during] + 30, hi[during], prods, hi[during])])


def start_bone_drug(rng, users: np.ndarray, lo: np.ndarray, hi: np.ndarray, products: np.ndarray,
                    last: np.ndarray) -> dict[str, np.ndarray]:
    """A bone drug started on a day uniform in [lo, hi], refilled up to 6 times while <= last."""
    first = lo + np.floor(rng.random(len(users)) * (hi - lo + 1)).astype(np.int64)
    owner, start, days = _refill_series(rng, first, last, rng.integers(1, 7, len(users)),
                                        _draw(rng, products, "days_supply"), products, ((1.0, -3, 30),))
    prod = products[owner]
    return make_rows(rng, users[owner], prod, start, days, _draw(rng, prod, "doses_mg"),
                     _draw(rng, prod, "doses_per_week"))


def _background(p, rng) -> dict[str, np.ndarray]:
    """Unrelated drugs (statin, ACE inhibitor, nasal steroid that is NOT systemic) for realism."""
    n = len(p["index"])
    lo, hi = p["enroll_start"].astype(np.int64), p["end_obs"].astype(np.int64)
    blocks = []
    for key, share, most in (("atorvastatin", 0.25, 3), ("lisinopril", 0.20, 2), ("fluticasone_nasal", 0.05, 2)):
        users = np.flatnonzero(rng.random(n) < share)
        prods = np.full(len(users), PID[key], dtype=np.int16)
        blocks.append(_scattered(rng, users, rng.integers(1, most + 1, len(users)), prods, lo[users], hi[users]))
    return _stack(blocks)


def _stack(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([b[c] for b in blocks]) for c in MED_COLUMNS}
