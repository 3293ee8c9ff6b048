"""Tests for cohort.mixed_model: agreement with the statsmodels reference, planted-truth
recovery, boundary fits and input/convergence errors.

Agreement tolerance with the (converged) statsmodels reference: relative 1e-6, i.e.
``|ours - ref| <= 1e-6 * |ref|`` for standard errors, each entry of G, sigma^2 and the
REML log-likelihood; for fixed effects the denominator is ``max(|ref|, SE)`` so that an
estimate that happens to be ~0 is judged on the scale of its uncertainty.  Measured
differences are ~1e-7 or smaller.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cohort.mixed_model import (
    ConvergenceError,
    RandomSlopeMixedModel,
    SingularFitWarning,
    _RemlProblem,
    fit_statsmodels_reference,
)

TERMS = [
    "intercept", "t", "ai_years", "e2_low_years", "age10", "bmi5", "age10_x_t", "bmi5_x_t", "scanner_b", "site_2",
]
BETA = np.array([0.0, -0.004, -0.010, -0.006, -0.050, 0.020, -0.0015, 0.0008, 0.012, 0.030])
RTOL = 1e-6


def simulate_cohort(n_subjects, seed, sd_int=0.15, sd_slope=0.005, corr=-0.3, sd_resid=0.012, visits=(1, 6)):
    """Log-BMD-like longitudinal data with the structure of the study's design.

    Each subject has ``visits`` (inclusive range, uniform) scans 0.8-2.5 years apart; 40%
    start an aromatase inhibitor (before or after baseline), a fraction of whose time is
    spent in the low-estradiol tier; baseline age and BMI (scaled) enter with their
    interactions with time; a scanner change and a site dummy shift the level.  Rows are
    shuffled so that subjects are not contiguous.  Returns a DataFrame with columns
    ``TERMS + ["y", "subject"]`` (``t`` is years since baseline).
    """
    rng = np.random.default_rng(seed)
    n_vis = rng.integers(visits[0], visits[1] + 1, n_subjects)
    sid = np.repeat(np.arange(n_subjects), n_vis)
    n = sid.size
    first = np.concatenate([[0], np.cumsum(n_vis)[:-1]])
    gaps = rng.uniform(0.8, 2.5, n)
    gaps[first] = 0.0
    t = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], n_vis)
    on_ai = rng.random(n_subjects) < 0.4
    ai_start = np.where(on_ai, rng.uniform(-1.0, 3.0, n_subjects), np.inf)
    ai_years = np.clip(t - ai_start[sid], 0.0, None)
    e2_low_frac = rng.beta(2, 3, n_subjects)
    age10 = (rng.normal(62, 8, n_subjects) - 60) / 10
    bmi5 = (rng.normal(29, 4, n_subjects) - 28) / 5
    site2 = (rng.random(n_subjects) < 0.3).astype(float)
    scanner_switch = rng.uniform(0, 8, n_subjects)
    scanner = (t > scanner_switch[sid]).astype(float)
    X = np.column_stack(
        [
            np.ones(n), t, ai_years, ai_years * e2_low_frac[sid], age10[sid], bmi5[sid],
            age10[sid] * t, bmi5[sid] * t, scanner, site2[sid],
        ]
    )
    cov = sd_int * sd_slope * corr
    G = np.array([[sd_int**2, cov], [cov, sd_slope**2]])
    b = rng.multivariate_normal([0.0, 0.0], G, n_subjects)
    y = X @ BETA + b[sid, 0] + b[sid, 1] * t + rng.normal(0.0, sd_resid, n)
    ids = np.array([f"P{i:06d}" for i in range(n_subjects)])[sid]
    perm = rng.permutation(n)
    return pd.DataFrame(X[perm], columns=TERMS).assign(y=y[perm], subject=ids[perm])


def fit_args(df):
    return df["y"], df[TERMS], df["t"], df["subject"]


CASES = {
    "n200_seed1": dict(n_subjects=200, seed=1),
    "n200_seed2": dict(n_subjects=200, seed=2),
    "n1000_seed3": dict(n_subjects=1000, seed=3),
    "near_zero_slope_n500": dict(n_subjects=500, seed=4, sd_slope=0.0002),
}
_cache = {}


def fitted(case):
    """(ours, statsmodels reference) for a case, fitted once per test session."""
    if case not in _cache:
        df = simulate_cohort(**CASES[case])
        _cache[case] = (RandomSlopeMixedModel().fit(*fit_args(df)), fit_statsmodels_reference(*fit_args(df)))
    return _cache[case]


def assert_rel_close(ours, ref, rtol=RTOL, floor=None):
    ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
    denom = np.abs(ref) if floor is None else np.maximum(np.abs(ref), np.asarray(floor, dtype=float))
    err = np.max(np.abs(ours - ref) / denom)
    assert err <= rtol, f"max relative difference {err:.3g} > {rtol:g}"


@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_statsmodels_reference(case):
    ours, ref = fitted(case)
    assert ours.converged_ and ref.converged_
    assert ours.grad_norm_ <= 1e-6
    assert not ours.on_boundary_
    assert ours.n_obs_ == ref.n_obs_ and ours.n_groups_ == ref.n_groups_ == CASES[case]["n_subjects"]
    assert list(ours.params_.index) == TERMS
    assert_rel_close(ours.params_, ref.params_, floor=ref.bse_)
    assert_rel_close(ours.bse_, ref.bse_)
    assert_rel_close(ours.cov_re_, ref.cov_re_)
    assert_rel_close(ours.scale_, ref.scale_)
    assert_rel_close(ours.llf_, ref.llf_)
    assert_rel_close(ours.pvalues_, ref.pvalues_, floor=1e-3)
    se_floor = ref.bse_.to_numpy()[:, None]
    assert_rel_close(ours.confidence_intervals_, ref.confidence_intervals_, floor=se_floor)
    # The optimum found is at least as good as statsmodels' (up to rounding).
    assert ours.llf_ >= ref.llf_ - 1e-9 * abs(ref.llf_)


def test_fixtures_include_single_observation_subjects():
    df = simulate_cohort(**CASES["n200_seed1"])
    assert (df.groupby("subject").size() == 1).sum() > 20


def test_lme4_covariance_matches_statsmodels_fixed_effects_hessian():
    df = simulate_cohort(n_subjects=100, seed=12)
    ours = RandomSlopeMixedModel(cov_type="lme4").fit(*fit_args(df))
    ref = fit_statsmodels_reference(*fit_args(df), cov_type="lme4")
    assert_rel_close(ours.bse_, ref.bse_)
    assert_rel_close(ours.cov_params_.to_numpy().diagonal(), ref.cov_params_.to_numpy().diagonal())
    # sigma^2 (X'V^-1X)^-1 ignores the uncertainty in G, so it is smaller here, by O(1/n_groups).
    default = RandomSlopeMixedModel().fit(*fit_args(df))
    ratio = ours.bse_ / default.bse_
    assert np.all(ratio <= 1 + 1e-9) and np.all(ratio > 0.9)


def test_summary_and_derived_fields():
    ours, _ = fitted("n200_seed1")
    summary = ours.summary
    assert list(summary.index) == TERMS
    assert list(summary.columns) == ["coef", "se(coef)", "z", "p", "coef lower 95%", "coef upper 95%"]
    z = ours.params_ / ours.bse_
    np.testing.assert_allclose(summary["p"], 2 * stats.norm.sf(np.abs(z)), rtol=1e-12)
    upper = ours.params_ + 1.959963984540054 * ours.bse_
    np.testing.assert_allclose(summary["coef upper 95%"], upper, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(np.diag(ours.cov_params_)), ours.bse_, rtol=1e-12)
    G = ours.cov_re_.to_numpy()
    assert ours.re_corr_ == pytest.approx(G[0, 1] / np.sqrt(G[0, 0] * G[1, 1]))
    L = np.array([[ours.theta_[0], 0], [ours.theta_[1], ours.theta_[2]]])
    np.testing.assert_allclose(ours.scale_ * L @ L.T, G, rtol=1e-12)
    assert 0 < ours.n_iter_ < 30 and ours.optimizer_message_ == "Newton: gradient below gtol at a minimum"
    assert "converged=True" in repr(ours)


def test_recovers_planted_truth():
    df = simulate_cohort(n_subjects=3000, seed=11)
    fit = RandomSlopeMixedModel().fit(*fit_args(df))
    ci = fit.confidence_intervals_.to_numpy()
    inside = (ci[:, 0] <= BETA) & (BETA <= ci[:, 1])
    assert inside.all(), f"true beta outside the 95% CI for {list(np.array(TERMS)[~inside])}"
    assert np.max(np.abs(fit.params_ - BETA) / fit.bse_) < 2.5
    G = fit.cov_re_.to_numpy()
    assert np.sqrt(G[0, 0]) == pytest.approx(0.15, rel=0.05)
    assert np.sqrt(G[1, 1]) == pytest.approx(0.005, rel=0.15)
    assert fit.re_corr_ == pytest.approx(-0.3, abs=0.15)
    assert np.sqrt(fit.scale_) == pytest.approx(0.012, rel=0.03)


def test_invariant_to_row_order_and_group_label_type():
    df = simulate_cohort(n_subjects=300, seed=5)
    base = RandomSlopeMixedModel().fit(*fit_args(df))
    shuffled = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    shuffled["subject"] = shuffled["subject"].str[1:].astype(int)
    other = RandomSlopeMixedModel().fit(*fit_args(shuffled))
    np.testing.assert_allclose(other.params_, base.params_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(other.bse_, base.bse_, rtol=1e-8)
    np.testing.assert_allclose(other.cov_re_, base.cov_re_, rtol=1e-8)
    assert other.llf_ == pytest.approx(base.llf_, rel=1e-12)


def test_analytic_gradient_and_hessian_match_finite_differences():
    df = simulate_cohort(n_subjects=150, seed=6)
    codes, uniques = pd.factorize(df["subject"])
    X = df[TERMS].to_numpy()
    X = X / np.sqrt((X**2).mean(0))
    problem = _RemlProblem(df["y"].to_numpy(), X, df["t"].to_numpy(), codes, len(uniques))
    theta = np.array([9.0, -1.2, 0.6])
    ev = problem.evaluate(theta)
    h = 1e-6
    steps = np.eye(3) * h
    fd_grad = [(problem.evaluate(theta + e, 0).f - problem.evaluate(theta - e, 0).f) / (2 * h) for e in steps]
    fd_hess = [
        (problem.evaluate(theta + e, 1).grad - problem.evaluate(theta - e, 1).grad) / (2 * h) for e in steps
    ]
    np.testing.assert_allclose(ev.grad, fd_grad, rtol=1e-6, atol=1e-6 * np.abs(ev.grad).max())
    np.testing.assert_allclose(ev.hess, fd_hess, rtol=1e-6, atol=1e-7 * np.abs(ev.hess).max())


def dense_reml_llf(df, G, sigma2):
    """REML log-likelihood by brute force (dense V_i per subject), statsmodels' scale."""
    X, y, t = df[TERMS].to_numpy(), df["y"].to_numpy(), df["t"].to_numpy()
    n, p = X.shape
    xvx, xvy, logdet_v, blocks = np.zeros((p, p)), np.zeros(p), 0.0, []
    for idx in df.groupby("subject").indices.values():
        Z = np.column_stack([np.ones(len(idx)), t[idx]])
        Vinv = np.linalg.inv(Z @ G @ Z.T + sigma2 * np.eye(len(idx)))
        logdet_v -= np.linalg.slogdet(Vinv)[1]
        xvx += X[idx].T @ Vinv @ X[idx]
        xvy += X[idx].T @ Vinv @ y[idx]
        blocks.append((idx, Vinv))
    beta = np.linalg.solve(xvx, xvy)
    quad = sum((y[i] - X[i] @ beta) @ Vinv @ (y[i] - X[i] @ beta) for i, Vinv in blocks)
    return -0.5 * ((n - p) * np.log(2 * np.pi) + logdet_v + np.linalg.slogdet(xvx)[1] + quad)


def test_boundary_fit_converges_to_a_singular_G():
    # True slope variance 0: the REML estimate here is a rank-1 G (correlation -1).
    df = simulate_cohort(n_subjects=150, seed=100, sd_slope=0.0, visits=(1, 4))
    with pytest.warns(SingularFitWarning, match="boundary"):
        fit = RandomSlopeMixedModel().fit(*fit_args(df))
    assert fit.converged_ and fit.on_boundary_
    assert abs(fit.re_corr_) == pytest.approx(1.0)
    assert np.all(np.isfinite(fit.bse_))
    G, s2 = fit.cov_re_.to_numpy(), fit.scale_
    llf = dense_reml_llf(df, G, s2)
    assert llf == pytest.approx(fit.llf_, rel=1e-10)
    # Moving into the interior of the parameter space, or along its boundary, lowers the likelihood.
    v = np.array([np.sqrt(G[0, 0]), np.sign(G[0, 1]) * np.sqrt(G[1, 1])])
    for G_alt, s2_alt in [
        (G + np.diag([0.0, 0.05 * G[1, 1]]), s2),
        (G * np.array([[1.0, 0.98], [0.98, 1.0]]), s2),
        (np.outer(v * [1, 1.1], v * [1, 1.1]), s2),
        (np.outer(v * [1, 0.9], v * [1, 0.9]), s2),
        (G * 1.02, s2),
        (G, s2 * 1.02),
    ]:
        assert dense_reml_llf(df, G_alt, s2_alt) < fit.llf_


def test_nonconvergence_raises_with_gradient_norm():
    df = simulate_cohort(n_subjects=200, seed=1)
    with pytest.raises(ConvergenceError, match=r"did not converge.*max\|d llf/d theta\| = "):
        RandomSlopeMixedModel(maxiter=1).fit(*fit_args(df))


def test_nonconvergence_can_be_returned_flagged():
    df = simulate_cohort(n_subjects=200, seed=1)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        fit = RandomSlopeMixedModel(maxiter=1).fit(*fit_args(df), raise_on_failure=False)
    assert not fit.converged_
    assert fit.grad_norm_ > 1e-6
    assert fit.n_iter_ <= 3  # one iteration in each stage: Newton, L-BFGS-B fallback, Newton
    assert "fallback L-BFGS-B" in fit.optimizer_message_


def test_lbfgs_fallback_when_newton_fails(monkeypatch):
    import cohort.mixed_model as mm

    newton, starts = mm._newton, []

    def newton_failing_first(problem, theta0, maxiter, gtol):
        starts.append(theta0)
        return newton(problem, theta0, 1 if len(starts) == 1 else maxiter, gtol)

    monkeypatch.setattr(mm, "_newton", newton_failing_first)
    df = simulate_cohort(**CASES["n200_seed1"])
    fit = RandomSlopeMixedModel().fit(*fit_args(df))
    assert len(starts) == 2 and fit.converged_
    assert fit.optimizer_message_.startswith("Newton failed (iteration limit (1) reached); fallback L-BFGS-B")
    direct = fitted("n200_seed1")[0]
    np.testing.assert_allclose(fit.params_, direct.params_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fit.cov_re_, direct.cov_re_, rtol=1e-7)


def test_missing_values_rejected():
    df = simulate_cohort(n_subjects=50, seed=7)
    y, X, t, g = (df["y"].to_numpy(), df[TERMS], df["t"].to_numpy(), df["subject"].to_numpy())
    fit = RandomSlopeMixedModel().fit
    with pytest.raises(ValueError, match=r"y has 1 missing or non-finite values \(first at row 3\)"):
        fit(np.where(np.arange(len(y)) == 3, np.nan, y), X, t, g)
    with pytest.raises(ValueError, match=r"time has 1 missing"):
        fit(y, X, np.where(np.arange(len(t)) == 5, np.inf, t), g)
    with pytest.raises(ValueError, match=r"X has missing or non-finite values in columns \['age10'\]"):
        fit(y, X.assign(age10=X["age10"].where(X.index != 4)), t, g)
    with pytest.raises(ValueError, match=r"groups has 1 missing"):
        fit(y, X, t, np.where(np.arange(len(g)) == 2, None, g))


def test_collinear_columns_are_named():
    df = simulate_cohort(n_subjects=100, seed=8)
    X = df[TERMS].assign(age_decades_copy=2.0 * df["age10"])
    with pytest.raises(ValueError, match=r"rank 10 of 11.*\['age10', 'age_decades_copy'\]"):
        RandomSlopeMixedModel().fit(df["y"], X, df["t"], df["subject"])
    X = df[TERMS].assign(site_1=1.0 - df["site_2"])
    with pytest.raises(ValueError, match=r"\['intercept', 'site_2', 'site_1'\] are linearly dependent"):
        RandomSlopeMixedModel().fit(df["y"], X, df["t"], df["subject"])
    with pytest.raises(ValueError, match=r"\['zero'\] are all zero"):
        RandomSlopeMixedModel().fit(df["y"], df[TERMS].assign(zero=0.0), df["t"], df["subject"])


def test_other_bad_inputs():
    df = simulate_cohort(n_subjects=100, seed=9)
    y, X, t, g = fit_args(df)
    with pytest.raises(ValueError, match="equal lengths"):
        RandomSlopeMixedModel().fit(y[:-1], X, t, g)
    with pytest.raises(ValueError, match="term_names"):
        RandomSlopeMixedModel().fit(y, X.to_numpy(), t, g, term_names=["a", "b"])
    with pytest.raises(ValueError, match="cov_type"):
        RandomSlopeMixedModel(cov_type="robust")
    single = df.groupby("subject").head(1)
    with pytest.raises(ValueError, match="two distinct times"):
        RandomSlopeMixedModel().fit(*fit_args(single))


def test_array_inputs_get_default_names():
    df = simulate_cohort(n_subjects=100, seed=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an interior fit issues no warning
        fit = RandomSlopeMixedModel().fit(df["y"].to_numpy(), df[TERMS].to_numpy(), df["t"].to_numpy(),
                                          df["subject"].to_numpy())
    assert list(fit.params_.index) == [f"x{j}" for j in range(len(TERMS))]
