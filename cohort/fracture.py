"""Time to first fragility fracture: the estimators behind the models stage, on plain frames.

Pure functions and small estimator classes (lifelines-style `fit` / attributes / `summary`), no
Dagster and no database: `assets/models.py` reads the cohort tables, calls these and writes
`results.*`. Exact Cox, Aalen-Johansen and Poisson-rate machinery comes from `cohort.survival`.

Descriptive
  kaplan_meier_by_group            KM of time to first fracture per group (ever-AI, baseline E2 tier)
  numbers_at_risk                  numbers at risk at chosen times, from KM tables
  cumulative_incidence_by_group    Aalen-Johansen CIF of fracture with death competing (exact ties)
  incidence_rates_by_exposure      events per 1,000 person-years (Garwood exact CI) by current exposure

Confounding control for the AI comparison (ever-AI vs never, baseline covariates)
  baseline_design                  covariate matrix from cohort.members: median imputation + missing indicators
  PropensityScoreModel             statsmodels logistic PS, preference score, equipoise, c-statistic,
                                   stabilized IPTW truncated at percentiles
  balance_table                    standardized mean differences before / after weighting

Cox models (on analysis.fracture_intervals)
  intervals_from_codes             interval rows from the integer-coded columns the models stage reads
  counting_process_frame           model rows: terms built, baseline covariates joined, complete cases,
                                   adjacent rows with identical covariates merged (exact)
  fit_cox                          Efron Cox (cohort.survival.TimeVaryingCox) on such rows, fracture or
                                   death (cause-specific); terms without a finite MLE reported, not fatal
  fit_time_varying_cox             the primary model (current AI, current E2 tier, glucocorticoid, age,
                                   BMI, femoral-neck sBMD), or the cause-specific death model
  fit_iptw_cox                     ever-AI from initiation (intention to treat), IPTW-weighted with
                                   robust SE, or crude
  DiagnosticsGate                  CohortMethod-style pass/fail: balance, equipoise, events, MDRR
  fracture_cox_table, ph_tests_table   results.fracture_cox / results.fracture_ph_tests rows
  FractureModelSettings            every threshold and choice above, with defaults (or the protocol's)

Covariate scaling matches the generator's truth.json: age per 10 years, BMI per 5 kg/m2, baseline
femoral-neck sBMD per 0.1 g/cm2 (centred at 65 years, 28 kg/m2, 0.8 g/cm2; centring changes no HR).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from cohort.survival import AalenJohansen, CoxConvergenceError, TimeVaryingCox, incidence_rate, kaplan_meier

DAYS_PER_YEAR = 365.25
KEYS = ("source_site", "patient_key")

KM_COLUMNS = ["curve", "group_label", "time_years", "at_risk", "events", "censored", "survival", "ci_low", "ci_high"]
CIF_COLUMNS = [
    "curve", "group_label", "time_years", "at_risk", "events", "competing", "censored", "cif", "se", "ci_low", "ci_high",
]
RATE_COLUMNS = ["exposure", "level", "group_label", "events", "person_years", "rate_per_1000py", "ci_low", "ci_high"]

# Group labels: one label (and one figure color, cohort.figures.GROUP_COLORS) per group everywhere.
AI_EVER_GROUPS = {True: "AI during follow-up", False: "No AI"}
AI_CURRENT_GROUPS = {True: "Current AI", False: "No current AI"}
GLUCOCORTICOID_GROUPS = {True: "Current glucocorticoid", False: "No current glucocorticoid"}
E2_TIER_ORDER = ("lt10", "10_20", "20_40", "ge40", "unknown")
E2_TIER_GROUPS = {
    "lt10": "E2 <10 pg/mL",
    "10_20": "E2 10–<20 pg/mL",
    "20_40": "E2 20–<40 pg/mL",
    "ge40": "E2 ≥40 pg/mL",
    "unknown": "E2 unknown",
}
E2_REFERENCE = "20_40"

TERM_LABELS = {
    "ai_current": "Current aromatase inhibitor",
    "ai_ever": "Aromatase inhibitor initiated (intention to treat)",
    "e2_lt10": "Estradiol <10 vs 20–<40 pg/mL",
    "e2_10_20": "Estradiol 10–<20 vs 20–<40 pg/mL",
    "e2_ge40": "Estradiol ≥40 vs 20–<40 pg/mL",
    "e2_unknown": "Estradiol unknown vs 20–<40 pg/mL",
    "glucocorticoid_current": "Current systemic glucocorticoid",
    "age_per_10y": "Age at index, per 10 years",
    "bmi_per_5": "BMI, per 5 kg/m²",
    "femoral_neck_sbmd_per_0_1": "Baseline femoral-neck sBMD, per 0.1 g/cm²",
}
EXPOSURE_TERMS = ("ai_current", "ai_ever", "glucocorticoid_current")
E2_TERMS = tuple(f"e2_{tier}" for tier in E2_TIER_ORDER if tier != E2_REFERENCE)
# term -> (cohort.members column, centre, unit): term = (value - centre) / unit
BASELINE_TERMS = {
    "age_per_10y": ("age_at_index", 65.0, 10.0),
    "bmi_per_5": ("bmi", 28.0, 5.0),
    "femoral_neck_sbmd_per_0_1": ("sbmd_femoral_neck", 0.8, 0.1),
}
ADJUSTED_TERMS = ("ai_current", *E2_TERMS, "glucocorticoid_current", *BASELINE_TERMS)
AI_TERMS = ("ai_current", "ai_ever")
EVENT_CODES = {"censored": 0, "fracture": 1, "death": 2}
EVENT_ORDER = sorted(EVENT_CODES, key=EVENT_CODES.get)  # event names by code


@contextlib.contextmanager
def single_threaded_blas():
    """Run the enclosed linear algebra with one BLAS thread (threadpoolctl, when installed).

    The fits here are sequences of tall-skinny products (X' W X on millions of rows). With
    OpenBLAS's own threads on a 2-core machine that is also running other work, those threads
    spin-wait for each other: measured under load, one 870,000 x 24 X'WX took 11 s with 2 threads
    and 0.36 s with 1. Without load one thread costs little (~1.5x on that product)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it, BLAS keeps its own threading
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class FractureModelSettings:
    """Thresholds and choices of the fracture models (defaults: OHDSI CohortMethod's where it has one).

    truncation_percentiles  stabilized IPTW clipped to these percentiles of their distribution (None: no
                            truncation); Cole & Hernan 2008.
    truncation_scope        'overall': percentiles of all patients' weights (Cole & Hernan); 'group':
                            within each treatment group (WeightIt's trim()).
    smd_threshold           balance fails if any covariate's |standardized mean difference| exceeds it
                            (CohortMethod sdmThreshold 0.1).
    equipoise_bounds        preference-score interval counted as "in equipoise" (Walker 2013: 0.3-0.7).
    equipoise_threshold     equipoise fails if fewer than this share of patients are in equipoise
                            (CohortMethod equipoiseThreshold 0.2).
    min_events              a model fails with fewer events; an exposure term (current AI, ever AI, an
                            estradiol tier, glucocorticoid) also fails with fewer events while exposed.
    mdrr_threshold          an exposure term fails if its minimum detectable relative risk (alpha, power
                            0.8) exceeds this (CohortMethod mdrrThreshold 10).
    alpha                   1 - confidence level of every interval.
    ph_time_transform       time transform of the Schoenfeld-residual test (fracture_ph_tests and
                            fracture_cox.ph_p_value): 'rank' (lifelines' default; cheap on millions of
                            rows) or 'km' (R cox.zph's default; two extra sorts of all rows).
    lcms_sensitivity        also fit the primary model with LC-MS/MS-only estradiol tiers
                            (time_varying_adjusted_lcms; about a third of the Cox stage's time).
    """

    truncation_percentiles: tuple[float, float] | None = (1.0, 99.0)
    truncation_scope: str = "overall"
    smd_threshold: float = 0.1
    equipoise_bounds: tuple[float, float] = (0.3, 0.7)
    equipoise_threshold: float = 0.2
    min_events: int = 10
    mdrr_threshold: float = 10.0
    alpha: float = 0.05
    ph_time_transform: str = "rank"
    lcms_sensitivity: bool = True

    def __post_init__(self):
        if self.truncation_percentiles is not None:
            low, high = self.truncation_percentiles
            if not 0 <= low < high <= 100:
                raise ValueError("truncation_percentiles must satisfy 0 <= low < high <= 100")
        if self.truncation_scope not in ("overall", "group"):
            raise ValueError("truncation_scope must be 'overall' or 'group'")
        if not 0 <= self.equipoise_bounds[0] < self.equipoise_bounds[1] <= 1:
            raise ValueError("equipoise_bounds must lie in [0, 1], low < high")
        if self.smd_threshold <= 0 or self.min_events < 0 or self.mdrr_threshold <= 1 or not 0 < self.alpha < 1:
            raise ValueError("smd_threshold > 0, min_events >= 0, mdrr_threshold > 1 and 0 < alpha < 1 required")

    @classmethod
    def from_protocol(cls, protocol) -> FractureModelSettings:
        """The settings of a study protocol (cohort.protocol.Protocol): its [fracture_models] section."""
        values = protocol.fracture_models.model_dump()
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------------------------------
# Descriptive estimates
# --------------------------------------------------------------------------------------------------


def _fracture_times(members: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Years from index to the end of follow-up, and the end reason."""
    return (
        members["follow_up_days"].to_numpy(dtype=float) / DAYS_PER_YEAR,
        members["follow_up_end_reason"].astype(str).to_numpy(),
    )


def kaplan_meier_by_group(
    members: pd.DataFrame, curve: str, group_column: str, labels: dict, alpha: float = 0.05
) -> pd.DataFrame:
    """Kaplan-Meier of time to first fracture from index, one curve per value of `group_column`.

    `members` needs follow_up_days and follow_up_end_reason (cohort.members); a fracture is an event,
    every other end of follow-up (death included) censors. Groups absent from `members` are skipped.
    Columns KM_COLUMNS; a row at time 0 starts each curve (exponential Greenwood CI, lifelines).
    """
    frames = []
    years, reason = _fracture_times(members)
    group_values = members[group_column].to_numpy()
    for value, label in labels.items():
        mask = group_values == value
        if not mask.any():
            continue
        table = kaplan_meier(years[mask], reason[mask] == "fracture", alpha=alpha)
        frames.append(table.rename(columns={"time": "time_years"}).assign(curve=curve, group_label=label)[KM_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=KM_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    for column in ("at_risk", "events", "censored"):
        out[column] = out[column].round().astype("int64")
    return out


def numbers_at_risk(curves: pd.DataFrame, times: Sequence[float]) -> pd.DataFrame:
    """Numbers at risk (still followed, fracture-free) at each of `times` (years), one row per group
    of a KM or CIF table (columns group_label, time_years, at_risk): at time t, the at_risk of the
    first tabulated time >= t (0 once every member has left)."""
    rows = []
    for label, group in curves.groupby("group_label", sort=False):
        t = group["time_years"].to_numpy(dtype=float)
        n = group["at_risk"].to_numpy()
        pos = np.searchsorted(t, np.asarray(times, dtype=float), side="left")
        rows.append({"group_label": label, **{
            float(x): int(n[p]) if p < len(t) else 0 for x, p in zip(times, pos)
        }})
    return pd.DataFrame(rows)


def cumulative_incidence_by_group(
    members: pd.DataFrame, curve: str, group_column: str, labels: dict, alpha: float = 0.05
) -> pd.DataFrame:
    """Aalen-Johansen cumulative incidence of first fracture, death competing, one curve per group.

    Other ends of follow-up (bone-active drug, end of enrollment, data cutoff) censor. Tied times are
    handled exactly (all events at a time enter one step; censorings at t count as at risk at t), so
    no random jitter and the result is reproducible; a fracture and a death on the same day cannot
    both occur for one member (cohort.members resolves that tie to fracture). Columns CIF_COLUMNS,
    starting with a row at time 0.
    """
    frames = []
    years, reason = _fracture_times(members)
    code = np.where(reason == "fracture", 1, np.where(reason == "death", 2, 0))
    group_values = members[group_column].to_numpy()
    for value, label in labels.items():
        mask = group_values == value
        if not mask.any():
            continue
        table = AalenJohansen(alpha=alpha).fit(years[mask], code[mask], cause=1).cumulative_incidence_
        start = pd.DataFrame({"time": [0.0], "at_risk": [float(mask.sum())], "events": [0.0], "competing": [0.0],
                              "censored": [0.0], "cif": [0.0], "se": [0.0], "ci_low": [0.0], "ci_high": [0.0]})
        if table["time"].iloc[0] == 0:
            start = start.iloc[:0]
        table = pd.concat([start, table], ignore_index=True).rename(columns={"time": "time_years"})
        frames.append(table.assign(curve=curve, group_label=label)[CIF_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=CIF_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    for column in ("at_risk", "events", "competing", "censored"):
        out[column] = out[column].round().astype("int64")
    return out


def incidence_rates_by_exposure(
    intervals: pd.DataFrame, exposures: dict[str, dict], outcome: str = "fracture", alpha: float = 0.05
) -> pd.DataFrame:
    """Incidence of `outcome` per 1,000 person-years with exact Poisson (Garwood) limits, by the
    current value of each exposure column (person-time and events attributed to the interval in
    which they occur), plus an overall row (exposure 'overall').

    `intervals`: counting-process rows (start_day, stop_day, event, exposure columns), or the same
    already aggregated, with `person_days` and `events` columns instead of start/stop/event.
    `exposures`: column -> {value: label}; values not listed are left out. Groups with no
    person-time are left out. Columns RATE_COLUMNS.
    """
    if "person_days" in intervals.columns:
        frame = intervals
        days, events = frame["person_days"].to_numpy(dtype=float), frame["events"].to_numpy(dtype=float)
    else:
        frame = intervals
        days = (frame["stop_day"] - frame["start_day"]).to_numpy(dtype=float)
        events = (frame["event"] == outcome).to_numpy(dtype=float)
    rows = [("overall", "all", "All follow-up", events.sum(), days.sum())]
    for column, labels in exposures.items():
        values = frame[column].to_numpy()
        for value, label in labels.items():
            mask = values == value
            rows.append((column, str(value).lower(), label, events[mask].sum(), days[mask].sum()))
    table = pd.DataFrame(rows, columns=["exposure", "level", "group_label", "events", "person_days"])
    table = table[table["person_days"] > 0].reset_index(drop=True)
    rates = incidence_rate(table["events"].to_numpy(), table["person_days"].to_numpy() / DAYS_PER_YEAR, alpha=alpha)
    return pd.DataFrame({
        "exposure": table["exposure"],
        "level": table["level"],
        "group_label": table["group_label"],
        "events": table["events"].round().astype("int64"),
        "person_years": rates["person_years"],
        "rate_per_1000py": rates["rate"],
        "ci_low": rates["ci_low"],
        "ci_high": rates["ci_high"],
    })[RATE_COLUMNS]


# --------------------------------------------------------------------------------------------------
# Propensity score, weights and balance
# --------------------------------------------------------------------------------------------------

PS_CONTINUOUS = {
    "age_at_index": "Age at index (years)",
    "bmi": "BMI (kg/m²)",
    "estradiol_pg_ml": "Baseline estradiol (pg/mL)",
    "log_estradiol": "Baseline estradiol (log pg/mL)",
    "testosterone_ng_dl": "Baseline total testosterone (ng/dL)",
    "vitamin_d_ng_ml": "Baseline 25-OH vitamin D (ng/mL)",
    "sbmd_femoral_neck": "Baseline femoral-neck sBMD (g/cm²)",
}
PS_BINARY = {"glucocorticoid_at_index": "Systemic glucocorticoid at index"}
# column -> (label, reference level or None for the most common level, label per level or None)
PS_CATEGORICAL = {
    "e2_tier_at_index": ("Estradiol tier at index", E2_REFERENCE, E2_TIER_GROUPS),
    "source_site": ("Site", None, None),
    "scanner_manufacturer": ("Baseline DXA scanner", None, None),
}
MISSING_LEVEL = "none"


@dataclass
class CovariateDesign:
    """Baseline covariates as numbers, one row per member.

    X: every column (categorical variables with one 0/1 column per level, reference included, so
    the balance table shows every level); `fit_columns`: those the propensity model uses
    (reference levels, constant and collinear columns dropped); `labels`: readable names;
    `imputed`: per continuous covariate with missing values, the median used and the count missing.
    """

    X: pd.DataFrame
    labels: dict[str, str]
    fit_columns: list[str]
    imputed: dict[str, dict] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)


def baseline_design(members: pd.DataFrame) -> CovariateDesign:
    """Propensity-model covariates from cohort.members, with missing values handled explicitly.

    Continuous (age, BMI, estradiol and its log, testosterone, vitamin D, femoral-neck sBMD): a missing value is
    replaced by the cohort median and flagged by a `<name>_missing` 0/1 column (added only when some
    value is missing), so patients without a lab or a scan stay in the model and missingness itself
    can predict treatment. Glucocorticoid at index: missing = no. Categorical (estradiol tier at
    index, reference 20-<40; site; scanner manufacturer, missing = 'none' i.e. no baseline scan):
    one indicator per level; the most common level is the reference unless one is set.
    """
    columns: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    imputed: dict[str, dict] = {}
    reference: list[str] = []
    for name, label in PS_CONTINUOUS.items():
        if name == "log_estradiol":  # estradiol is right-skewed and acts on the log scale: both enter
            raw = pd.to_numeric(members["estradiol_pg_ml"], errors="coerce").to_numpy(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.log(np.maximum(raw, 0.1))
            columns[name] = np.where(np.isfinite(values), values, np.nanmedian(values) if np.isfinite(values).any() else 0.0)
            labels[name] = label
            continue
        values = pd.to_numeric(members[name], errors="coerce").to_numpy(dtype=float)
        missing = ~np.isfinite(values)
        median = float(np.median(values[~missing])) if (~missing).any() else 0.0
        columns[name] = np.where(missing, median, values)
        labels[name] = label
        if missing.any():
            columns[f"{name}_missing"] = missing.astype(float)
            labels[f"{name}_missing"] = f"{label}: missing"
            imputed[name] = {"median": median, "missing": int(missing.sum())}
    for name, label in PS_BINARY.items():
        columns[name] = members[name].fillna(False).to_numpy(dtype=bool).astype(float)
        labels[name] = label
    for name, (label, ref, level_labels) in PS_CATEGORICAL.items():
        values = members[name].astype(object).where(members[name].notna(), MISSING_LEVEL)
        codes, levels = pd.factorize(values, sort=True)
        levels = [str(level) for level in levels]
        counts = np.bincount(codes[codes >= 0], minlength=len(levels))
        if ref is None or ref not in levels:
            ref = levels[int(np.argmax(counts))] if len(levels) else None
        for k, level in enumerate(levels):
            key = f"{name}={level}"
            columns[key] = (codes == k).astype(float)
            shown = (level_labels or {}).get(level, "none (no baseline scan)" if level == MISSING_LEVEL else level)
            labels[key] = f"{label}: {shown}"
            if level == ref:
                reference.append(key)
    X = pd.DataFrame(columns, index=members.index)
    dropped = {c: "reference level" for c in reference}
    candidates = [c for c in X.columns if c not in dropped]
    for c in candidates:
        if X[c].nunique() <= 1:
            dropped[c] = "constant"
    candidates = [c for c in candidates if c not in dropped]
    for c in _collinear_columns(X[candidates].to_numpy(), candidates):
        dropped[c] = "collinear with other covariates"
    return CovariateDesign(
        X=X, labels=labels, fit_columns=[c for c in candidates if c not in dropped], imputed=imputed, dropped=dropped
    )


def _collinear_columns(X: np.ndarray, names: list[str], tol: float = 1e-9) -> list[str]:
    """Columns that are (numerically) linear combinations of the intercept and earlier columns.

    Greedy in column order on the correlation matrix: a column is dropped when its variance left
    after regression on the columns kept before it is below `tol` (of its own variance, 1)."""
    if X.shape[1] == 0:
        return []
    sd = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    G = Z.T @ Z / len(Z)
    kept: list[int] = []
    dropped = []
    for j in range(X.shape[1]):
        if kept:
            g = G[np.ix_(kept, [j])][:, 0]
            residual = G[j, j] - g @ np.linalg.solve(G[np.ix_(kept, kept)], g)
        else:
            residual = G[j, j]
        if residual > tol:
            kept.append(j)
        else:
            dropped.append(names[j])
    return dropped


def standardized_differences(
    X: pd.DataFrame, treated: np.ndarray, weights: np.ndarray | None = None
) -> pd.DataFrame:
    """Means per group and standardized mean differences (treated - control) / pooled SD.

    The pooled SD sqrt((s_t^2 + s_c^2) / 2) always comes from the unweighted groups (cobalt's and
    Austin's convention), so a change of SMD after weighting reflects the means only. A covariate
    constant within both groups has SMD 0 if the groups agree, +/-inf otherwise.
    """
    t = np.asarray(treated, dtype=bool)
    values = X.to_numpy(dtype=float)
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=float)

    def moments(mask, wt):
        sub, ww = values[mask], wt[mask]
        mean = ww @ sub / ww.sum() if ww.sum() > 0 else np.full(values.shape[1], np.nan)
        return mean

    def variance(mask):
        sub = values[mask]
        return sub.var(axis=0, ddof=1) if len(sub) > 1 else np.zeros(values.shape[1])

    sd = np.sqrt((variance(t) + variance(~t)) / 2)
    mean_t, mean_c = moments(t, w), moments(~t, w)
    diff = mean_t - mean_c
    with np.errstate(divide="ignore", invalid="ignore"):
        smd = np.where(sd > 0, diff / sd, np.where(np.abs(diff) < 1e-12, 0.0, np.sign(diff) * np.inf))
    return pd.DataFrame({"mean_treated": mean_t, "mean_control": mean_c, "smd": smd}, index=X.columns)


def balance_table(
    design: CovariateDesign | pd.DataFrame,
    treated,
    weights=None,
    threshold: float = 0.1,
    labels: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Covariate balance before and after weighting (CohortMethod's computeCovariateBalance).

    One row per covariate (every level of a categorical one, missing indicators included): means in
    treated and controls and the SMD, unweighted ('before') and with `weights` ('after'), and
    whether |SMD| exceeds `threshold` before / after. Without weights, 'after' repeats 'before'.
    """
    X = design.X if isinstance(design, CovariateDesign) else design
    labels = labels or (design.labels if isinstance(design, CovariateDesign) else {})
    treated = np.asarray(treated, dtype=bool)
    before = standardized_differences(X, treated)
    after = standardized_differences(X, treated, weights)
    return pd.DataFrame({
        "covariate": X.columns,
        "covariate_label": [labels.get(c, c) for c in X.columns],
        "mean_treated_before": before["mean_treated"].to_numpy(),
        "mean_control_before": before["mean_control"].to_numpy(),
        "smd_before": before["smd"].to_numpy(),
        "mean_treated_after": after["mean_treated"].to_numpy(),
        "mean_control_after": after["mean_control"].to_numpy(),
        "smd_after": after["smd"].to_numpy(),
        "imbalanced_before": np.abs(before["smd"].to_numpy()) > threshold,
        "imbalanced_after": np.abs(after["smd"].to_numpy()) > threshold,
    })


def preference_score(propensity: np.ndarray, treated_share: float) -> np.ndarray:
    """Walker et al. 2013: logit(F) = logit(PS) - logit(P), P the share treated; 0.5 = no preference."""
    ps = np.clip(np.asarray(propensity, dtype=float), 1e-15, 1 - 1e-15)
    x = np.log(ps / (1 - ps)) - math.log(treated_share / (1 - treated_share))
    return 1 / (1 + np.exp(-x))


def stabilized_weights(
    propensity: np.ndarray,
    treated: np.ndarray,
    truncation_percentiles: tuple[float, float] | None = (1.0, 99.0),
    scope: str = "overall",
) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[float, float]] | None]:
    """Stabilized inverse-probability-of-treatment weights P/PS (treated), (1-P)/(1-PS) (controls),
    P the share treated; then clipped to the given percentiles (None: no clipping) of all weights
    (scope 'overall') or of each treatment group's weights (scope 'group').
    Returns (truncated weights, untruncated weights, bounds {'treated'|'control'|'overall': (low, high)})."""
    t = np.asarray(treated, dtype=bool)
    ps = np.asarray(propensity, dtype=float)
    p = t.mean()
    raw = np.where(t, p / ps, (1 - p) / (1 - ps))
    if truncation_percentiles is None:
        return raw.copy(), raw, None
    if scope == "overall":
        low, high = np.percentile(raw, truncation_percentiles)
        return np.clip(raw, low, high), raw, {"overall": (float(low), float(high))}
    if scope != "group":
        raise ValueError("scope must be 'overall' or 'group'")
    out, bounds = raw.copy(), {}
    for name, mask in (("treated", t), ("control", ~t)):
        if mask.any():
            low, high = np.percentile(raw[mask], truncation_percentiles)
            out[mask] = np.clip(raw[mask], low, high)
            bounds[name] = (float(low), float(high))
    return out, raw, bounds


def c_statistic(score: np.ndarray, treated: np.ndarray) -> float:
    """Area under the ROC curve of `score` for `treated` (Mann-Whitney, ties counted half)."""
    t = np.asarray(treated, dtype=bool)
    n1, n0 = t.sum(), (~t).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


class PropensityScoreModel:
    """Propensity score for starting an AI during follow-up, from baseline covariates.

    Logistic regression (statsmodels `Logit`, Newton-Raphson, at most 30 steps, converged when the
    mean score is below 1e-7) on `baseline_design(members)` with the covariates standardized; if it does not converge or separates perfectly (small cohorts), a
    ridge-penalized logistic regression (statsmodels GLM `fit_regularized`, L2) is used instead and
    `fit_method_` says so. Then: preference scores, equipoise (share with preference score within
    `equipoise_bounds`), the c-statistic, and stabilized IPTW truncated at `truncation_percentiles`.

    Attributes after `fit`: design_, treated_, propensity_scores_, preference_scores_, weights_
    (truncated), weights_untruncated_, truncation_bounds_, equipoise_, c_statistic_, coefficients_
    (per SD of each covariate), fit_method_, n_treated_, n_control_, effective_sample_size_
    ({'treated', 'control'} of the weights); `scores()` one row per member; `summary` a dict.
    """

    def __init__(
        self,
        truncation_percentiles: tuple[float, float] | None = (1.0, 99.0),
        equipoise_bounds: tuple[float, float] = (0.3, 0.7),
        truncation_scope: str = "overall",
        ridge_alpha: float = 1e-2,
    ):
        self.truncation_percentiles = truncation_percentiles
        self.truncation_scope = truncation_scope
        self.equipoise_bounds = equipoise_bounds
        self.ridge_alpha = ridge_alpha

    @classmethod
    def from_settings(cls, settings: FractureModelSettings) -> "PropensityScoreModel":
        return cls(settings.truncation_percentiles, settings.equipoise_bounds, settings.truncation_scope)

    def fit(self, members: pd.DataFrame, treatment: str = "ai_ever", design: CovariateDesign | None = None):
        with single_threaded_blas():
            return self._fit(members, treatment, design)

    def _fit(self, members: pd.DataFrame, treatment: str, design: CovariateDesign | None):
        import statsmodels.api as sm

        self.design_ = design or baseline_design(members)
        t = members[treatment].fillna(False).to_numpy(dtype=bool)
        if t.all() or not t.any():
            raise ValueError(f"propensity model needs treated and untreated patients ({treatment})")
        cols = self.design_.fit_columns
        X = self.design_.X[cols].to_numpy(dtype=float)
        mean, sd = X.mean(axis=0), X.std(axis=0)
        Z = np.column_stack([np.ones(len(X)), (X - mean) / np.where(sd > 0, sd, 1.0)])
        params, method = None, "logit"
        with warnings.catch_warnings():
            warnings.simplefilter("error", category=getattr(sm.tools.sm_exceptions, "PerfectSeparationWarning", Warning))
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            warnings.filterwarnings("ignore", category=sm.tools.sm_exceptions.ConvergenceWarning)
            try:
                # Newton-Raphson, judged by the mean score rather than statsmodels' parameter-change rule:
                # with a quasi-separated handful of patients (e.g. estradiol missing but a tier at index)
                # one coefficient creeps towards infinity forever while every fitted probability has
                # long converged; the score still vanishes, and that is the maximum that matters here.
                logit = sm.Logit(t.astype(float), Z)
                start = np.zeros(Z.shape[1])
                for _ in range(5):  # up to 5 x 6 Newton steps, stopping as soon as the mean score vanishes
                    result = logit.fit(start_params=start, method="newton", maxiter=6, disp=False)
                    start = np.asarray(result.params)
                    mean_score = np.max(np.abs(logit.score(start))) / len(t)
                    if not np.all(np.isfinite(start)):
                        break
                    if mean_score < 1e-7:
                        params = start
                        break
            except Exception:  # noqa: BLE001 - perfect separation / singular Hessian: ridge below
                params = None
        if params is None:
            method = f"ridge logistic (L2, alpha={self.ridge_alpha:g}): maximum likelihood did not converge"
            glm = sm.GLM(t.astype(float), Z, family=sm.families.Binomial())
            penalty = np.r_[0.0, np.full(Z.shape[1] - 1, self.ridge_alpha)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = np.asarray(glm.fit_regularized(alpha=penalty, L1_wt=0.0, maxiter=500).params)
        eta = Z @ params
        ps = 1 / (1 + np.exp(-eta))
        ps = np.clip(ps, 1e-12, 1 - 1e-12)
        self.treated_ = t
        self.propensity_scores_ = ps
        self.preference_scores_ = preference_score(ps, t.mean())
        self.weights_, self.weights_untruncated_, self.truncation_bounds_ = stabilized_weights(
            ps, t, self.truncation_percentiles, self.truncation_scope
        )
        lo, hi = self.equipoise_bounds
        f = self.preference_scores_
        self.equipoise_ = float(((f >= lo) & (f <= hi)).mean())
        self.c_statistic_ = c_statistic(ps, t)
        self.coefficients_ = pd.Series(params, index=["(intercept)", *cols], name="log_odds_per_sd")
        self.fit_method_ = method
        self.n_treated_, self.n_control_ = int(t.sum()), int((~t).sum())
        self.effective_sample_size_ = {
            group: float(self.weights_[mask].sum() ** 2 / (self.weights_[mask] ** 2).sum())
            for group, mask in (("treated", t), ("control", ~t))
        }
        return self

    def scores(self) -> pd.DataFrame:
        """propensity_score, preference_score, iptw_untruncated, iptw (truncated) per member, in the
        order of the members frame given to `fit`."""
        return pd.DataFrame({
            "treated": self.treated_,
            "propensity_score": self.propensity_scores_,
            "preference_score": self.preference_scores_,
            "iptw_untruncated": self.weights_untruncated_,
            "iptw": self.weights_,
        }, index=self.design_.X.index)

    @property
    def summary(self) -> dict:
        bounds = self.truncation_bounds_ or {}
        low = min((b[0] for b in bounds.values()), default=float("nan"))
        high = max((b[1] for b in bounds.values()), default=float("nan"))
        return {
            "n_treated": self.n_treated_,
            "n_control": self.n_control_,
            "c_statistic": self.c_statistic_,
            "equipoise": self.equipoise_,
            "fit_method": self.fit_method_,
            "truncation": "none" if self.truncation_percentiles is None else
            f"percentiles {self.truncation_percentiles[0]:g}-{self.truncation_percentiles[1]:g} of the weights ({self.truncation_scope})",
            "truncation_low": low,
            "truncation_high": high,
            "weights_truncated": int((self.weights_ != self.weights_untruncated_).sum()),
            "max_weight": float(self.weights_.max()),
            "ess_treated": self.effective_sample_size_["treated"],
            "ess_control": self.effective_sample_size_["control"],
        }


# --------------------------------------------------------------------------------------------------
# Cox models
# --------------------------------------------------------------------------------------------------


def _member_positions(intervals: pd.DataFrame, members: pd.DataFrame, id_columns: Sequence[str]) -> np.ndarray:
    """Row position in `members` of every interval's member (error if one has none)."""
    id_columns = list(id_columns)
    if len(id_columns) == 1:
        index = pd.Index(members[id_columns[0]])
        pos = index.get_indexer(intervals[id_columns[0]])
    else:
        index = pd.MultiIndex.from_frame(members[id_columns])
        pos = index.get_indexer(pd.MultiIndex.from_frame(intervals[id_columns]))
    if not index.is_unique:
        raise ValueError(f"members must have one row per {id_columns}")
    if (pos < 0).any():
        raise ValueError(f"{int((pos < 0).sum())} interval rows have no member in `members`")
    return pos


def _e2_codes(values) -> np.ndarray:
    cat = pd.Categorical(values, categories=list(E2_TIER_ORDER))
    codes = np.asarray(cat.codes)
    if (codes < 0).any():
        bad = sorted(set(pd.Series(values)[codes < 0].astype(str)))
        raise ValueError(f"unknown estradiol tier value(s) {bad}; expected {list(E2_TIER_ORDER)}")
    return codes


def collapse_intervals(
    patient: np.ndarray, start: np.ndarray, stop: np.ndarray, event: np.ndarray, X: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Merge adjacent rows of one patient ((a, b] then (b, c]) whose covariate rows are identical
    into (a, c], keeping the later row's event. The Cox partial likelihood, its derivatives and
    the Schoenfeld residuals are unchanged (the patient is in the same risk sets with the same
    covariates); only the row count drops. Input sorted by patient, then start."""
    same = (patient[1:] == patient[:-1]) & (start[1:] == stop[:-1]) & np.all(X[1:] == X[:-1], axis=1)
    first = np.flatnonzero(np.r_[True, ~same])
    last = np.r_[first[1:] - 1, len(patient) - 1]
    return patient[first], start[first], stop[last], event[last], X[first]


def intervals_from_codes(columns: dict) -> pd.DataFrame:
    """analysis.fracture_intervals rows as counting_process_frame reads them, from the integer-coded
    columns of sql/models/inputs/fracture_cox_intervals.sql (as `fetchnumpy` returns them: NULLs
    masked). Tiers and events become Categoricals built from their codes, with no string per row; a
    missing tier is unknown, a missing flag false."""

    def filled(values, fill, dtype):
        values = np.ma.filled(values, fill) if np.ma.isMaskedArray(values) else values
        return np.asarray(values, dtype=dtype)

    tiers = list(E2_TIER_ORDER)

    def tier(values):
        return pd.Categorical.from_codes(filled(values, tiers.index("unknown"), np.int8), categories=tiers)

    return pd.DataFrame({
        "patient_id": np.asarray(columns["patient_id"]),
        "start_day": np.asarray(columns["start_day"]),
        "stop_day": np.asarray(columns["stop_day"]),
        "ai_current": filled(columns["ai_current"], False, bool),
        "ai_ever": filled(columns["ai_ever"], False, bool),
        "glucocorticoid_current": filled(columns["glucocorticoid_current"], False, bool),
        "e2_tier": tier(columns["e2_code"]),
        "e2_tier_lcms": tier(columns["e2_lcms_code"]),
        "event": pd.Categorical.from_codes(filled(columns["event_code"], EVENT_CODES["censored"], np.int8),
                                           categories=EVENT_ORDER),
    })


@dataclass
class CountingProcessFrame:
    """Model-ready counting-process rows: `data` has patient (member row position), start, stop,
    event_code (0 censored, 1 fracture, 2 death), one float column per term and, if weighted, iptw.
    `n_patients_excluded`: members dropped for a missing baseline covariate (complete cases)."""

    data: pd.DataFrame
    terms: list[str]
    n_patients_excluded: int
    n_rows_input: int


def counting_process_frame(
    intervals: pd.DataFrame,
    members: pd.DataFrame,
    terms: Sequence[str] = ADJUSTED_TERMS,
    e2_column: str = "e2_tier",
    weights: np.ndarray | None = None,
    id_columns: Sequence[str] = KEYS,
) -> CountingProcessFrame:
    """Build the rows a Cox model on `terms` needs from analysis.fracture_intervals-shaped rows.

    Time-varying terms come from the interval (ai_current, ai_ever, glucocorticoid_current; e2_*
    from `e2_column`, reference 20_40), baseline terms from `members` (BASELINE_TERMS scaling).
    Members missing a baseline term are excluded (complete-case analysis; counted). `weights`: one
    per member row (e.g. IPTW), copied to the member's rows. Rows whose terms do not change are
    merged (`collapse_intervals`).
    """
    terms = list(terms)
    pos = _member_positions(intervals, members, id_columns)
    start = intervals["start_day"].to_numpy(dtype=float)
    stop = intervals["stop_day"].to_numpy(dtype=float)
    events = intervals["event"]  # strings or a pandas Categorical (fast)
    event_code = np.zeros(len(intervals), dtype=np.int8)
    event_code[(events == "fracture").to_numpy(dtype=bool)] = 1
    event_code[(events == "death").to_numpy(dtype=bool)] = 2
    X = np.empty((len(intervals), len(terms) + (weights is not None)))
    complete_members = np.ones(len(members), dtype=bool)
    e2 = None
    for j, term in enumerate(terms):
        if term in EXPOSURE_TERMS:
            column = intervals[term]
            X[:, j] = column.to_numpy(dtype=float) if column.dtype == bool else column.fillna(False).to_numpy(dtype=float)
        elif term in E2_TERMS:
            if e2 is None:
                e2 = _e2_codes(intervals[e2_column])
            X[:, j] = e2 == E2_TIER_ORDER.index(term[3:])
        elif term in BASELINE_TERMS:
            source, centre, unit = BASELINE_TERMS[term]
            values = (pd.to_numeric(members[source], errors="coerce").to_numpy(dtype=float) - centre) / unit
            complete_members &= np.isfinite(values)
            X[:, j] = values[pos]
        else:
            raise ValueError(f"unknown model term {term!r}; known: {list(TERM_LABELS)}")
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        complete_members &= np.isfinite(w) & (w > 0)
        X[:, -1] = w[pos]
    keep = complete_members[pos]
    with_rows = np.bincount(pos, minlength=len(members)) > 0
    n_excluded = int((with_rows & ~complete_members).sum())
    patient = pos
    if not keep.all():
        patient, start, stop, event_code, X = pos[keep], start[keep], stop[keep], event_code[keep], X[keep]
    if len(patient) > 1 and not (np.all(np.diff(patient) >= 0) and _sorted_within(patient, start)):
        order = np.lexsort((start, patient))
        patient, start, stop, event_code, X = patient[order], start[order], stop[order], event_code[order], X[order]
    patient, start, stop, event_code, X = collapse_intervals(patient, start, stop, event_code, X)
    data = pd.DataFrame(X, columns=terms + (["iptw"] if weights is not None else []), copy=False)
    data.insert(0, "patient", patient)
    data.insert(1, "start", start)
    data.insert(2, "stop", stop)
    data.insert(3, "event_code", event_code)
    return CountingProcessFrame(data=data, terms=terms, n_patients_excluded=n_excluded, n_rows_input=len(intervals))


def _sorted_within(patient: np.ndarray, start: np.ndarray) -> bool:
    same = patient[1:] == patient[:-1]
    return bool(np.all(start[1:][same] >= start[:-1][same]))


@dataclass
class CoxModelResult:
    """One fitted (or failed) Cox model.

    `estimates`: one row per term (log_hr, se, hazard_ratio, ci_low, ci_high, p_value), empty if the
    model could not be estimated (`error` says why). `ph_tests`: Grambsch-Therneau tests per term
    and time transform. `adjustment`: 'regression' (covariates in the model), 'iptw' (weighted,
    robust SE), or 'none' (crude). `n_events_exposed` / `exposed_share`: events and share of
    person-time with the term = 1, for 0/1 terms. `dropped`: terms left out of the fit because
    their coefficient has no finite estimate (see `_estimable_terms`), with the reason.
    """

    model: str
    outcome: str
    adjustment: str
    terms: list[str]
    n_patients: int
    n_events: int
    n_patients_excluded: int
    n_events_exposed: dict[str, int]
    exposed_share: dict[str, float]
    estimates: pd.DataFrame
    ph_tests: pd.DataFrame
    se_type: str
    error: str | None = None
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def estimable(self) -> bool:
        """The model was fitted (some terms may still be in `dropped`: not estimable)."""
        return self.error is None

    def term_estimable(self, term: str) -> bool:
        return self.error is None and term not in self.dropped


ESTIMATE_COLUMNS = ["log_hr", "se", "hazard_ratio", "ci_low", "ci_high", "p_value"]
PH_COLUMNS = ["term", "time_transform", "test_statistic", "p_value"]


def fit_cox(
    frame: CountingProcessFrame,
    model: str,
    outcome: str = "fracture",
    adjustment: str = "regression",
    alpha: float = 0.05,
    ph_time_transforms: Sequence[str] = ("rank",),
) -> CoxModelResult:
    """Cox model (Efron ties, `cohort.survival.TimeVaryingCox`) of `outcome` ('fracture' or
    'death': the other one censors, as in a cause-specific hazard) on a counting-process frame.
    With adjustment='iptw' the frame's iptw column weights the partial likelihood and SEs are robust
    (sandwich, clustered on patient); otherwise the fit is unweighted with model-based SEs. Terms
    without a finite estimate (no exposed follow-up, no event while exposed: monotone likelihood)
    are left out as described in `_estimable_terms` and listed in `dropped`; a model that still
    cannot be estimated (no events, no convergence) returns a result with `error` set."""
    with single_threaded_blas():
        return _fit_cox(frame, model, outcome, adjustment, alpha, ph_time_transforms)


def _fit_cox(frame, model, outcome, adjustment, alpha, ph_time_transforms) -> CoxModelResult:
    data = frame.data
    code = EVENT_CODES[outcome]
    event = (data["event_code"].to_numpy() == code)
    binary = [t for t in frame.terms if t in EXPOSURE_TERMS or t in E2_TERMS]
    days = (data["stop"] - data["start"]).to_numpy()
    exposed_events = {t: int(event[data[t].to_numpy() == 1].sum()) for t in binary}
    exposed_share = {t: float(days @ data[t].to_numpy() / days.sum()) if days.sum() > 0 else float("nan")
                     for t in binary}
    weighted = "iptw" in data.columns and adjustment == "iptw"
    patient = data["patient"].to_numpy()
    common = dict(
        model=model, outcome=outcome, adjustment=adjustment, terms=list(frame.terms),
        n_patients=_count_distinct(patient), n_events=int(event.sum()),
        n_patients_excluded=frame.n_patients_excluded, n_events_exposed=exposed_events, exposed_share=exposed_share,
        se_type="robust (sandwich, clustered on patient)" if weighted else "model-based",
    )
    empty = pd.DataFrame(columns=ESTIMATE_COLUMNS, index=pd.Index([], name="term"))
    no_ph = pd.DataFrame(columns=PH_COLUMNS)
    if not event.any():
        return CoxModelResult(**common, estimates=empty, ph_tests=no_ph, error=f"no {outcome} events")
    keep, fit_terms, dropped = _estimable_terms(data, event, frame.terms, binary)
    common["dropped"] = dropped
    columns = ["start", "stop", *fit_terms, *(["iptw", "patient"] if weighted else [])]
    fit_data = data[columns] if keep.all() else data.loc[keep, columns]
    fit_data = fit_data.assign(event=event[keep].astype(np.int8))
    if not keep.all():
        common["n_patients"] = _count_distinct(patient[keep])
    if not fit_terms:
        return CoxModelResult(**common, estimates=empty, ph_tests=no_ph, error="no estimable term")
    fitter = TimeVaryingCox(alpha=alpha)
    try:
        # Robust SEs cluster on patient (weighted fits only); an unweighted fit needs no id column.
        fitter.fit(
            fit_data, "event", "start", "stop", covariates=fit_terms,
            weights_col="iptw" if weighted else None, cluster_col="patient" if weighted else None,
        )
    except (CoxConvergenceError, ValueError, np.linalg.LinAlgError) as error:
        return CoxModelResult(**common, estimates=empty, ph_tests=no_ph, error=str(error))
    ci = fitter.confidence_intervals_
    estimates = pd.DataFrame({
        "log_hr": fitter.params_,
        "se": fitter.standard_errors_,
        "hazard_ratio": fitter.hazard_ratios_,
        "ci_low": np.exp(ci.iloc[:, 0]),
        "ci_high": np.exp(ci.iloc[:, 1]),
        "p_value": fitter.p_values_,
    })
    estimates.index.name = "term"
    ph = []
    for transform in ph_time_transforms:
        test = fitter.proportional_hazard_test(transform)
        ph.append(pd.DataFrame({
            "term": test.index, "time_transform": transform,
            "test_statistic": test["test_statistic"].to_numpy(), "p_value": test["p"].to_numpy(),
        }))
    return CoxModelResult(**common, estimates=estimates, ph_tests=pd.concat(ph, ignore_index=True))


def _count_distinct(ids: np.ndarray) -> int:
    """Distinct non-negative integer ids (patient = member row position), without sorting."""
    return int(np.count_nonzero(np.bincount(ids))) if len(ids) else 0


def _estimable_terms(data: pd.DataFrame, event: np.ndarray, terms: list[str], binary: list[str]):
    """Terms whose coefficient has a finite maximum-likelihood estimate, and the rows to fit them on.

    A 0/1 term with no person-time at 1, or a continuous term that is constant, carries no
    information: it is left out. A 0/1 term with person-time at 1 but no event there has an MLE of
    -infinity (monotone likelihood); as its coefficient goes to -infinity those rows leave every
    risk set, so the other terms' MLEs tend to their estimates without those rows: the term is left
    out and its rows removed, which is that limit exactly. Repeated until nothing changes.
    Returns (row mask, terms to fit, {term: why it was left out})."""
    keep = np.ones(len(data), dtype=bool)
    dropped: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        everything = keep.all()
        for term in terms:
            if term in dropped:
                continue
            x = data[term].to_numpy()
            if term in binary:
                exposed = (x == 1) if everything else (x == 1) & keep
                n_exposed = np.count_nonzero(exposed)
                if n_exposed == 0:
                    dropped[term] = "no follow-up time with this exposure"
                elif not np.any(event & exposed):
                    dropped[term] = ("no events while exposed: hazard ratio not estimable (tends to 0); the other "
                                     "terms are estimated on the unexposed follow-up")
                    keep &= ~exposed
                    changed = True
                elif n_exposed == np.count_nonzero(keep):
                    dropped[term] = "every follow-up time is exposed: no comparison"
            else:
                kept = x if everything else x[keep]
                if len(kept) and kept.min() == kept.max():
                    dropped[term] = "constant covariate"
    return keep, [t for t in terms if t not in dropped], dropped


def fit_time_varying_cox(
    intervals: pd.DataFrame | None,
    members: pd.DataFrame | None,
    *,
    model: str = "time_varying_adjusted",
    outcome: str = "fracture",
    terms: Sequence[str] = ADJUSTED_TERMS,
    e2_column: str = "e2_tier",
    id_columns: Sequence[str] = KEYS,
    frame: CountingProcessFrame | None = None,
    alpha: float = 0.05,
    ph_time_transforms: Sequence[str] = ("rank",),
) -> CoxModelResult:
    """The primary fracture model: Cox on analysis.fracture_intervals with time-varying current AI,
    current estradiol tier (reference 20-<40 pg/mL; 'unknown' its own term), current glucocorticoid
    use, adjusted for age, BMI and baseline femoral-neck sBMD (complete cases). `outcome='death'`
    gives the cause-specific hazard of death (fracture censors). Pass `frame` to reuse rows built
    by `counting_process_frame` (intervals and members are then ignored)."""
    frame = frame or counting_process_frame(intervals, members, terms, e2_column=e2_column, id_columns=id_columns)
    return fit_cox(frame, model, outcome=outcome, adjustment="regression", alpha=alpha,
                   ph_time_transforms=ph_time_transforms)


def fit_iptw_cox(
    intervals: pd.DataFrame | None,
    members: pd.DataFrame | None,
    weights: np.ndarray | None,
    *,
    model: str = "iptw_itt",
    exposure: str = "ai_ever",
    outcome: str = "fracture",
    id_columns: Sequence[str] = KEYS,
    alpha: float = 0.05,
    frame: CountingProcessFrame | None = None,
    weighted: bool | None = None,
    ph_time_transforms: Sequence[str] = ("rank",),
) -> CoxModelResult:
    """Intention-to-treat AI effect: Cox on the intervals with `exposure` (ai_ever: 1 from the first
    AI day on, whatever follows) as the only term, so time before initiation counts as unexposed
    (no immortal time). With `weights` (stabilized IPTW per member row, from PropensityScoreModel):
    weighted partial likelihood, robust SEs clustered on patient. With weights=None: the crude
    (unadjusted) model, adjustment 'none'. Pass `frame` (built with the weights) to reuse rows for
    both, and `weighted` to choose."""
    frame = frame or counting_process_frame(intervals, members, [exposure], weights=weights, id_columns=id_columns)
    weighted = ("iptw" in frame.data.columns) if weighted is None else weighted
    return fit_cox(frame, model, outcome=outcome, adjustment="iptw" if weighted else "none", alpha=alpha,
                   ph_time_transforms=ph_time_transforms)


# --------------------------------------------------------------------------------------------------
# Diagnostics gate and the results table
# --------------------------------------------------------------------------------------------------


def minimum_detectable_relative_risk(events: int, exposed_share: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Schoenfeld's formula as CohortMethod's computeMdrr for Cox models:
    exp(sqrt((z_{1-alpha/2} + z_power)^2 / (D p (1 - p)))), D events, p the exposed share."""
    if events <= 0 or not 0 < exposed_share < 1:
        return float("inf")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(math.exp(math.sqrt(z**2 / (events * exposed_share * (1 - exposed_share)))))


@dataclass
class BalanceSummary:
    """What the gate needs from the propensity analysis of the AI comparison."""

    max_abs_smd_before: float
    max_abs_smd_after: float
    worst_before: str
    worst_after: str
    equipoise: float

    @classmethod
    def from_results(cls, balance: pd.DataFrame, equipoise: float) -> "BalanceSummary":
        before = balance["smd_before"].abs().fillna(0.0)
        after = balance["smd_after"].abs().fillna(0.0)
        return cls(
            max_abs_smd_before=float(before.max()) if len(before) else 0.0,
            max_abs_smd_after=float(after.max()) if len(after) else 0.0,
            worst_before=str(balance["covariate"].iloc[int(before.to_numpy().argmax())]) if len(before) else "",
            worst_after=str(balance["covariate"].iloc[int(after.to_numpy().argmax())]) if len(after) else "",
            equipoise=float(equipoise),
        )


class DiagnosticsGate:
    """Pass / fail per result, in the spirit of OHDSI CohortMethod's study diagnostics.

    For every term of a model:
      * estimable: the model converged and the term has a finite estimate;
      * events: the model has >= min_events events, and a 0/1 exposure term >= min_events events
        while exposed;
      * MDRR: a 0/1 exposure term's minimum detectable relative risk <= mdrr_threshold;
    and for the AI comparison (terms ai_current / ai_ever):
      * equipoise: share of patients with preference score in the bounds >= equipoise_threshold;
      * balance, when the model's validity rests on it: the IPTW model needs every |SMD| after
        weighting <= smd_threshold; the crude model is judged on the unweighted SMDs (so it fails
        when the groups differ, as it should); regression-adjusted models are not judged on balance.
    A term that fails any check has diagnostics_passed = false and a note per failed check (no
    counts in the notes: they are shown to people).
    """

    def __init__(self, settings: FractureModelSettings | None = None):
        self.settings = settings or FractureModelSettings()

    def check_balance(self, max_abs_smd: float) -> bool:
        return bool(max_abs_smd <= self.settings.smd_threshold)

    def check_equipoise(self, equipoise: float) -> bool:
        return bool(equipoise >= self.settings.equipoise_threshold)

    def evaluate(self, result: CoxModelResult, balance: BalanceSummary | None = None) -> pd.DataFrame:
        """One row per term: mdrr, equipoise, max_abs_smd (the one judged, if any), diagnostics_passed,
        diagnostics_notes."""
        s = self.settings
        rows = []
        model_notes = []
        if not result.estimable:
            model_notes.append(f"not estimable ({result.error})")
        if result.n_events < s.min_events:
            model_notes.append(f"fewer than {s.min_events} events in the model")
        for term in result.terms:
            notes = list(model_notes)
            if term in result.dropped:
                notes.append(f"not estimable ({result.dropped[term]})")
            mdrr = equipoise = max_smd = float("nan")
            if term in result.n_events_exposed:
                if result.n_events_exposed[term] < s.min_events:
                    notes.append(f"fewer than {s.min_events} events while exposed")
                mdrr = minimum_detectable_relative_risk(result.n_events, result.exposed_share[term], s.alpha)
                if not mdrr <= s.mdrr_threshold:
                    notes.append(f"MDRR {mdrr:.3g} > {s.mdrr_threshold:g}")
            if term in AI_TERMS:
                if balance is None:
                    notes.append("no propensity-score diagnostics for the AI comparison")
                else:
                    equipoise = balance.equipoise
                    if not self.check_equipoise(equipoise):
                        notes.append(f"equipoise {equipoise:.2f} < {s.equipoise_threshold:g}")
                    if result.adjustment in ("iptw", "none"):
                        after = result.adjustment == "iptw"
                        max_smd = balance.max_abs_smd_after if after else balance.max_abs_smd_before
                        worst = balance.worst_after if after else balance.worst_before
                        if not self.check_balance(max_smd):
                            notes.append(
                                f"imbalance {'after weighting' if after else '(unweighted)'}: max |SMD| "
                                f"{max_smd:.2f} > {s.smd_threshold:g} ({worst})"
                            )
            rows.append({"term": term, "mdrr": mdrr, "equipoise": equipoise, "max_abs_smd": max_smd,
                         "diagnostics_passed": not notes, "diagnostics_notes": "; ".join(notes)})
        return pd.DataFrame(rows)


FRACTURE_COX_COLUMNS = [
    "model", "outcome", "adjustment", "term", "term_label", "log_hr", "se", "se_type", "hazard_ratio", "ci_low",
    "ci_high", "p_value", "ph_p_value", "n_patients", "n_patients_excluded", "n_events", "n_events_exposed",
    "mdrr", "equipoise", "max_abs_smd", "estimable", "diagnostics_passed", "diagnostics_notes",
]


def fracture_cox_table(
    results: Sequence[CoxModelResult],
    balance: BalanceSummary | None,
    settings: FractureModelSettings | None = None,
) -> pd.DataFrame:
    """results.fracture_cox rows (without data_cutoff): one per model and term, the gate applied,
    the PH test p-value (settings.ph_time_transform) alongside."""
    gate = DiagnosticsGate(settings)
    transform = gate.settings.ph_time_transform
    frames = []
    for result in results:
        diag = gate.evaluate(result, balance).set_index("term")
        est = result.estimates.reindex(result.terms)
        ph = result.ph_tests[result.ph_tests["time_transform"] == transform].set_index("term")["p_value"]
        frames.append(pd.DataFrame({
            "model": result.model,
            "outcome": result.outcome,
            "adjustment": result.adjustment,
            "term": result.terms,
            "term_label": [TERM_LABELS.get(t, t) for t in result.terms],
            "log_hr": est["log_hr"].to_numpy(dtype=float),
            "se": est["se"].to_numpy(dtype=float),
            "se_type": result.se_type,
            "hazard_ratio": est["hazard_ratio"].to_numpy(dtype=float),
            "ci_low": est["ci_low"].to_numpy(dtype=float),
            "ci_high": est["ci_high"].to_numpy(dtype=float),
            "p_value": est["p_value"].to_numpy(dtype=float),
            "ph_p_value": ph.reindex(result.terms).to_numpy(dtype=float),
            "n_patients": result.n_patients,
            "n_patients_excluded": result.n_patients_excluded,
            "n_events": result.n_events,
            "n_events_exposed": pd.array([result.n_events_exposed.get(t) for t in result.terms], dtype="Int64"),
            "mdrr": diag["mdrr"].to_numpy(dtype=float),
            "equipoise": diag["equipoise"].to_numpy(dtype=float),
            "max_abs_smd": diag["max_abs_smd"].to_numpy(dtype=float),
            "estimable": [result.term_estimable(t) for t in result.terms],
            "diagnostics_passed": diag["diagnostics_passed"].to_numpy(dtype=bool),
            "diagnostics_notes": diag["diagnostics_notes"].to_numpy(dtype=object),
        }))
    if not frames:
        return pd.DataFrame(columns=FRACTURE_COX_COLUMNS)
    return pd.concat(frames, ignore_index=True)[FRACTURE_COX_COLUMNS]


def ph_tests_table(results: Sequence[CoxModelResult]) -> pd.DataFrame:
    """results.fracture_ph_tests rows (without data_cutoff): model, outcome, term, time_transform,
    test_statistic, p_value."""
    frames = [r.ph_tests.assign(model=r.model, outcome=r.outcome) for r in results if len(r.ph_tests)]
    columns = ["model", "outcome", *PH_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
