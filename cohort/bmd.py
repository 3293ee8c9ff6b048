"""BMD change by AI exposure and estradiol tier: linear mixed models of log sBMD per skeletal site.

The model (issue 7), fitted per skeletal site on the rows of ``analysis.bmd_long``::

    log sBMD_ij = b0 + b_time t_ij + b_ai A_ij + sum_k b_k E_kij
                  + b_age age_c + b_bmi bmi_c + b_age_t age_c t_ij + b_bmi_t bmi_c t_ij
                  + manufacturer + site of care + u0_i + u1_i t_ij + e_ij

``t`` = years since the baseline scan; ``A`` = years of that time spent on a current AI;
``E_k`` = years spent in estradiol tier k (``lt10``, ``10_20``, ``ge40``, ``unknown``; the
reference ``20_40`` is left out, so with ``t`` in the model each ``b_k`` is the difference in
annual change while in tier k instead of 20-<40); ``age_c = (age - 65) / 10``, ``bmi_c =
(BMI - 28) / 5`` (the generator's scaling, truth.json ``covariate_scaling``). Random intercept
and slope on ``t`` per patient, correlated, fitted by REML with the exact fast fitter
:class:`cohort.mixed_model.RandomSlopeMixedModel` (matches statsmodels ``MixedLM``, the reference,
to 1e-6; tests/test_bmd_models.py checks it on real ``bmd_long`` rows).

Because the outcome is log sBMD, 100 x a coefficient on a years-variable reads as percent per
year (a log difference; for the small rates here it equals the relative % change to <0.05 %/yr).
The estimands are ``ai_current`` (current AI vs none) and each tier vs 20-<40, in % per year.

Analyses (the ``analysis`` column of results.bmd_change):

``primary``     the model above, estradiol tiers from every assay;
``lcms_only``   the same with the LC-MS/MS-only tiers (``years_e2_lcms_*``; same term names);
``crude``       ``time`` + ``ai_current`` only (plus the random effects): the unadjusted
                contrast, to show what adjustment changes (confounding check). On generated
                cohorts it is far more negative than the planted AI effect (mean -0.60 %/yr off over
                20 seeds, bench/out/coverage_bmd.json): AI time is mostly low-estradiol time, and
                the tier effects then load on AI. Leaving only BMI out biases the AI effect the
                other way (+0.48 %/yr: AI users are heavier and BMI slows loss). The adjusted model
                is off by +0.04 %/yr on average, its CIs covering at the nominal rate.

All analyses use the same complete cases (scans with age, BMI and manufacturer).

Non-convergence is an error: :class:`cohort.mixed_model.ConvergenceError`, re-raised with the
site and analysis in the message. Data that cannot identify the model at all (no patient with a
follow-up scan, fewer scans than terms) raise :class:`NotEstimableError` (a ValueError); a single
exposure term without any exposed time is dropped and reported as not estimable.
"""

from __future__ import annotations

import time as _time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from cohort.mixed_model import ConvergenceError, RandomSlopeMixedModel, SingularFitWarning

__all__ = [
    "ANALYSES",
    "BMD_LONG_COLUMNS",
    "BmdChangeModel",
    "BmdDesign",
    "ESTIMAND_TERMS",
    "NotEstimableError",
    "SKELETAL_SITES",
    "TERM_LABELS",
    "build_design",
    "fit_bmd_models",
    "limit_blas_threads",
    "prepare_rows",
    "term_labels",
    "tier_group_labels",
]

SKELETAL_SITES = ("lumbar_spine", "femoral_neck", "total_hip")
TIERS = ("lt10", "10_20", "20_40", "ge40", "unknown")
REFERENCE_TIER = "20_40"
TIER_TERMS = tuple(f"e2_{t}" for t in TIERS if t != REFERENCE_TIER)  # e2_lt10, e2_10_20, e2_ge40, e2_unknown
ESTIMAND_TERMS = ("ai_current", *TIER_TERMS)
ANALYSES = ("primary", "lcms_only", "crude")
ANALYSIS_LABELS = {
    "primary": "Primary (estradiol tiers from all assays)",
    "lcms_only": "Sensitivity: estradiol tiers from LC-MS/MS results only",
    "crude": "Crude: time and current AI only (unadjusted)",
}
AGE_REF, AGE_SCALE = 65.0, 10.0
BMI_REF, BMI_SCALE = 28.0, 5.0
TERM_LABELS = {
    "intercept": "Intercept (log sBMD at baseline, reference covariates)",
    "time": "Annual change, reference (no AI, E2 20–<40, age 65, BMI 28)",
    "ai_current": "Current aromatase inhibitor vs none",
    "e2_lt10": "Estradiol <10 vs 20–<40 pg/mL",
    "e2_10_20": "Estradiol 10–<20 vs 20–<40 pg/mL",
    "e2_ge40": "Estradiol ≥40 vs 20–<40 pg/mL",
    "e2_unknown": "Estradiol unknown vs 20–<40 pg/mL",
    "age_c": "Baseline age, per 10 years (level)",
    "bmi_c": "Baseline BMI, per 5 kg/m² (level)",
    "age_x_time": "Baseline age per 10 years × time (annual change)",
    "bmi_x_time": "Baseline BMI per 5 kg/m² × time (annual change)",
}
# Columns of analysis.bmd_long the models read (patient_id is optional: an integer patient code).
BMD_LONG_COLUMNS = (
    "source_site", "patient_key", "skeletal_site", "manufacturer", "years_since_baseline", "log_sbmd",
    "years_on_ai", "years_e2_lt10", "years_e2_10_20", "years_e2_ge40", "years_e2_unknown",
    "years_e2_lcms_lt10", "years_e2_lcms_10_20", "years_e2_lcms_ge40", "years_e2_lcms_unknown",
    "age_at_index", "bmi",
)


class NotEstimableError(ValueError):
    """The data cannot identify the model (too few patients, scans or follow-up)."""


def tier_group_labels(bounds: tuple[float, float, float] = (10, 20, 40)) -> dict[str, str]:
    """Group labels of the estradiol tiers, as in the fracture results and GROUP_COLORS."""
    lo, mid, hi = bounds
    return {"lt10": f"E2 <{lo:g} pg/mL", "10_20": f"E2 {lo:g}–<{mid:g} pg/mL", "20_40": f"E2 {mid:g}–<{hi:g} pg/mL",
            "ge40": f"E2 ≥{hi:g} pg/mL", "unknown": "E2 unknown"}


def term_labels(bounds: tuple[float, float, float] = (10, 20, 40)) -> dict[str, str]:
    """Readable labels of the model terms for the protocol's estradiol tier bounds."""
    lo, mid, hi = bounds
    ref = f"{mid:g}–<{hi:g} pg/mL"
    return TERM_LABELS | {
        "time": f"Annual change, reference (no AI, E2 {ref}, age 65, BMI 28)",
        "e2_lt10": f"Estradiol <{lo:g} vs {ref}", "e2_10_20": f"Estradiol {lo:g}–<{mid:g} vs {ref}",
        "e2_ge40": f"Estradiol ≥{hi:g} vs {ref}", "e2_unknown": f"Estradiol unknown vs {ref}",
    }


# ---------------------------------------------------------------------------------------------
# Design matrix
# ---------------------------------------------------------------------------------------------


@dataclass
class BmdDesign:
    """The model's inputs for one skeletal site and analysis, ready for the mixed-model fitter."""

    y: np.ndarray  # log sBMD
    X: pd.DataFrame  # fixed effects (intercept first); columns are the term names
    time: np.ndarray  # years since baseline (random slope covariate)
    groups: np.ndarray  # patient code per row: dense integers 0 .. n_patients - 1
    analysis: str
    skeletal_site: str | None
    n_rows_excluded: int = 0  # rows dropped for a missing outcome or covariate
    n_patients_excluded: int = 0  # patients left with no row
    dropped_terms: dict[str, str] = field(default_factory=dict)  # term -> why it is not in X

    @property
    def n_scans(self) -> int:
        return len(self.y)

    @property
    def n_patients(self) -> int:
        return int(self.groups.max()) + 1 if len(self.groups) else 0

    def fit_args(self) -> tuple:
        """(y, X, time, groups) for RandomSlopeMixedModel.fit / fit_statsmodels_reference."""
        return self.y, self.X, self.time, self.groups


def _dummies(values: pd.Series, prefix: str, preferred_reference: str | None = None) -> dict[str, np.ndarray]:
    """0/1 columns for every level but the reference (the preferred one if present, else the most
    frequent; ties by name), named ``prefix[level]`` in level order. Missing values must have been
    removed."""
    codes, levels = pd.factorize(values, sort=True)
    levels = [str(level) for level in levels]
    counts = np.bincount(codes, minlength=len(levels))
    if preferred_reference is not None and preferred_reference in levels:
        reference = levels.index(preferred_reference)
    else:
        reference = min(range(len(levels)), key=lambda i: (-counts[i], levels[i]))
    return {f"{prefix}[{level}]": (codes == i).astype(float) for i, level in enumerate(levels) if i != reference}


def build_design(rows: pd.DataFrame, analysis: str = "primary", skeletal_site: str | None = None,
                 omit_terms: tuple[str, ...] = ()) -> BmdDesign:
    """The design of one skeletal site and analysis from analysis.bmd_long rows.

    ``rows``: bmd_long rows (BMD_LONG_COLUMNS; an integer ``patient_id`` column, if present, is
    used as the patient code, else ``(source_site, patient_key)``). If ``skeletal_site`` is given,
    other sites' rows are ignored (rows without a skeletal_site column are taken to be that
    site's); otherwise the rows must hold one site. Rows with a missing
    outcome, time, exposure or covariate (BMI, age, manufacturer) are left out and counted, in every
    analysis (the crude one too, so that it compares the same scans).
    Constant columns (one site of care, one manufacturer, an exposure nobody had) and columns that
    are linear combinations of earlier ones are dropped and listed in ``dropped_terms``.
    ``omit_terms`` leaves named terms out on purpose (e.g. ``("bmi_c", "bmi_x_time")`` to show the
    confounding by BMI in a test); they are listed in ``dropped_terms`` as "omitted".
    """
    if analysis not in ANALYSES:
        raise ValueError(f"analysis must be one of {ANALYSES}, got {analysis!r}")
    if skeletal_site is not None:
        if "skeletal_site" in rows and not (rows["skeletal_site"].nunique() == 1
                                            and rows["skeletal_site"].iloc[0] == skeletal_site):
            rows = rows[rows["skeletal_site"] == skeletal_site]
    elif "skeletal_site" in rows and rows["skeletal_site"].nunique() > 1:
        raise ValueError(f"rows hold several skeletal sites {sorted(rows['skeletal_site'].unique())}: name one")
    else:
        skeletal_site = str(rows["skeletal_site"].iloc[0]) if len(rows) and "skeletal_site" in rows else None
    prefix = "years_e2_lcms_" if analysis == "lcms_only" else "years_e2_"
    exposures = {"ai_current": "years_on_ai"} | {f"e2_{t}": f"{prefix}{t}" for t in TIERS if t != REFERENCE_TIER}
    if analysis == "crude":
        exposures = {"ai_current": "years_on_ai"}
    # Every analysis uses the same complete cases (the crude model too, so that crude and adjusted
    # estimates compare the same patients and scans).
    needed = ["log_sbmd", "years_since_baseline", *exposures.values(), "age_at_index", "bmi"]
    numeric = {c: pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=float) for c in needed}
    ok = np.logical_and.reduce([np.isfinite(v) for v in numeric.values()]) & rows["manufacturer"].notna().to_numpy()
    if "patient_id" in rows:
        patient = rows["patient_id"].to_numpy()
    else:
        patient = pd.MultiIndex.from_arrays([rows["source_site"].astype(str), rows["patient_key"].astype(str)]
                                            ).factorize()[0]
    all_patients = len(pd.unique(patient))
    if not ok.any():
        raise NotEstimableError(
            f"BMD mixed model '{analysis}' for {skeletal_site or '?'} is not estimable: "
            + (f"no scan has all covariates ({len(rows)} scans)" if len(rows) else "no scans"))
    everything = bool(ok.all())
    groups, kept_patients = pd.factorize(patient if everything else patient[ok])
    values = numeric if everything else {c: v[ok] for c, v in numeric.items()}
    t = values["years_since_baseline"]

    columns: dict[str, np.ndarray] = {"intercept": np.ones(len(t)), "time": t}
    columns.update({term: values[column] for term, column in exposures.items()})
    if analysis != "crude":
        age_c = (values["age_at_index"] - AGE_REF) / AGE_SCALE
        bmi_c = (values["bmi"] - BMI_REF) / BMI_SCALE
        columns.update(age_c=age_c, bmi_c=bmi_c, age_x_time=age_c * t, bmi_x_time=bmi_c * t)
        for column, prefix_, preferred in (("manufacturer", "manufacturer", "Hologic"), ("source_site", "source_site", None)):
            kept = rows[column] if everything else rows[column][ok]
            columns.update(_dummies(kept, prefix_, preferred))

    dropped: dict[str, str] = {name: "omitted" for name in omit_terms if name in columns}
    for name, column in list(columns.items())[1:]:
        if name not in dropped and (len(column) == 0 or np.all(column == column[0])):
            dropped[name] = ("no exposed follow-up time" if name in exposures and (len(column) == 0 or column[0] == 0)
                             else "constant")
    names = [name for name in columns if name not in dropped]
    matrix = np.empty((len(t), len(names)))
    for j, name in enumerate(names):
        matrix[:, j] = columns[name]
    del columns
    if len(matrix) > matrix.shape[1]:
        dependent = _dependent_columns(matrix, names)
        if dependent:
            dropped.update({name: "linear combination of earlier terms" for name in dependent})
            keep = [j for j, name in enumerate(names) if name not in dependent]
            matrix, names = matrix[:, keep], [names[j] for j in keep]
    return BmdDesign(
        y=values["log_sbmd"], X=pd.DataFrame(matrix, columns=names, copy=False), time=t,
        groups=groups.astype(np.intp), analysis=analysis, skeletal_site=skeletal_site,
        n_rows_excluded=int((~ok).sum()), n_patients_excluded=int(all_patients - len(kept_patients)),
        dropped_terms=dropped,
    )


def _dependent_columns(X: np.ndarray, names: list[str], rtol: float = 1e-6) -> list[str]:
    """Columns that are (numerically) linear combinations of the columns before them.

    From the Gram matrix of the unit-RMS columns (one n x p product): in column order, a column's
    squared norm orthogonal to the kept earlier columns is its Schur complement; below ``rtol**2``
    (relative) it is dependent. Rounding in the Gram matrix is ~1e-15 relative, so a dependent
    column shows ~1e-7 and an identifiable one far more (the fitter's own rank check is stricter)."""
    n = len(X)
    with limit_blas_threads(1):  # one n x p product and p tiny solves: threads only add waiting
        gram = X.T @ X / n
    scale = np.sqrt(np.diag(gram))
    scale[scale == 0] = 1.0
    gram = gram / np.outer(scale, scale)
    kept: list[int] = []
    dependent = []
    for j in range(len(names)):
        if kept:
            block = gram[np.ix_(kept, kept)]
            cross = gram[kept, j]
            residual = gram[j, j] - cross @ np.linalg.solve(block, cross)
        else:
            residual = gram[j, j]
        if residual <= rtol**2:
            dependent.append(names[j])
        else:
            kept.append(j)
    return dependent


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------


@contextmanager
def limit_blas_threads(limit: int | None):
    """Limit BLAS threads (threadpoolctl) within the block; a no-op when limit is None or
    threadpoolctl is not installed."""
    if limit is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        context = nullcontext()
    else:
        context = threadpool_limits(limits=limit, user_api="blas")
    with context:
        yield


class BmdChangeModel:
    """Mixed model of log sBMD for one skeletal site (see the module docstring), lifelines style.

    Parameters
    ----------
    analysis : {"primary", "lcms_only", "crude"}
    alpha : float
        CIs at level 1 - alpha (Wald, normal reference).
    maxiter, gtol, cov_type :
        Passed to :class:`cohort.mixed_model.RandomSlopeMixedModel`.
    omit_terms : tuple of str
        Terms to leave out of the design on purpose (see :func:`build_design`).
    blas_threads : int or None
        BLAS threads during the fit (default 1; None: the library default). The fit's matrix
        products are n x p with p ~ 20, too small for threads to pay off: on the shared 2-core
        machine OpenBLAS's default threading made a 3,000-patient fit 10-20x slower in wall and
        CPU time (bench/bench_bmd.py). Needs threadpoolctl; without it the default is kept.

    Attributes (after ``fit``)
    --------------------------
    design_ : BmdDesign
    model_ : RandomSlopeMixedModel
    skeletal_site_ : str
    summary : DataFrame (property)
        Every fixed effect: ``coef`` (log scale), ``pct_per_year`` (100 x coef), ``se_pct``,
        ``ci_low``, ``ci_high`` (%), ``p_value``.
    estimates_ : DataFrame
        The estimand rows of results.bmd_change (without data_cutoff).
    diagnostics_ : dict
        converged, reml_llf, variance components (sd_intercept_log, sd_slope_pct_per_year,
        corr_intercept_slope, residual_sd_log), on_boundary, n_iterations, grad_norm, n_patients,
        n_scans, exclusions, dropped terms, optimizer message, fit time.
    residuals_ : DataFrame
        Per scan: ``fitted`` (conditional on the patient's predicted random effects), ``residual``
        and ``std_residual`` (residual / residual SD), for the residual plots.
    random_effects_ : ndarray (n_patients, 2)
        Predicted (BLUP) random intercept and slope per patient code.
    """

    def __init__(self, analysis: str = "primary", alpha: float = 0.05, maxiter: int = 100, gtol: float = 1e-6,
                 cov_type: str = "statsmodels", omit_terms: tuple[str, ...] = (), blas_threads: int | None = 1):
        if analysis not in ANALYSES:
            raise ValueError(f"analysis must be one of {ANALYSES}, got {analysis!r}")
        self.analysis = analysis
        self.alpha = alpha
        self.maxiter = maxiter
        self.gtol = gtol
        self.cov_type = cov_type
        self.omit_terms = tuple(omit_terms)
        self.blas_threads = blas_threads

    def fit(self, rows: pd.DataFrame | BmdDesign, skeletal_site: str | None = None) -> "BmdChangeModel":
        """Fit on analysis.bmd_long rows of one skeletal site (or on a prepared BmdDesign).

        Raises NotEstimableError when the data cannot identify the model, and ConvergenceError
        (naming site and analysis) when REML does not converge.
        """
        with limit_blas_threads(self.blas_threads):
            return self._fit(rows, skeletal_site)

    def _fit(self, rows, skeletal_site) -> "BmdChangeModel":
        design = rows if isinstance(rows, BmdDesign) else build_design(rows, self.analysis, skeletal_site, self.omit_terms)
        what = f"BMD mixed model '{self.analysis}' for {design.skeletal_site or '?'}"
        started, cpu = _time.perf_counter(), _time.process_time()
        model = RandomSlopeMixedModel(alpha=self.alpha, cov_type=self.cov_type, maxiter=self.maxiter, gtol=self.gtol)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SingularFitWarning)
            try:
                model.fit(*design.fit_args(), term_names=list(design.X.columns))
            except ConvergenceError as error:
                raise ConvergenceError(
                    f"{what} did not converge ({design.n_patients} patients, {design.n_scans} scans): {error}"
                ) from error
            except ValueError as error:
                raise NotEstimableError(
                    f"{what} is not estimable ({design.n_patients} patients, {design.n_scans} scans): {error}"
                ) from error
        self.fit_seconds_ = _time.perf_counter() - started
        self.fit_cpu_seconds_ = _time.process_time() - cpu
        self.warnings_ = [str(w.message) for w in caught if issubclass(w.category, SingularFitWarning)]
        for w in caught:  # anything else is passed on
            if not issubclass(w.category, SingularFitWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.design_ = design
        self.model_ = model
        self.skeletal_site_ = design.skeletal_site
        self._residuals()
        self.diagnostics_ = self._diagnostics()
        self.estimates_ = self._estimates()
        return self

    # -- results ---------------------------------------------------------------------------------

    @property
    def summary(self) -> pd.DataFrame:
        m = self.model_
        ci = m.confidence_intervals_
        return pd.DataFrame({
            "coef": m.params_, "pct_per_year": 100 * m.params_, "se_pct": 100 * m.bse_,
            "ci_low": 100 * ci.iloc[:, 0], "ci_high": 100 * ci.iloc[:, 1], "p_value": m.pvalues_,
        })

    def _diagnostics(self) -> dict:
        m, d = self.model_, self.design_
        G = m.cov_re_.to_numpy()
        sd = np.sqrt(np.maximum(np.diag(G), 0))
        notes = list(self.warnings_)
        return {
            "converged": bool(m.converged_),
            "reml_llf": float(m.llf_),
            "sd_intercept_log": float(sd[0]),
            "sd_slope_pct_per_year": float(100 * sd[1]),
            "corr_intercept_slope": float(m.re_corr_),
            "residual_sd_log": float(np.sqrt(m.scale_)),
            "on_boundary": bool(m.on_boundary_),
            "n_iterations": int(m.n_iter_),
            "grad_norm": float(m.grad_norm_),
            "n_patients": int(m.n_groups_),
            "n_scans": int(m.n_obs_),
            "n_patients_excluded": int(d.n_patients_excluded),
            "n_scans_excluded": int(d.n_rows_excluded),
            "terms_dropped": "; ".join(f"{k}: {v}" for k, v in d.dropped_terms.items()),
            "optimizer": m.optimizer_message_,
            "fit_seconds": float(self.fit_seconds_),
            "notes": "; ".join(notes),
            "residual_abs_gt_4sd_share": float(np.mean(np.abs(self.residuals_["std_residual"]) > 4)),
        }

    def _estimates(self) -> pd.DataFrame:
        """One row per estimand term (terms not estimable get NULL estimates and a note)."""
        terms = ("ai_current",) if self.analysis == "crude" else ESTIMAND_TERMS
        summary = self.summary
        diag = self.diagnostics_
        rows = []
        for term in terms:
            row = {"skeletal_site": self.skeletal_site_, "analysis": self.analysis, "term": term}
            if term in summary.index:
                s = summary.loc[term]
                row.update(estimate_pct_per_year=s.pct_per_year, std_error=s.se_pct, ci_low=s.ci_low,
                           ci_high=s.ci_high, p_value=s.p_value, note=diag["notes"] or None)
            else:
                reason = self.design_.dropped_terms.get(term, "not in the model")
                row.update(estimate_pct_per_year=np.nan, std_error=np.nan, ci_low=np.nan, ci_high=np.nan,
                           p_value=np.nan, note=f"not estimable: {reason}")
            row.update({k: diag[k] for k in (
                "n_patients", "n_scans", "converged", "reml_llf", "sd_intercept_log", "sd_slope_pct_per_year",
                "corr_intercept_slope", "residual_sd_log", "on_boundary", "n_iterations", "grad_norm",
                "n_patients_excluded", "n_scans_excluded", "terms_dropped", "fit_seconds")})
            rows.append(row)
        return pd.DataFrame(rows)

    def _residuals(self) -> None:
        """Conditional residuals y - X beta - b0_i - b1_i t, with the BLUPs
        b_i = Psi (I + S_i Psi)^-1 Z_i'(y_i - X_i beta)  (S_i = Z_i'Z_i, Psi = G / sigma^2)."""
        d, m = self.design_, self.model_
        marginal = d.X.to_numpy() @ m.params_.to_numpy()
        r = d.y - marginal
        g, t = d.groups, d.time
        k = int(g.max()) + 1
        s00 = np.bincount(g, minlength=k).astype(float)
        s01 = np.bincount(g, weights=t, minlength=k)
        s11 = np.bincount(g, weights=t * t, minlength=k)
        c0 = np.bincount(g, weights=r, minlength=k)
        c1 = np.bincount(g, weights=t * r, minlength=k)
        psi = m.cov_re_.to_numpy() / m.scale_
        p00, p01, p11 = psi[0, 0], psi[0, 1], psi[1, 1]
        # M = I + S Psi (2x2 per patient), solve M v = c, b = Psi v.
        m00, m01 = 1 + s00 * p00 + s01 * p01, s00 * p01 + s01 * p11
        m10, m11 = s01 * p00 + s11 * p01, 1 + s01 * p01 + s11 * p11
        det = m00 * m11 - m01 * m10
        v0 = (m11 * c0 - m01 * c1) / det
        v1 = (m00 * c1 - m10 * c0) / det
        b0, b1 = p00 * v0 + p01 * v1, p01 * v0 + p11 * v1
        fitted = marginal + b0[g] + b1[g] * t
        residual = d.y - fitted
        self.random_effects_ = np.column_stack([b0, b1])
        self.residuals_ = pd.DataFrame({
            "fitted": fitted, "residual": residual, "std_residual": residual / np.sqrt(m.scale_),
        })

    # -- predictions -----------------------------------------------------------------------------

    def trajectory_groups(self, tier_labels: dict[str, str] | None = None) -> list[dict]:
        """The exposure groups of the trajectory table: (panel, group, label, slope contrast).

        All at the reference covariates (age 65, BMI 28); a group exposed to AI or a tier is
        exposed for the whole time shown."""
        labels = tier_labels or tier_group_labels()
        groups = [
            dict(panel="By AI exposure", exposure_group="no_ai", group_label="No current AI", terms=("time",)),
            dict(panel="By AI exposure", exposure_group="ai", group_label="Current AI", terms=("time", "ai_current")),
            dict(panel="By AI exposure", exposure_group="ai_e2_lt10", group_label=f"Current AI, {labels['lt10']}",
                 terms=("time", "ai_current", "e2_lt10")),
        ]
        if self.analysis != "crude":
            for tier in TIERS:
                terms = ("time",) if tier == REFERENCE_TIER else ("time", f"e2_{tier}")
                groups.append(dict(panel="By E2 tier", exposure_group=f"e2_{tier}", group_label=labels[tier], terms=terms))
        return groups

    def trajectory(self, years=None, tier_labels: dict[str, str] | None = None) -> pd.DataFrame:
        """Model-predicted mean % change from baseline at each year, per exposure group, with 95% CI.

        For a group with slope contrast c (a sum of coefficients), the log change at year y is
        ``y * c'beta`` with SE ``y * sqrt(c' V c)`` (V: fixed-effect covariance); the % change is
        ``100 (exp(.) - 1)`` (the geometric mean ratio to baseline), CI likewise. Groups needing a
        term that is not in the model are left out. ``years`` defaults to 0 .. the longest
        follow-up (whole years, at most 10).
        """
        if years is None:
            years = np.arange(0, int(min(np.floor(self.design_.time.max()), 10)) + 1)
        years = np.asarray(years, dtype=float)
        beta, V = self.model_.params_, self.model_.cov_params_
        z = stats.norm.ppf(1 - self.alpha / 2)
        rows = []
        for group in self.trajectory_groups(tier_labels):
            if not all(term in beta.index for term in group["terms"]):
                continue
            c = pd.Series(0.0, index=beta.index)
            c[list(group["terms"])] = 1.0
            slope = float(c @ beta)
            slope_se = float(np.sqrt(c @ V @ c))
            for year in years:
                eta, se = year * slope, year * slope_se
                rows.append({
                    "skeletal_site": self.skeletal_site_, "analysis": self.analysis, "panel": group["panel"],
                    "exposure_group": group["exposure_group"], "group_label": group["group_label"], "year": int(year),
                    "mean_pct_change": 100 * np.expm1(eta) + 0.0, "ci_low": 100 * np.expm1(eta - z * se) + 0.0,
                    "ci_high": 100 * np.expm1(eta + z * se) + 0.0, "pct_per_year": 100 * slope,
                    "pct_per_year_ci_low": 100 * (slope - z * slope_se),
                    "pct_per_year_ci_high": 100 * (slope + z * slope_se),
                    "n_patients": self.diagnostics_["n_patients"], "n_scans": self.diagnostics_["n_scans"],
                    "converged": self.diagnostics_["converged"],
                })
        return pd.DataFrame(rows)

    def __repr__(self):
        if not hasattr(self, "model_"):
            return f"<BmdChangeModel: unfitted, analysis={self.analysis!r}>"
        d = self.diagnostics_
        return (f"<BmdChangeModel: {self.skeletal_site_}, {self.analysis}, {d['n_patients']} patients, "
                f"{d['n_scans']} scans, converged={d['converged']}>")


# ---------------------------------------------------------------------------------------------
# All sites and analyses
# ---------------------------------------------------------------------------------------------


@dataclass
class BmdFits:
    """What fit_bmd_models returns."""

    change: pd.DataFrame  # results.bmd_change rows (without data_cutoff)
    trajectory: pd.DataFrame  # results.bmd_trajectory rows (primary analysis; without data_cutoff)
    models: dict[tuple[str, str], BmdChangeModel]  # (site, analysis) -> fitted model
    not_estimable: dict[tuple[str, str], str]  # (site, analysis) -> why no model was fitted


CHANGE_COLUMNS = [
    "skeletal_site", "analysis", "term", "estimate_pct_per_year", "std_error", "ci_low", "ci_high", "p_value",
    "n_patients", "n_scans", "converged", "note", "reml_llf", "sd_intercept_log", "sd_slope_pct_per_year",
    "corr_intercept_slope", "residual_sd_log", "on_boundary", "n_iterations", "grad_norm", "n_patients_excluded",
    "n_scans_excluded", "terms_dropped", "fit_seconds",
]
TRAJECTORY_COLUMNS = [
    "skeletal_site", "analysis", "panel", "exposure_group", "group_label", "year", "mean_pct_change", "ci_low", "ci_high",
    "pct_per_year", "pct_per_year_ci_low", "pct_per_year_ci_high", "n_patients", "n_scans", "converged",
]


def prepare_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """bmd_long rows with their text columns as categoricals: every analysis of a site factorizes
    them again, and factorizing codes is ~10x cheaper than factorizing 400,000 Python strings."""
    return rows.assign(**{c: rows[c].astype("category") for c in ("skeletal_site", "manufacturer", "source_site")
                          if c in rows and rows[c].dtype == object})


def fit_bmd_models(rows_by_site, analyses=ANALYSES, tier_labels: dict[str, str] | None = None,
                   keep_models: bool = True, **model_options) -> BmdFits:
    """Fit every analysis for every skeletal site.

    ``rows_by_site``: a DataFrame of bmd_long rows (all sites), or a mapping / iterable of
    ``(site, rows)`` (lets a caller load one site at a time). ConvergenceError propagates (the
    message names the site and analysis); a site whose data cannot identify the model is skipped
    and listed in ``not_estimable``. ``keep_models=False`` keeps only the primary models (their
    residuals feed the plots) to save memory.
    """
    if isinstance(rows_by_site, pd.DataFrame):
        frame = rows_by_site
        rows_by_site = [(s, frame[frame["skeletal_site"] == s]) for s in SKELETAL_SITES
                        if (frame["skeletal_site"] == s).any()]
    elif isinstance(rows_by_site, dict):
        rows_by_site = list(rows_by_site.items())
    change, trajectory, models, not_estimable = [], [], {}, {}
    for site, rows in rows_by_site:
        rows = prepare_rows(rows() if callable(rows) else rows)
        for analysis in analyses:
            model = BmdChangeModel(analysis=analysis, **model_options)
            try:
                model.fit(rows, skeletal_site=site)
            except NotEstimableError as error:
                not_estimable[(site, analysis)] = str(error)
                continue
            change.append(model.estimates_)
            if analysis == "primary":
                trajectory.append(model.trajectory(tier_labels=tier_labels))
            if keep_models or analysis == "primary":
                models[(site, analysis)] = model
        del rows
    change_frame = pd.concat(change, ignore_index=True) if change else _empty(CHANGE_COLUMNS)
    trajectory_frame = pd.concat(trajectory, ignore_index=True) if trajectory else _empty(TRAJECTORY_COLUMNS)
    return BmdFits(change_frame[CHANGE_COLUMNS], trajectory_frame[TRAJECTORY_COLUMNS], models, not_estimable)


_TEXT_COLUMNS = {"skeletal_site", "analysis", "term", "note", "terms_dropped", "panel", "exposure_group", "group_label"}
_INT_COLUMNS = {"n_patients", "n_scans", "n_iterations", "n_patients_excluded", "n_scans_excluded", "year"}
_BOOL_COLUMNS = {"converged", "on_boundary"}


def _empty(columns: list[str]) -> pd.DataFrame:
    """A frame with no rows but the dtypes of a filled one (so formatting and inserts still work)."""
    def dtype(column):
        if column in _TEXT_COLUMNS:
            return object
        return "int64" if column in _INT_COLUMNS else bool if column in _BOOL_COLUMNS else float
    return pd.DataFrame({c: pd.Series(dtype=dtype(c)) for c in columns})
