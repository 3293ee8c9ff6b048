"""Small vectorized helpers shared by the generator modules.

Days are int32/int64 counts since 1970-01-01 ("day numbers") on the TRUE
(unshifted) calendar; per-patient date shifting happens only when a snapshot is
rendered. Optional integers use the sentinel ``NA`` and optional floats NaN, so
the simulation stays in plain numpy arrays.
"""

from __future__ import annotations

from datetime import date

import numpy as np

NA = -(2**31)  # sentinel for a missing integer / day
DAYS_PER_YEAR = 365.25
_EPOCH = date(1970, 1, 1)

# Stable component ids for random streams: adding a component never changes the
# draws of the others, so a change in one table leaves the rest byte-identical.
_STREAMS = {
    "population": 1, "trt": 2, "ai": 3, "glucocorticoid": 4, "bone_drugs": 5,
    "background_meds": 6, "labs": 7, "dxa": 8, "fracture": 9, "diagnoses": 10,
    "keys": 11, "snapshot": 12, "defects": 13,
}


def rng_for(seed: int, site: int, component: str, extra: int = 0) -> np.random.Generator:
    """Independent, reproducible random stream for one (site, component[, extra])."""
    return np.random.default_rng(np.random.SeedSequence([seed, site, _STREAMS[component], extra]))


def day_number(d: date) -> int:
    return (d - _EPOCH).days


def year_of(days: np.ndarray) -> np.ndarray:
    """Calendar year of day numbers (vectorized)."""
    return days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def quarter_ends(last: date, quarters: int) -> list[date]:
    """The `quarters` consecutive quarter-end dates ending at `last` (oldest first)."""
    if (last.month, last.day) not in {(3, 31), (6, 30), (9, 30), (12, 31)}:
        raise ValueError(f"last_cutoff must be a quarter end, got {last}")
    out = []
    y, q = last.year, (last.month - 1) // 3 + 1
    for _ in range(quarters):
        month = 3 * q
        out.append(date(y, month, 31 if month in (3, 12) else 30))
        q -= 1
        if q == 0:
            y, q = y - 1, 4
    return out[::-1]


def segment_positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For per-owner counts, return (owner index per row, 0-based position within owner)."""
    counts = counts.astype(np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(counts.sum()) - np.repeat(starts, counts)
    return owner, pos


def cumsum_within(values: np.ndarray, owner: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of `values` restarting at each owner (rows grouped by owner)."""
    cs = np.cumsum(values, dtype=np.float64 if values.dtype.kind == "f" else np.int64)
    first = pos == 0
    return cs - forward_fill(cs - values, first)


def forward_fill(values: np.ndarray, is_start: np.ndarray) -> np.ndarray:
    """Repeat values[i] at each row where is_start[i] over the rows that follow it."""
    idx = np.where(is_start, np.arange(len(values)), 0)
    np.maximum.accumulate(idx, out=idx)
    return values[idx]


def renewal_days(first_day: np.ndarray, owner: np.ndarray, pos: np.ndarray,
                 increments: np.ndarray) -> np.ndarray:
    """Days of a per-owner renewal process over candidate events (owner, pos) from segment_positions.

    Event 0 falls on first_day[owner]; event k follows event k-1 by that
    event's increment. Callers drop the events past their horizon.
    """
    steps = np.where(pos == 0, 0, np.roll(increments.astype(np.int64), 1))
    return first_day[owner].astype(np.int64) + cumsum_within(steps, owner, pos)


def choice_codes(rng: np.random.Generator, n: int, probs) -> np.ndarray:
    """Categorical draws (int8 codes) from a probability vector, via inverse CDF."""
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    cdf /= cdf[-1]
    return np.searchsorted(cdf, rng.random(n), side="right").astype(np.int8)
