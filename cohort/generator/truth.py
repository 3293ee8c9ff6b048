"""truth.json: the planted parameters and what was actually emitted, for the analysis to be checked against."""

from __future__ import annotations

import math

import numpy as np

from . import catalogs as cat
from . import params as P
from .defects import KINDS, TABLES
from .dxa import MODELLED_SITES, site_intercepts

EXPOSURE_DEFINITIONS = {
    "grid": "daily: every exposure is a per-patient daily series (stored run-length encoded as day intervals); "
            "exposure on day d is evaluated from records dated on or before d",
    "index_date": "first testosterone dispensing (start_date)",
    "baseline_dxa": "the scan closest to index within -365..+90 days (the generator puts at most one scan there: "
                    "the patient's first scan)",
    "time_since_baseline_years": "(scan_date - baseline scan_date) / 365.25",
    "ai_current": {
        "grace_days": P.GRACE_DAYS,
        "rule": "covered days start_date .. start_date + days_supply - 1 (else .. end_date); dispensings bridged when "
                "the gap to the next is <= 30 days; an episode ends 30 days after its last covered day. Equivalently "
                "day d is exposed iff some AI dispensing has start_date <= d <= last covered day + 30",
        "ingredients": {"anastrozole": ["L02BG03", "84857"], "letrozole": ["L02BG04", "72965"],
                        "exemestane": ["L02BG06"]},
    },
    "e2_tier": {
        "lookback_days": P.E2_LOOKBACK_DAYS,
        "rule": "tier of the most recent estradiol result collected on days d-179 .. d (else e2_unknown); "
                "non-numeric results are ignored; '5.2 H' is numeric 5.2; pmol/L / 3.671 = pg/mL; "
                "a censored '<x' is e2_lt10 when x (pg/mL) <= 10, else e2_unknown",
        "tiers_pg_ml": {"e2_lt10": [0, 10], "e2_10_20": [10, 20], "e2_20_40": [20, 40], "e2_ge40": [40, None],
                        "reference": "e2_20_40"},
    },
    "glucocorticoid_current": "day within a systemic glucocorticoid (ATC H02AB) dispensing's covered days, no grace",
    "exposure_years_for_bmd": "days exposed in [baseline scan_date, scan_date) / 365.25",
    "covariates": {
        "age_c": "(age - 65) / 10 with age = year(index start_date) - birth_year (both shifted, as delivered); "
                 "top-coded patients (birth_year null) were simulated with their true age",
        "bmi_c": "(BMI - 28) / 5 with BMI = the LOINC 39156-5 result of the baseline draw, i.e. the last BMI on or "
                 "before index (always present)",
        "femoral_neck_sbmd": "standardized (contract equation) femoral-neck BMD of the baseline scan; for Norland or "
                             "missing scans the generator used the latent value",
    },
}


def build_truth(config: dict, deliveries: dict, site_stats: list[dict]) -> dict:
    stats = _pool(site_stats)
    current = [d for d in deliveries.values() if d["is_current"]]
    return {
        "generator": config,
        "exposure_definitions": EXPOSURE_DEFINITIONS,
        "deliveries": deliveries,
        "bmd_model": _bmd_model(),
        "fracture_model": _fracture_model(stats),
        "death_model": _death_model(stats),
        "confounding": _confounding(stats),
        "exposure_summary": _exposure_summary(stats),
        "estradiol": _estradiol(stats),
        "realism": _realism(current, stats),
        "defects": _defect_totals(deliveries),
        "defect_definitions": DEFECT_DEFINITIONS,
    }


DEFECT_DEFINITIONS = {
    "how": "every defect is an injected row (copy of a genuine row, one field corrupted) placed after its source",
    "exact_duplicate_rows": "verbatim copy; count = rows - distinct rows",
    "impossible_values": "patients: fresh key, birth_year 1850; medications: days_supply <= 0; labs: numeric result "
                         "< 0; dxa: bmd_g_cm2 <= 0 or > 3",
    "future_dates": "date after data_cutoff: patients enrollment_end (fresh key), medications start_date (end_date "
                    "moved along), labs collected_date, dxa scan_date, diagnoses diagnosis_date; a genuine "
                    "medication end_date after the cutoff (running supply) is not a defect",
    "unknown_units": "labs unit in " + ", ".join(cat.UNKNOWN_UNITS),
    "orphan_rows": "patient_key absent from patients",
    "end_before_start": "medications end_date < start_date",
}


def _pool(site_stats: list[dict]) -> dict:
    pooled: dict = {}
    for s in site_stats:
        for k, v in s.items():
            if isinstance(v, dict):
                pooled.setdefault(k, {})
                for kk, vv in v.items():
                    pooled[k][kk] = pooled[k].get(kk, 0) + vv
            elif isinstance(v, np.ndarray):
                pooled[k] = np.concatenate([pooled[k], v]) if k in pooled else v
            else:
                pooled[k] = pooled.get(k, 0) + v
    return pooled


def _pct(x: float) -> float:
    return round(float(x), 6)


def _ratio(num: float, den: float, digits: int = 3) -> float | None:
    """num / den rounded, or None when there is nothing to divide by (tiny runs)."""
    return round(num / den, digits) if den else None


def _bmd_model() -> dict:
    intercepts = site_intercepts()
    sites = {}
    for s in MODELLED_SITES:
        m, ic = P.BMD_SITES[s], intercepts[s]
        sites[s] = {
            "time": m["time"], "ai_current": m["ai_current"], "e2_lt10": m["e2_lt10"], "e2_10_20": m["e2_10_20"],
            "e2_20_40": 0.0, "e2_ge40": m["e2_ge40"], "e2_unknown": m["e2_unknown"],
            "age_x_time_per_10y": m["age_x_time"], "bmi_x_time_per_5": m["bmi_x_time"],
            "baseline": {"log_sbmd_at_reference": _pct(ic["log_intercept"]),
                         "sbmd_at_reference_median": _pct(math.exp(ic["log_intercept"])),
                         "age_per_10y_pct": m["baseline_age"], "bmi_per_5_pct": m["baseline_bmi"],
                         "hologic_reference_mean": m["hologic_mean"], "hologic_reference_sd": m["hologic_sd"]},
            "random_effects": {"sd_intercept_log": _pct(ic["sd_intercept"]), "sd_slope_pct_per_year": m["sd_slope"],
                               "corr_intercept_slope": P.BMD_CORR_INTERCEPT_SLOPE},
            "residual_sd_log": m["residual_cv"] / 100,
        }
    return {
        "scale": "log standardized BMD (sBMD, contract equations); raw = inverse equation per manufacturer",
        "units": "effects in percent per year = 100 x log-scale coefficient; exposure terms multiply years "
                 "exposed since baseline",
        "formula": "log sBMD_ij = a_i + (time + age_x_time*age_c + bmi_x_time*bmi_c + u_i) t_ij "
                   "+ ai_current*A_ij + sum_k e2_k*E_kij + eps_ij; a_i = log_sbmd_at_reference "
                   "+ age_per_10y_pct/100*age_c + bmi_per_5_pct/100*bmi_c + b_i",
        "covariate_scaling": {"age_c": "(age - 65) / 10", "bmi_c": "(BMI - 28) / 5"},
        "reference": "age 65, BMI 28, not on AI, estradiol 20-<40 pg/mL",
        "cross_site_random_effect_corr": P.BMD_CROSS_SITE_CORR,
        "norland_and_radius_33": "not modelled: Norland raw = 0.93 x sBMD (no standardization exists); radius_33 "
                                 "is noise around 0.80 g/cm2",
        "sites": sites,
    }


def _fracture_model(stats: dict) -> dict:
    lhr = P.FRACTURE_LOG_HR
    py = stats["fracture_person_years"]
    return {
        "outcome": "first fragility fracture after index (initial-encounter code, day after index .. end of "
                   "enrollment); deaths compete",
        "log_hr": {k: round(v, 6) for k, v in lhr.items()},
        "hazard_ratio": {k: round(math.exp(v), 6) for k, v in lhr.items()},
        "baseline_hazard_per_1000py": P.FRACTURE_BASELINE_PER_1000PY,
        "reference": "age 65, femoral-neck sBMD 0.8, BMI 28, no AI, estradiol 20-<40 pg/mL, no glucocorticoid",
        "covariate_scaling": {"age_per_10y": "(age - 65) / 10", "femoral_neck_sbmd_per_0_1": "(sBMD - 0.8) / 0.1",
                              "bmi_per_5": "(BMI - 28) / 5"},
        "site_shares": P.FRACTURE_SITES,
        "observed": {"first_fractures": stats["fractures"], "person_years": round(py, 1),
                     "rate_per_1000py": _ratio(1000 * stats["fractures"], py)},
    }


def _death_model(stats: dict) -> dict:
    return {
        "type": "Gompertz hazard in attained age from index, independent of exposures",
        "rate_at_65_per_1000py": P.DEATH_RATE_AT_65_PER_1000PY,
        "log_rate_per_year_of_age": round(P.DEATH_LOG_RATE_PER_YEAR, 6),
        "hazard_ratio_per_10y": round(math.exp(10 * P.DEATH_LOG_RATE_PER_YEAR), 4),
        "observed": {"deaths": stats["deaths"], "person_years": round(stats["death_person_years"], 1),
                     "rate_per_1000py": _ratio(1000 * stats["deaths"], stats["death_person_years"])},
    }


def _confounding(stats: dict) -> dict:
    n_ai, n = stats["ai_users"], stats["patients"]
    return {
        "mechanism": "AI initiation logit-linear in BMI and latent estradiol; BMI raises baseline BMD, slows BMD "
                     "loss (bmi_x_time) and lowers fracture risk (bmi_per_5), so crude AI contrasts are biased",
        "ai_propensity_logit": P.AI_PROPENSITY,
        "ai_users": n_ai, "ai_share": _ratio(n_ai, n, 4),
        "mean_bmi_ai": _ratio(stats["bmi_sum_ai"], n_ai), "mean_bmi_non_ai": _ratio(stats["bmi_sum_non_ai"], n - n_ai),
        "geometric_mean_latent_e2_ai": _geometric_mean(stats["log_e2_sum_ai"], n_ai),
        "geometric_mean_latent_e2_non_ai": _geometric_mean(stats["log_e2_sum_non_ai"], n - n_ai),
    }


def _geometric_mean(log_sum: float, n: int) -> float | None:
    return round(math.exp(log_sum / n), 3) if n else None


def _exposure_summary(stats: dict) -> dict:
    py = stats["person_years"]
    total = py["total"]
    return {
        "follow_up_person_years": round(total, 1),
        "share_ai_current": _ratio(py["ai_current"], total, 5),
        "share_glucocorticoid_current": _ratio(py["glucocorticoid_current"], total, 5),
        "share_by_e2_tier": {t: _ratio(py[t], total, 5) for t in P.TIERS},
        "share_by_e2_tier_while_on_ai": {t: _ratio(py[f"{t}_on_ai"], py["ai_current"], 5) for t in P.TIERS},
    }


def _estradiol(stats: dict) -> dict:
    trt, ai = stats["e2_trt_only"], stats["e2_on_ai"]

    def describe(v):
        if not len(v):
            return None
        return {"n": int(len(v)), "median_pg_ml": round(float(np.median(v)), 3),
                "share_lt10": round(float((v < 10).mean()), 4), "share_lt20": round(float((v < 20).mean()), 4)}
    return {"numeric_results_on_trt_without_ai": describe(trt), "numeric_results_on_trt_current_ai": describe(ai)}


def _realism(current: list[dict], stats: dict) -> dict:
    out: dict = {}
    for d in current:
        for table, counts in d["realism"].items():
            for k, v in counts.items():
                out.setdefault(table, {})
                out[table][k] = out[table].get(k, 0) + v
    out["dxa_schedule"] = stats["dxa"]
    out["known_lab_units_lowercase"] = cat.KNOWN_UNITS
    out["scope"] = "summed over the current (newest) delivery of every site"
    return out


def _defect_totals(deliveries: dict) -> dict:
    total = {kind: {table: 0 for table in TABLES} for kind in KINDS}
    for d in deliveries.values():
        for kind, per_table in d["defects"].items():
            for table, n in per_table.items():
                total[kind][table] += n
    return total
