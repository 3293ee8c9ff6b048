"""Exposure on a daily grid, stored run-length encoded as per-patient day intervals.

Every exposure the outcomes depend on (current AI, estradiol tier, current
glucocorticoid) is a daily 0/1 or categorical series per patient. Instead of
materialising one cell per patient-day, each series is kept as sorted,
disjoint, closed day intervals [start, end]; the daily grid is exact and the
queries below answer "exposed on day d?" and "days exposed before day d" with
binary searches over (patient, day) keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_STRIDE = np.int64(1 << 24)   # day numbers (and day + 30) stay far below 2**24


def key(pid: np.ndarray, day: np.ndarray) -> np.ndarray:
    return pid.astype(np.int64) * _STRIDE + day.astype(np.int64)


@dataclass
class Intervals:
    """Disjoint closed day intervals per patient, sorted by (pid, start)."""
    pid: np.ndarray
    start: np.ndarray
    end: np.ndarray
    label: np.ndarray | None = None

    def __post_init__(self):
        self.keys = key(self.pid, self.start)
        length = self.end - self.start + 1
        covered = np.cumsum(length)
        first = np.r_[True, self.pid[1:] != self.pid[:-1]] if len(self.pid) else np.zeros(0, bool)
        before = covered - length
        idx = np.where(first, np.arange(len(before)), 0)
        np.maximum.accumulate(idx, out=idx)
        self.prefix = before - before[idx] if len(before) else before  # covered days in earlier intervals

    def select(self, mask: np.ndarray) -> "Intervals":
        return Intervals(self.pid[mask], self.start[mask], self.end[mask],
                         None if self.label is None else self.label[mask])

    def lookup(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Index of the interval covering (pid, day), or -1."""
        j = np.searchsorted(self.keys, key(pid, day), side="right") - 1
        jc = np.maximum(j, 0)
        ok = (j >= 0) & (self.pid[jc] == pid) & (self.end[jc] >= day) if len(self.pid) else np.zeros(len(pid), bool)
        return np.where(ok, j, -1)

    def covers(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        return self.lookup(pid, day) >= 0

    def days_before(self, pid: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Number of covered days strictly before `day` for each (pid, day)."""
        if not len(self.pid):
            return np.zeros(len(pid), dtype=np.int64)
        j = np.searchsorted(self.keys, key(pid, day), side="left") - 1   # last interval starting before day
        jc = np.maximum(j, 0)
        ok = (j >= 0) & (self.pid[jc] == pid)
        partial = np.minimum(day.astype(np.int64) - 1, self.end[jc]) - self.start[jc] + 1
        return np.where(ok, self.prefix[jc] + partial, 0)


def _by_patient_and_day(pid: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Row order by (pid, day); inputs usually arrive sorted already, which is checked instead of re-sorted."""
    k = key(pid, day)
    return np.arange(len(k)) if np.all(k[1:] >= k[:-1]) else np.argsort(k, kind="stable")


def union(pid: np.ndarray, start: np.ndarray, end: np.ndarray) -> Intervals:
    """Union of closed intervals per patient; overlapping or touching intervals merge."""
    order = _by_patient_and_day(pid, start)
    p = pid[order].astype(np.int64)
    s = start[order].astype(np.int64)
    e = end[order].astype(np.int64)
    reach = np.maximum.accumulate(key(p, e)) - p * _STRIDE   # running max end within patient
    new = np.ones(len(p), dtype=bool)
    new[1:] = (p[1:] != p[:-1]) | (s[1:] > reach[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(p) - 1] if len(p) else first
    return Intervals(p[first], s[first], reach[last])


def last_value_intervals(pid: np.ndarray, day: np.ndarray, label: np.ndarray, lookback: int) -> Intervals:
    """Intervals of 'the latest observation within `lookback` days' (observations on distinct days).

    Observation k (day c) holds on days c .. min(c + lookback - 1, next observation - 1).
    """
    order = _by_patient_and_day(pid, day)
    p, d, lab = pid[order].astype(np.int64), day[order].astype(np.int64), label[order]
    same_next = np.r_[p[1:] == p[:-1], False]
    nxt = np.r_[d[1:], 0]
    if np.any(same_next & (nxt == d)):
        raise ValueError("two observations of one patient on the same day")
    end = np.where(same_next, np.minimum(d + lookback - 1, nxt - 1), d + lookback - 1)
    return Intervals(p, d, end, lab)


def elementary_segments(lo: np.ndarray, hi: np.ndarray, interval_sets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each patient's window [lo, hi) (indexed by pid) wherever an exposure starts or stops.

    Within a returned segment [start, end) every exposure in `interval_sets`
    is constant, so a hazard driven by them is piecewise constant on segments.
    """
    n = len(lo)
    pid = np.concatenate([np.arange(n), np.arange(n)] + [iv.pid for iv in interval_sets] * 2)
    day = np.concatenate([lo, hi] + [iv.start for iv in interval_sets] + [iv.end + 1 for iv in interval_sets])
    inside = (day >= lo[pid]) & (day <= hi[pid])
    bounds = np.sort(key(pid[inside], day[inside]))
    bounds = bounds[np.r_[True, bounds[1:] != bounds[:-1]]]
    bp, bd = bounds // _STRIDE, bounds % _STRIDE
    same = bp[1:] == bp[:-1]
    return bp[:-1][same], bd[:-1][same], bd[1:][same]


def first_event_time(seg_pid: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray,
                     rate: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """First time the cumulative hazard of a piecewise-constant rate reaches `threshold` (per patient).

    Segments [start, end) in days are sorted by (pid, start) and contiguous per
    patient; `rate` is per day; `threshold` (indexed by pid) is an Exp(1) draw.
    Returns the event time in (fractional) days, or NaN when the hazard
    accumulated over the patient's segments stays below the threshold.
    """
    n_pat = len(threshold)
    h = rate * (seg_end - seg_start)
    total = np.cumsum(h)
    before = total - h
    first = np.r_[True, seg_pid[1:] != seg_pid[:-1]]
    pat_base = np.zeros(n_pat)
    pat_base[seg_pid[first]] = before[first]
    target = pat_base + threshold
    k = np.searchsorted(total, target[seg_pid[first]], side="left")
    out = np.full(n_pat, np.nan)
    pats = seg_pid[first]
    kc = np.minimum(k, len(total) - 1)
    hit = (k < len(total)) & (seg_pid[kc] == pats)
    kk = kc[hit]
    out[pats[hit]] = seg_start[kk] + (target[pats[hit]] - before[kk]) / rate[kk]
    return out
