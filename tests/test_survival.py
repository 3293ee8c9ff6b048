"""cohort.survival against lifelines, statsmodels and hand computations.

Fixtures are simulated here: subjects followed 6-60 months in 1-6 (start, stop] rows, with
exposure switching on and off between rows (and a dose while exposed), a time-varying lab
value, baseline age and diabetes, piecewise-exponential event times (rounded up to whole
months, so event times tie, unless `exact`), follow-up ending at the first event, and
per-subject weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cohort.survival import (
    AalenJohansen,
    CoxConvergenceError,
    TimeVaryingCox,
    incidence_rate,
    kaplan_meier,
)

COVARIATES = ["exposed", "dose", "lab", "age", "diabetes"]
BETA = np.array([0.5, 0.2, 0.4, -0.3, 0.25])
TIGHT = dict(precision=1e-13, r_precision=1e-14)  # lifelines CoxPHFitter run to full convergence


def counting_process(n_subj: int, seed: int, exact: bool = False, rate: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    follow = rng.integers(6, 61, n_subj)
    k = rng.integers(1, 7, n_subj)
    sid = np.repeat(np.arange(n_subj), k)
    pos = np.arange(len(sid)) - np.repeat(np.cumsum(k) - k, k)
    start = np.floor(follow[sid] * pos / k[sid])
    stop = np.floor(follow[sid] * (pos + 1) / k[sid])
    n = len(sid)
    exposed = rng.random(n) < 0.4
    X = np.column_stack([
        exposed,
        exposed * rng.gamma(2.0, 0.5, n),
        rng.normal(size=n),
        rng.normal(size=n_subj)[sid],
        (rng.random(n_subj) < 0.25)[sid],
    ]).astype(float)
    wait = rng.exponential(1 / (rate * np.exp(X @ BETA)))
    event = wait < stop - start
    stop = np.where(event, start + wait if exact else np.ceil(start + wait), stop)
    before = np.cumsum(event) - event
    first = np.cumsum(k) - k
    keep = (before - np.repeat(before[first], k)) == 0
    df = pd.DataFrame(X, columns=COVARIATES)
    df.insert(0, "id", sid)
    df.insert(1, "start", start)
    df.insert(2, "stop", stop)
    df.insert(3, "event", event.astype(int))
    df["w"] = rng.uniform(0.5, 2.0, n_subj)[sid]
    return df[keep].reset_index(drop=True)


def time_fixed(n: int, seed: int, tied: bool = False) -> pd.DataFrame:
    """One row per subject (start = 0), exact or whole-unit times, clinics for clustering."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    b = rng.integers(0, 2, n)
    T = rng.exponential(1 / (0.1 * np.exp(X @ [0.5, -0.3, 0.2] + 0.4 * b)))
    C = rng.exponential(10, n)
    if tied:
        T, C = np.ceil(T), np.ceil(C)
    df = pd.DataFrame(X, columns=["a", "b", "c"]).assign(d=b.astype(float))
    return df.assign(
        start=0.0, stop=np.minimum(T, C), event=(T <= C).astype(int),
        w=rng.uniform(0.3, 3.0, n), id=np.arange(n), clinic=rng.integers(0, 60, n),
    )


def lifelines_ctv(df, **kwargs):
    from lifelines import CoxTimeVaryingFitter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CoxTimeVaryingFitter().fit(df, event_col="event", start_col="start", stop_col="stop", **kwargs)


def assert_same_fit(ours, ref, tol=1e-6):
    np.testing.assert_allclose(ours.params_.values, ref.params_[ours.params_.index].values, rtol=0, atol=tol)
    np.testing.assert_allclose(
        ours.standard_errors_.values, ref.standard_errors_[ours.params_.index].values, rtol=0, atol=tol
    )
    assert abs(ours.log_likelihood_ - ref.log_likelihood_) < tol


# --------------------------------------------------------------------------- Cox, time-varying


@pytest.mark.parametrize(
    "n_subj, seed, exact, rate",
    [(1200, 1, False, 0.01), (1200, 2, True, 0.01), (800, 3, False, 0.03)],
    ids=["monthly-ties", "exact-times", "heavy-ties"],
)
def test_cox_matches_lifelines_time_varying(n_subj, seed, exact, rate):
    df = counting_process(n_subj, seed, exact=exact, rate=rate)
    assert df.id.duplicated().any() and (df.stop % 1 != 0).any() == exact
    cols = ["id", "start", "stop", "event", *COVARIATES]
    ours = TimeVaryingCox().fit(df[cols], "event", id_col="id")
    assert_same_fit(ours, lifelines_ctv(df[cols], id_col="id"))
    assert ours.n_subjects_ == df.id.nunique() and ours.n_events_ == df.event.sum()
    assert ours.converged_ and list(ours.summary.columns[:3]) == ["coef", "exp(coef)", "se(coef)"]


def test_cox_weighted_and_stratified_match_lifelines():
    df = counting_process(1200, 4)
    cols = ["id", "start", "stop", "event", *COVARIATES]
    ours = TimeVaryingCox().fit(df[cols + ["w"]], "event", id_col="id", weights_col="w")
    assert_same_fit(ours, lifelines_ctv(df[cols + ["w"]], id_col="id", weights_col="w"))
    ours = TimeVaryingCox().fit(df[cols], "event", id_col="id", strata="diabetes")
    assert_same_fit(ours, lifelines_ctv(df[cols], id_col="id", strata="diabetes"))


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_matches_statsmodels_phreg(ties):
    from statsmodels.duration.hazard_regression import PHReg

    df = counting_process(1200, 5)
    ours = TimeVaryingCox(ties=ties).fit(df, "event", covariates=COVARIATES)
    # PHReg counts a row at risk from `entry` inclusive; (start, stop] needs start + epsilon.
    ref = PHReg(df.stop, df[COVARIATES], status=df.event, entry=df.start + 1e-9, ties=ties).fit()
    np.testing.assert_allclose(ours.params_.values, ref.params, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.standard_errors_.values, ref.bse, atol=1e-6, rtol=0)
    assert abs(ours.log_likelihood_ - ref.llf) < 1e-6


@pytest.mark.parametrize("cluster", ["id", "clinic"])
def test_weighted_robust_matches_lifelines_coxph(cluster):
    from lifelines import CoxPHFitter

    df = time_fixed(800, 6)
    cov = ["a", "b", "c", "d"]
    ours = TimeVaryingCox().fit(df, "event", covariates=cov, weights_col="w", id_col="id", cluster_col=cluster, robust=True)
    ref = CoxPHFitter().fit(
        df[cov + ["stop", "event", "w", cluster]], "stop", "event",
        weights_col="w", robust=True, cluster_col=cluster, fit_options=TIGHT,
    )
    assert_same_fit(ours, ref)
    naive = TimeVaryingCox().fit(df, "event", covariates=cov, weights_col="w")
    assert not np.allclose(naive.standard_errors_, ours.standard_errors_, rtol=0.05)


def test_robust_on_counting_process_equals_one_row_per_subject():
    """Splitting a subject's follow-up into rows with unchanged covariates changes nothing,
    including the id-clustered sandwich variance (ties included)."""
    df = time_fixed(600, 7, tied=True)
    cut = np.floor(df.stop / 2)
    splittable = cut >= 1
    first = df[splittable].assign(stop=cut[splittable], event=0)
    long = pd.concat([first, df.assign(start=np.where(splittable, cut, 0.0))])
    assert len(long) > len(df)
    kw = dict(covariates=["a", "b", "c", "d"], weights_col="w", id_col="id", robust=True)
    one, many = TimeVaryingCox().fit(df, "event", **kw), TimeVaryingCox().fit(long, "event", **kw)
    np.testing.assert_allclose(many.params_, one.params_, atol=1e-10)
    np.testing.assert_allclose(many.standard_errors_, one.standard_errors_, atol=1e-10)


def test_row_order_does_not_matter():
    df = counting_process(800, 8)
    a = TimeVaryingCox().fit(df, "event", covariates=COVARIATES, weights_col="w", id_col="id", robust=True)
    b = TimeVaryingCox().fit(df.sample(frac=1, random_state=1), "event", covariates=COVARIATES,
                             weights_col="w", id_col="id", robust=True)
    np.testing.assert_allclose(b.summary.to_numpy(), a.summary.to_numpy(), rtol=1e-10)


def test_planted_log_hazard_ratios_recovered():
    model = TimeVaryingCox().fit(counting_process(20_000, 100, exact=True), "event", covariates=COVARIATES, id_col="id")
    ci = model.confidence_intervals_
    assert model.n_events_ > 2000
    assert ((ci.iloc[:, 0] < BETA) & (BETA < ci.iloc[:, 1])).all(), model.summary


def test_polars_input():
    pl = pytest.importorskip("polars")
    df = counting_process(300, 10)
    a = TimeVaryingCox().fit(df, "event", covariates=COVARIATES)
    b = TimeVaryingCox().fit(pl.from_pandas(df), "event", covariates=COVARIATES)
    np.testing.assert_allclose(b.params_, a.params_, rtol=1e-12)


@pytest.mark.parametrize("transform", ["rank", "km", "identity", "log"])
def test_proportional_hazard_test_matches_lifelines(transform):
    from lifelines import CoxPHFitter
    from lifelines.statistics import proportional_hazard_test

    df = time_fixed(800, 11)
    cov = ["a", "b", "c", "d"]
    ours = TimeVaryingCox().fit(df, "event", covariates=cov).proportional_hazard_test(transform)
    ref_model = CoxPHFitter().fit(df[cov + ["stop", "event"]], "stop", "event", fit_options=TIGHT)
    ref = proportional_hazard_test(ref_model, df[cov + ["stop", "event"]], time_transform=transform)
    np.testing.assert_allclose(ours.test_statistic.values, ref.test_statistic, rtol=1e-8)
    np.testing.assert_allclose(ours.p.values, ref.p_value, rtol=1e-8)


def test_proportional_hazard_test_km_with_ties_and_detects_violation():
    from lifelines import CoxPHFitter
    from lifelines.statistics import proportional_hazard_test

    df = time_fixed(1500, 12, tied=True)
    rng = np.random.default_rng(12)  # x raises the hazard until t = 3 and lowers it after
    x = rng.normal(size=len(df))
    early = rng.exponential(1 / (0.2 * np.exp(x)))
    late = 3 + rng.exponential(1 / (0.2 * np.exp(-x)))
    t = np.ceil(np.where(early < 3, early, late))
    df = df.assign(x=x, stop=np.minimum(t, 12.0), event=(t <= 12).astype(int))
    cov = ["x", "a"]
    ours = TimeVaryingCox().fit(df, "event", covariates=cov).proportional_hazard_test("km")
    ref_model = CoxPHFitter().fit(df[cov + ["stop", "event"]], "stop", "event", fit_options=TIGHT)
    ref = proportional_hazard_test(ref_model, df[cov + ["stop", "event"]], time_transform="km")
    np.testing.assert_allclose(ours.test_statistic.values, ref.test_statistic, rtol=1e-8)
    assert ours.loc["x", "p"] < 1e-6 and ours.loc["a", "p"] > 0.01


def test_singular_and_non_converging_inputs_raise_clear_errors():
    df = counting_process(600, 13)
    with pytest.raises(CoxConvergenceError, match="'age', 'age2' are collinear"):
        TimeVaryingCox().fit(df.assign(age2=2 * df.age + 1), "event", covariates=COVARIATES + ["age2"])
    with pytest.raises(CoxConvergenceError, match="'const' is constant over all rows"):
        TimeVaryingCox().fit(df.assign(const=3.0), "event", covariates=COVARIATES + ["const"])
    with pytest.raises(CoxConvergenceError, match="'diabetes' is constant within every stratum"):
        TimeVaryingCox().fit(df, "event", covariates=COVARIATES, strata="diabetes")
    never_exposed_at_event = df.assign(exposed=np.where(df.event == 1, 0.0, df.exposed))
    with pytest.raises(CoxConvergenceError, match="'exposed' equals 0 .* no variation among events"):
        TimeVaryingCox().fit(never_exposed_at_event, "event", covariates=["exposed", "age"])
    always_exposed_at_event = df.assign(exposed=np.where(df.event == 1, 1.0, df.exposed))
    with pytest.raises(CoxConvergenceError, match="'exposed' equals 1 .* no variation among events"):
        TimeVaryingCox().fit(always_exposed_at_event, "event", covariates=["exposed", "age"])
    with pytest.raises(ValueError, match="start < stop"):
        TimeVaryingCox().fit(df.assign(stop=df.start), "event", covariates=COVARIATES)


# --------------------------------------------------------------------------- Aalen-Johansen


def competing(n, seed, tied):
    rng = np.random.default_rng(seed)
    t = rng.exponential(5, n)
    return (np.ceil(t) if tied else t), rng.choice([0, 1, 2], n, p=[0.4, 0.35, 0.25]), rng.uniform(0.5, 2, n)


@pytest.mark.parametrize("weighted", [False, True])
def test_aalen_johansen_matches_lifelines_without_ties(weighted):
    from lifelines import AalenJohansenFitter

    t, e, w = competing(400, 20, tied=False)
    w = w if weighted else None
    ours = AalenJohansen().fit(t, e, cause=1, weights=w).cumulative_incidence_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = AalenJohansenFitter().fit(t, e, event_of_interest=1, weights=w)
    at = ours.time.to_numpy()
    np.testing.assert_allclose(ours.cif, ref.cumulative_density_.iloc[:, 0].loc[at], atol=1e-8, rtol=0)
    # lifelines' variance is NaN/unstable at the last time (n = d there); compare before it.
    np.testing.assert_allclose(ours.se[:-1], np.sqrt(ref.variance_.loc[at].to_numpy()[:-1]), atol=1e-8, rtol=0)
    ci = ref.confidence_interval_.loc[at].to_numpy()[:-1]
    started = ours.cif.to_numpy()[:-1] > 0
    np.testing.assert_allclose(ours.ci_low[:-1][started], ci.min(axis=1)[started], atol=1e-8, rtol=0)
    np.testing.assert_allclose(ours.ci_high[:-1][started], ci.max(axis=1)[started], atol=1e-8, rtol=0)


def test_aalen_johansen_ties_deterministic_and_consistent():
    t, e, w = competing(500, 21, tied=True)
    first = AalenJohansen().fit(t, e, cause=1, weights=w).cumulative_incidence_
    again = AalenJohansen().fit(t, e, cause=1, weights=w).cumulative_incidence_
    perm = np.random.default_rng(0).permutation(len(t))
    shuffled = AalenJohansen().fit(t[perm], e[perm], cause=1, weights=w[perm]).cumulative_incidence_
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(shuffled, first, check_exact=False, rtol=1e-12)
    # The cause-specific CIFs add up to one minus the all-cause Kaplan-Meier (unweighted here:
    # lifelines' weighted KM ignores an event that empties the risk set at the last time).
    cif1 = AalenJohansen().fit(t, e, cause=1).cumulative_incidence_
    cif2 = AalenJohansen().fit(t, e, cause=2).cumulative_incidence_
    km = kaplan_meier(t, e != 0).set_index("time").survival.loc[cif1.time]
    np.testing.assert_allclose(cif1.cif + cif2.cif, 1 - km.to_numpy(), atol=1e-12)


def test_aalen_johansen_hand_computed_with_tied_causes():
    # t=1: 6 at risk, one cause-1 and one cause-2 event: F = 1/6, S = 4/6.
    # t=2: 4 at risk, one cause-1 event (+1 censored): F = 1/6 + 4/6 * 1/4 = 1/3, S = 1/2.
    # t=3: 2 at risk, one cause-2 event: F = 1/3, S = 1/4.  t=4: 1 at risk, cause 1: F = 7/12.
    aj = AalenJohansen().fit([1, 1, 2, 2, 3, 4], [1, 2, 1, 0, 2, 1], cause=1)
    tab = aj.cumulative_incidence_
    np.testing.assert_allclose(tab.cif, [1 / 6, 1 / 3, 1 / 3, 7 / 12], atol=1e-15)
    np.testing.assert_array_equal(tab.at_risk, [6, 4, 2, 1])
    np.testing.assert_array_equal(tab[["events", "competing", "censored"]].to_numpy().T,
                                  [[1, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 0]])
    # Collett's variance at t=1: S0^2 c (n - c) / n^3 = 5/216.
    assert tab.se[0] == pytest.approx(np.sqrt(5 / 216), abs=1e-15)
    np.testing.assert_allclose(aj.predict([0.5, 1, 2.5, 10]), [0, 1 / 6, 1 / 3, 7 / 12])


# --------------------------------------------------------------------------- KM, rates


def test_kaplan_meier_hand_computed():
    km = kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(km.time, [0, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(km.survival, [1, 5 / 6, 2 / 3, 4 / 9, 4 / 9, 0], atol=1e-15)
    np.testing.assert_array_equal(km.at_risk, [6, 6, 5, 3, 2, 1])
    np.testing.assert_array_equal(km[["events", "censored"]].to_numpy().sum(axis=0), [4, 2])
    # Exponential Greenwood at t=2: v = sum d/(n(n-d)) / log(S)^2 on the log(-log S) scale.
    S, v = 2 / 3, (1 / 30 + 1 / 20) / np.log(2 / 3) ** 2
    z = stats.norm.ppf(0.975)
    lo, hi = np.exp(-np.exp(np.log(-np.log(S)) + z * np.sqrt(v))), np.exp(-np.exp(np.log(-np.log(S)) - z * np.sqrt(v)))
    assert km.ci_low[2] == pytest.approx(lo, abs=1e-12) and km.ci_high[2] == pytest.approx(hi, abs=1e-12)


def test_kaplan_meier_integer_weights_equal_replicated_rows():
    t, e = np.array([3.0, 1, 4, 1, 5, 9, 2, 6]), np.array([1, 0, 1, 1, 0, 1, 1, 0])
    w = np.array([2, 1, 3, 1, 2, 1, 1, 2])
    weighted = kaplan_meier(t, e, weights=w)
    replicated = kaplan_meier(np.repeat(t, w), np.repeat(e, w))
    np.testing.assert_allclose(weighted.drop(columns=["ci_low", "ci_high"]), replicated.drop(columns=["ci_low", "ci_high"]))


def test_incidence_rate_garwood():
    out = incidence_rate(3, 1500)
    assert out.rate.iloc[0] == pytest.approx(2.0)
    assert out.ci_low.iloc[0] == pytest.approx(stats.chi2.ppf(0.025, 6) / 2 / 1500 * 1000)
    assert out.ci_high.iloc[0] == pytest.approx(stats.chi2.ppf(0.975, 8) / 2 / 1500 * 1000)
    # Published exact Poisson limits for 3 events: 0.6187 - 8.7673.
    assert out.ci_low.iloc[0] * 1.5 == pytest.approx(0.6187, abs=1e-4)
    assert out.ci_high.iloc[0] * 1.5 == pytest.approx(8.7673, abs=1e-4)
    many = incidence_rate(pd.Series([0, 3], index=["none", "some"]), [100.0, 1500.0])
    assert list(many.index) == ["none", "some"]
    assert many.ci_low["none"] == 0 and many.ci_high["none"] == pytest.approx(-np.log(0.025) / 100 * 1000)
