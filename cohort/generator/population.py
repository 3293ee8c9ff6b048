"""Patients: demographics, enrollment, index date, death, date shift and treatment propensity.

All patients are TRT users (the index date is their first testosterone
dispensing); ~10% are prevalent users whose index falls within 365 days of
enrollment start. The AI decision is made here because it is the confounded
treatment: higher BMI (and, through BMI, higher estradiol) makes an AI more
likely, and BMI also acts on bone.
"""

from __future__ import annotations

import numpy as np

from . import catalogs as cat
from . import params as P
from ._common import DAYS_PER_YEAR, NA, choice_codes, year_of

INDEX_WINDOW_YEARS = 8.0        # index dates spread over the 8 years before the last cutoff
PREVALENT_SHARE = 0.10
DISENROLL_PER_YEAR = 0.12
TRT_PERSISTENCE_YEARS = 2.5     # mean time on TRT before discontinuation


def simulate_population(n: int, site: int, last_day: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the latent patient-level world of one site (true, unshifted day numbers)."""
    prof = cat.site_profile(site)
    p: dict[str, np.ndarray] = {}
    p["sex"] = choice_codes(rng, n, (0.99, 0.007, 0.003))            # M, F, U
    p["race"] = choice_codes(rng, n, cat.RACE_MIX)
    p["ethnicity"] = choice_codes(rng, n, cat.ETHNICITY_MIX)
    age = 30.0 + rng.gamma(6.0, 4.5, n)
    index = rng.integers(last_day - int(INDEX_WINDOW_YEARS * 365), last_day - 60, n, endpoint=True)
    prevalent = rng.random(n) < PREVALENT_SHARE
    lookback = np.where(prevalent, rng.integers(0, 365, n),
                        365 + np.minimum(rng.exponential(700.0, n), 3650).astype(np.int64))
    p["index"] = index.astype(np.int32)
    p["prevalent"] = prevalent
    p["enroll_start"] = (index - lookback).astype(np.int32)
    p["birth"] = (index - np.round(age * DAYS_PER_YEAR)).astype(np.int32)
    p["age_index"] = age

    death = index + np.ceil(_gompertz_years(age, rng) * DAYS_PER_YEAR).astype(np.int64)
    disenroll = index + np.ceil(rng.exponential(1 / DISENROLL_PER_YEAR, n) * DAYS_PER_YEAR).astype(np.int64)
    p["death"] = np.where(death <= last_day, death, NA).astype(np.int32)
    p["end_obs"] = np.minimum(np.minimum(death, disenroll), last_day).astype(np.int32)  # enrollment end (world)
    p["offset"] = rng.integers(0, 365, n, endpoint=True).astype(np.int32)
    # Age covariate exactly as the analysis can compute it: year(shifted index) - birth_year.
    p["age_years"] = (year_of(p["index"] - p["offset"]) - year_of(p["birth"] - p["offset"])).astype(np.int32)

    bmi = np.clip(rng.normal(30.5, 5.5, n), 17.0, 60.0)
    p["bmi_latent"] = bmi
    p["log_e2"] = (np.log(P.E2_ON_TRT_PG_ML) + P.E2_LOG_PER_BMI_UNIT * (bmi - P.BMI_REF)
                   + rng.normal(0.0, P.E2_PATIENT_SD_LOG, n))
    p["hip_side"] = (rng.random(n) < 0.15).astype(np.int8)              # 0 left, 1 right
    p["lab_system"] = choice_codes(rng, n, prof.lab_system_mix)
    p["scanner"] = choice_codes(rng, n, prof.scanner_mix)
    p["trt_product"] = np.array([cat.PRODUCT_ID[k] for k in cat.TRT_PRODUCT_MIX], dtype=np.int16)[
        choice_codes(rng, n, list(cat.TRT_PRODUCT_MIX.values()))]
    p["trt_stop"] = (index + rng.exponential(TRT_PERSISTENCE_YEARS * DAYS_PER_YEAR, n)).astype(np.int32)
    _assign_ai(p, rng)
    return p


def _gompertz_years(age: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Years from index to death under a Gompertz hazard in attained age (inverse cumulative hazard)."""
    b = P.DEATH_LOG_RATE_PER_YEAR
    h_now = P.DEATH_RATE_AT_65_PER_1000PY / 1000.0 * np.exp(b * (age - 65.0))
    return np.log1p(rng.exponential(1.0, len(age)) * b / h_now) / b


def _assign_ai(p: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Confounded AI initiation: logit-linear in BMI and latent estradiol, started after TRT."""
    n = len(p["index"])
    z_e2 = (p["log_e2"] - np.log(P.E2_ON_TRT_PG_ML)) / np.sqrt(
        P.E2_PATIENT_SD_LOG**2 + (P.E2_LOG_PER_BMI_UNIT * 5.5) ** 2)
    a = P.AI_PROPENSITY
    logit = a["intercept"] + a["per_bmi_unit"] * (p["bmi_latent"] - P.BMI_REF) + a["per_sd_log_e2"] * z_e2
    wants = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    start = p["index"] + 45 + rng.exponential(300.0, n).astype(np.int64)
    user = wants & (start <= p["end_obs"] - 30)
    p["ai_user"] = user
    p["ai_start"] = np.where(user, start, NA).astype(np.int32)
    ai_ids = np.array([cat.PRODUCT_ID[k] for k in cat.AI_PRODUCT_MIX], dtype=np.int16)
    p["ai_product"] = np.where(user, ai_ids[choice_codes(rng, n, list(cat.AI_PRODUCT_MIX.values()))], -1)
