"""The planted truth: every effect the analysis is expected to recover.

Magnitudes follow the reference facts in shared/EXTRACTS.md. Time effects are
in PERCENT PER YEAR on the log standardized-BMD scale (100 x log coefficient),
which is also how truth.json reports them.
"""

from __future__ import annotations

import math

# ---- exposure definitions (the analysis uses exactly these) -------------------
GRACE_DAYS = 30            # AI: gap <= 30 days bridges; exposure lasts 30 days past the last covered day
E2_LOOKBACK_DAYS = 180     # tier from the latest estradiol collected on day d-179 .. d
PMOL_PER_PG = 3.671        # estradiol pmol/L / 3.671 = pg/mL
TIERS = ("e2_lt10", "e2_10_20", "e2_20_40", "e2_ge40", "e2_unknown")
TIER_LT10, TIER_10_20, TIER_20_40, TIER_GE40, TIER_UNKNOWN = range(5)
TIER_UPPER = (10.0, 20.0, 40.0, math.inf)  # upper bounds (exclusive) of the numeric tiers

# ---- covariate centring ------------------------------------------------------
AGE_REF, AGE_SCALE = 65.0, 10.0    # age_c = (age - 65) / 10, age = year(index) - birth_year
BMI_REF, BMI_SCALE = 28.0, 5.0     # bmi_c = (baseline BMI - 28) / 5
FN_SBMD_REF, FN_SBMD_SCALE = 0.8, 0.1

# ---- BMD model (per skeletal site, log standardized BMD) ---------------------
# hologic_mean/sd: contract reference (men 51-80, Hologic scale) reproduced at
# the population's typical covariates (age 60, BMI 30). baseline_age/bmi: % of
# baseline BMD per 10 years of age / per 5 kg/m2. Slope terms: % per year.
BMD_SITES = {
    "lumbar_spine": dict(
        hologic_mean=1.06, hologic_sd=0.15, baseline_age=-1.0, baseline_bmi=4.0,
        time=-0.10, age_x_time=-0.10, bmi_x_time=0.15,
        ai_current=-0.70, e2_lt10=-2.00, e2_10_20=-0.60, e2_ge40=0.30, e2_unknown=0.0,
        sd_slope=0.40, residual_cv=1.2),
    "femoral_neck": dict(
        hologic_mean=0.80, hologic_sd=0.13, baseline_age=-3.0, baseline_bmi=4.0,
        time=-0.40, age_x_time=-0.15, bmi_x_time=0.20,
        ai_current=-0.50, e2_lt10=-1.75, e2_10_20=-0.50, e2_ge40=0.25, e2_unknown=0.0,
        sd_slope=0.50, residual_cv=1.5),
    "total_hip": dict(
        hologic_mean=0.99, hologic_sd=0.14, baseline_age=-2.5, baseline_bmi=4.5,
        time=-0.35, age_x_time=-0.15, bmi_x_time=0.20,
        ai_current=-0.50, e2_lt10=-1.60, e2_10_20=-0.50, e2_ge40=0.25, e2_unknown=0.0,
        sd_slope=0.45, residual_cv=1.0),
}
BMD_CORR_INTERCEPT_SLOPE = -0.2
BMD_CROSS_SITE_CORR = 0.7      # correlation of a patient's random effects across skeletal sites
BMD_TYPICAL_AGE, BMD_TYPICAL_BMI = 60.0, 30.0

# Standardized BMD (contract): sBMD = slope * BMD + intercept, per manufacturer.
SBMD_EQUATIONS = {
    ("Hologic", "lumbar_spine"): (1.0550, 1.0436 - 1.0550 * 0.972),
    ("Hologic", "total_hip"): (1.008, 0.006),
    ("Hologic", "femoral_neck"): (1.087, 0.019),
    ("GE Lunar", "lumbar_spine"): (0.9683, 1.0436 - 0.9683 * 1.100),
    ("GE Lunar", "total_hip"): (0.979, -0.031),
    ("GE Lunar", "femoral_neck"): (0.939, -0.023),
}
NORLAND_RAW_PER_SBMD = 0.93    # no standardization exists; raw = 0.93 x true sBMD

# ---- fracture model (first fragility fracture after index) --------------------
FRACTURE_LOG_HR = {
    "ai_current": math.log(1.35),
    "e2_lt10": math.log(1.80),
    "e2_10_20": math.log(1.30),
    "e2_ge40": math.log(0.90),
    "e2_unknown": 0.0,
    "glucocorticoid_current": math.log(1.80),
    "age_per_10y": math.log(1.50),
    "femoral_neck_sbmd_per_0_1": math.log(0.70),
    "bmi_per_5": math.log(0.90),
}
FRACTURE_BASELINE_PER_1000PY = 15.0  # at reference covariates (age 65, FN sBMD 0.8, BMI 28, unexposed, E2 20-<40)
FRACTURE_SITES = {  # share of first fractures by site
    "hip": 0.22, "vertebral": 0.30, "distal_forearm": 0.26, "proximal_humerus": 0.14, "osteoporotic_m80": 0.08}

# ---- death model (competing event): Gompertz in attained age -------------------
DEATH_RATE_AT_65_PER_1000PY = 12.0
DEATH_LOG_RATE_PER_YEAR = math.log(2.0) / 8.0   # mortality doubles every 8 years of age

# ---- treatment assignment (the confounding) ----------------------------------
AI_PROPENSITY = dict(intercept=-2.0, per_bmi_unit=0.10, per_sd_log_e2=0.9)  # logit scale
E2_ON_TRT_PG_ML = 26.0
E2_LOG_PER_BMI_UNIT = 0.035
E2_PATIENT_SD_LOG = 0.25
E2_VISIT_SD_LOG = 0.18
E2_OFF_TRT_FACTOR = 0.70
AI_E2_FACTOR = {"anastrozole": 0.24, "letrozole": 0.11, "exemestane": 0.33}
