"""DXA scans: a baseline near index, follow-ups 1-2 years apart, BMD from the planted model.

BMD is simulated on the TRUE standardized scale (sBMD) and converted to each
manufacturer's raw value by inverting the contract's equations, so the
analysis recovers the planted effects after standardizing. Per skeletal site s:

    log sBMD_ij = mu_s + g_age,s age_c + g_bmi,s bmi_c + b0_is
                  + (time_s + d_age,s age_c + d_bmi,s bmi_c + b1_is) t_ij
                  + ai_s A_ij + sum_k tier_k,s E_k,ij + e_ij

t_ij = years since the patient's first scan (the baseline scan when it lies
within -365/+90 days of index); A_ij and E_k,ij = years on current AI / in
estradiol tier k over the days [first scan, scan j). Coefficients are in
params.BMD_SITES (percent per year).
"""

from __future__ import annotations

import numpy as np

from . import catalogs as cat
from . import params as P
from ._common import DAYS_PER_YEAR, choice_codes, renewal_days, segment_positions
from .intervals import Intervals

MODELLED_SITES = ("lumbar_spine", "femoral_neck", "total_hip")
EXPOSURE_TERMS = ("ai_current", "e2_lt10", "e2_10_20", "e2_ge40", "e2_unknown")   # e2_20_40 is the reference
# covariate spread used to split the contract SD into covariate and random-intercept parts
_AGE_C_SD, _BMI_C_SD = 1.3, 1.1


def site_intercepts() -> dict[str, dict[str, float]]:
    """Log-scale intercept (at reference covariates) and random-intercept SD per skeletal site.

    Chosen so the Hologic raw BMD at typical covariates (age 60, BMI 30) has
    the contract's mean and SD.
    """
    out = {}
    for s in MODELLED_SITES:
        m = P.BMD_SITES[s]
        a, b = P.SBMD_EQUATIONS[("Hologic", s)]
        sbmd_mean = a * m["hologic_mean"] + b
        total_sd = a * m["hologic_sd"] / sbmd_mean
        cov_var = (m["baseline_age"] / 100 * _AGE_C_SD) ** 2 + (m["baseline_bmi"] / 100 * _BMI_C_SD) ** 2
        sd0 = float(np.sqrt(total_sd**2 - cov_var))
        typical = (m["baseline_age"] / 100 * (P.BMD_TYPICAL_AGE - P.AGE_REF) / P.AGE_SCALE
                   + m["baseline_bmi"] / 100 * (P.BMD_TYPICAL_BMI - P.BMI_REF) / P.BMI_SCALE)
        out[s] = dict(log_intercept=float(np.log(sbmd_mean) - typical - sd0**2 / 2), sd_intercept=sd0)
    return out


def simulate_dxa(p: dict[str, np.ndarray], site: int, ai: Intervals, tiers: Intervals, bmi_c: np.ndarray,
                 rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
    """Scans and their rows; also each patient's baseline femoral-neck sBMD for the fracture model.

    Returns (rows, fn_sbmd_baseline, counts). fn_sbmd_baseline is the
    standardized value of the emitted first-scan femoral-neck row (Hologic/GE
    scanners), else the patient's latent noise-free value at t = 0.
    """
    n = len(p["index"])
    age_c = (p["age_years"] - P.AGE_REF) / P.AGE_SCALE
    scans, counts = _schedule(p, site, rng)
    re0, re1 = _random_effects(n, rng)
    spid, sday, spos, sscanner = scans["pid"], scans["day"], scans["pos"], scans["scanner"]
    first_day = np.zeros(n, dtype=np.int64)
    first_day[spid[spos == 0]] = sday[spos == 0]
    t_days = sday - first_day[spid]
    t = t_days / DAYS_PER_YEAR
    exposure_years = {"ai_current": _years(ai, spid, sday, first_day)}
    for k, name in enumerate(P.TIERS[:4]):
        exposure_years[name] = _years(tiers.select(tiers.label == k), spid, sday, first_day)
    exposure_years["e2_unknown"] = t - sum(exposure_years[name] for name in P.TIERS[:4])

    maker = cat.SCANNER_MANUFACTURER[sscanner]
    intercepts = site_intercepts()
    n_scan = len(spid)
    site_present = np.column_stack([rng.random(n_scan) < 0.97, np.ones(n_scan, bool), np.ones(n_scan, bool),
                                    rng.random(n_scan) < 0.03])
    raw_by_site = np.zeros((n_scan, 4))
    fn_baseline = np.full(n, np.nan)
    for j, s in enumerate(MODELLED_SITES):
        m, ic = P.BMD_SITES[s], intercepts[s]
        baseline_log = (ic["log_intercept"] + m["baseline_age"] / 100 * age_c + m["baseline_bmi"] / 100 * bmi_c
                        + ic["sd_intercept"] * re0[:, j])
        slope = (m["time"] + m["age_x_time"] * age_c + m["bmi_x_time"] * bmi_c + m["sd_slope"] * re1[:, j]) / 100
        log_s = (baseline_log[spid] + slope[spid] * t
                 + sum(m[k] / 100 * exposure_years[k] for k in EXPOSURE_TERMS)
                 + rng.normal(0.0, m["residual_cv"] / 100, n_scan))
        raw = np.round(_raw_from_sbmd(np.exp(log_s), maker, s), 3)
        raw_by_site[:, j] = raw      # MODELLED_SITES is the head of catalogs.DXA_SITES
        if s == "femoral_neck":
            fn_baseline = np.exp(baseline_log)
            first = (spos == 0) & (maker != cat.NORLAND_MAKER)
            a, b = _equation(maker[first], s)
            fn_baseline[spid[first]] = a * raw[first] + b
    radius = np.exp(np.log(0.80) + 0.09 * rng.normal(0, 1, n)[spid] - 0.003 * t + rng.normal(0, 0.012, n_scan))
    raw_by_site[:, 3] = np.round(radius, 3)

    scan_idx, site_idx = np.nonzero(site_present)
    rows = dict(pid=spid[scan_idx].astype(np.int32), day=sday[scan_idx].astype(np.int32),
                site=site_idx.astype(np.int8), scanner=sscanner[scan_idx],
                model_null=scans["model_null"][scan_idx], bmd=raw_by_site[scan_idx, site_idx])
    hip = (site_idx == 1) | (site_idx == 2)
    rows["laterality"] = np.where(hip, p["hip_side"][rows["pid"]], -1).astype(np.int8)
    _scores(p, rows, rng)
    return rows, fn_baseline, counts


def _schedule(p, site, rng) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Scan days: first scan near index for most (else late), then up to 4 follow-ups 1-2 years apart."""
    n = len(p["index"])
    index, end = p["index"].astype(np.int64), p["end_obs"].astype(np.int64)
    has_dxa = rng.random(n) < 0.92
    in_window = rng.random(n) < 0.88
    first = np.where(in_window, index + rng.integers(-365, 91, n), index + rng.integers(121, 601, n))
    first = np.maximum(first, p["enroll_start"])
    valid = has_dxa & (first <= end)
    n_follow = np.where(rng.random(n) < 0.12, 0, 4)
    owner, pos = segment_positions(np.where(valid, 1 + n_follow, 0))
    inc = rng.integers(365, 731, len(owner))
    # The first follow-up lies beyond index + 90, so the baseline stays the only scan in the window.
    inc = np.where(pos == 0, np.maximum(inc, index[owner] + 91 - first[owner]), inc)
    day = renewal_days(first, owner, pos, inc)
    keep = day <= end[owner]
    owner, pos, day = owner[keep], pos[keep], day[keep]

    prof = cat.site_profile(site)
    scanner = p["scanner"][owner].astype(np.int8)
    switch = (pos > 0) & (rng.random(len(owner)) < 0.08)
    scanner[switch] = choice_codes(rng, switch.sum(), prof.scanner_mix)
    scanner[rng.random(len(owner)) < 0.01] = cat.NORLAND
    scans = dict(pid=owner, day=day, pos=pos, scanner=scanner, model_null=rng.random(len(owner)) < 0.03)
    first_scan = day[pos == 0] - index[owner[pos == 0]]
    counts = dict(patients_with_dxa=int((pos == 0).sum()),
                  patients_with_baseline_in_window=int(((first_scan >= -365) & (first_scan <= 90)).sum()),
                  patients_with_follow_up_scan=int((pos == 1).sum()),
                  norland_scans=int((scanner == cat.NORLAND).sum()))
    return scans, counts


def _random_effects(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal (intercept, slope) effects per patient and skeletal site.

    Within a site corr(intercept, slope) = BMD_CORR_INTERCEPT_SLOPE; across
    sites each effect correlates BMD_CROSS_SITE_CORR (shared + site-specific part).
    """
    rho, c = P.BMD_CORR_INTERCEPT_SLOPE, P.BMD_CROSS_SITE_CORR

    def pair(shape):
        z0 = rng.normal(0, 1, shape)
        return z0, rho * z0 + np.sqrt(1 - rho**2) * rng.normal(0, 1, shape)

    g0, g1 = pair((n, 1))
    e0, e1 = pair((n, len(MODELLED_SITES)))
    return np.sqrt(c) * g0 + np.sqrt(1 - c) * e0, np.sqrt(c) * g1 + np.sqrt(1 - c) * e1


def _years(iv: Intervals, pid, day, first_day) -> np.ndarray:
    """Years exposed over the days [first scan, scan day)."""
    return (iv.days_before(pid, day) - iv.days_before(pid, first_day[pid])) / DAYS_PER_YEAR


def _equation(maker: np.ndarray, site: str) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept) of sBMD = slope * raw + intercept per row (Hologic, else GE Lunar)."""
    (ah, bh), (ag, bg) = P.SBMD_EQUATIONS[("Hologic", site)], P.SBMD_EQUATIONS[("GE Lunar", site)]
    hologic = maker == cat.HOLOGIC
    return np.where(hologic, ah, ag), np.where(hologic, bh, bg)


def _raw_from_sbmd(sbmd: np.ndarray, maker: np.ndarray, site: str) -> np.ndarray:
    """Invert sBMD = a * raw + b for Hologic / GE Lunar; Norland has no equation (fixed ratio)."""
    a, b = _equation(maker, site)
    return np.where(maker == cat.NORLAND_MAKER, sbmd * P.NORLAND_RAW_PER_SBMD, (sbmd - b) / a)


def _scores(p, rows, rng) -> None:
    """T-score against a young-adult male reference; Z-score against an age-matched one."""
    n = len(rows["pid"])
    ref = np.array([[cat.YOUNG_REFERENCE[m][s] for s in cat.DXA_SITES] for m in cat.MANUFACTURERS])  # [maker, site, 2]
    maker = cat.SCANNER_MANUFACTURER[rows["scanner"]]
    mean, sd = ref[maker, rows["site"], 0], ref[maker, rows["site"], 1]
    age = p["age_index"][rows["pid"]] + (rows["day"] - p["index"][rows["pid"]]) / DAYS_PER_YEAR
    rows["t_score"] = _on_scale(np.where(rng.random(n) < 0.02, np.nan, np.round((rows["bmd"] - mean) / sd, 1)))
    age_mean = mean * (1 - 0.0035 * np.maximum(age - 30, 0))
    rows["z_score"] = _on_scale(np.where(rng.random(n) < 0.10, np.nan, np.round((rows["bmd"] - age_mean) / sd, 1)))


def _on_scale(score: np.ndarray) -> np.ndarray:
    """No score beyond +-10, as scanner software reports none off its reference scale: the lumbar-spine
    tail reaches Z = 10 at 1M patients, and a clean row must never break the delivered_dxa
    plausibility rule (|T| or |Z| above 10), which counts planted defects only."""
    return np.where(np.abs(score) > 10, np.nan, score)
