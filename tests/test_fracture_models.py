"""cohort.fracture (and the models-stage assets) against hand computations, lifelines and planted truth.

Fixtures are cohort-shaped frames built here (cohort.members and analysis.fracture_intervals
columns): patients followed in (start_day, stop_day] rows that switch current AI, estradiol tier and
glucocorticoid use, with fractures and deaths drawn from piecewise-exponential hazards. The last
test runs the real pipeline on a generated delivery and checks the planted hazard ratios.
"""

from __future__ import annotations

import json
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cohort import fracture as F
from cohort.fracture import (
    DAYS_PER_YEAR,
    BalanceSummary,
    DiagnosticsGate,
    FractureModelSettings,
    PropensityScoreModel,
)

TIERS = np.array(["lt10", "10_20", "20_40", "ge40", "unknown"])
TIGHT = dict(precision=1e-13, r_precision=1e-14)


def simulate_cohort(
    n: int = 600,
    seed: int = 0,
    *,
    ai_from_start: bool = False,
    ai_logit=(-1.2, 0.0),
    beta: dict | None = None,
    rate_per_day: float = 1 / 2500,
    death_per_day: float = 1 / 5000,
    follow_up=(200, 1500),
    missing_share: float = 0.1,
    exact_times: bool = False,
):
    """(members, intervals) shaped like cohort.members / analysis.fracture_intervals.

    AI initiation: logit = ai_logit[0] + ai_logit[1] * (bmi - 28) (BMI confounds when beta has bmi).
    Initiators start on day 0 (`ai_from_start`) or later, and may stop. Event days are whole days
    (ties) unless `exact_times`. Fracture log-hazard:
    sum of beta[term] * term, terms named as in cohort.fracture.
    """
    beta = beta or {"ai_current": 0.4, "e2_lt10": 0.5, "e2_10_20": 0.2, "e2_ge40": -0.2,
                    "glucocorticoid_current": 0.5, "age_per_10y": 0.3, "bmi_per_5": -0.2,
                    "femoral_neck_sbmd_per_0_1": -0.3}
    rng = np.random.default_rng(seed)
    age = rng.integers(40, 86, n)
    bmi = np.clip(rng.normal(29, 5, n), 17, 55)
    sbmd = rng.normal(0.8, 0.12, n)
    e2 = np.exp(rng.normal(np.log(26), 0.35, n))
    logit = ai_logit[0] + ai_logit[1] * (bmi - 28)
    initiator = rng.random(n) < 1 / (1 + np.exp(-logit))
    follow = rng.integers(*follow_up, n)
    ai_start = np.where(ai_from_start, 0, rng.integers(0, 700, n))
    ai_stop = ai_start + rng.integers(100, 2000, n)
    fixed = (beta.get("age_per_10y", 0) * (age - 65) / 10 + beta.get("bmi_per_5", 0) * (bmi - 28) / 5
             + beta.get("femoral_neck_sbmd_per_0_1", 0) * (sbmd - 0.8) / 0.1)
    rows = []
    for i in range(n):
        cuts = {0, int(follow[i])}
        cuts |= set(rng.integers(1, follow[i], rng.integers(0, 4)).tolist())
        if initiator[i]:
            cuts |= {int(c) for c in (ai_start[i], ai_stop[i]) if 0 < c < follow[i]}
        cuts = sorted(cuts)
        for a, b in zip(cuts[:-1], cuts[1:]):
            on_ai = bool(initiator[i] and ai_start[i] <= a < ai_stop[i])
            ever = bool(initiator[i] and a >= ai_start[i])
            tier = TIERS[rng.choice(5, p=[0.3, 0.25, 0.3, 0.1, 0.05])] if on_ai else \
                TIERS[rng.choice(5, p=[0.05, 0.25, 0.45, 0.15, 0.1])]
            gc = bool(rng.random() < 0.08)
            lp = (fixed[i] + beta.get("ai_current", 0) * on_ai + beta.get("ai_ever", 0) * ever
                  + beta.get("glucocorticoid_current", 0) * gc + beta.get(f"e2_{tier}", 0))
            rows.append((i, a, b, on_ai, ever, tier, gc, lp))
    iv = pd.DataFrame(rows, columns=["i", "start_day", "stop_day", "ai_current", "ai_ever", "e2_tier",
                                     "glucocorticoid_current", "lp"])
    length = (iv.stop_day - iv.start_day).to_numpy()
    t_fx = rng.exponential(1 / (rate_per_day * np.exp(iv.lp.to_numpy())))
    t_dd = rng.exponential(1 / death_per_day, len(iv))
    hit = np.minimum(t_fx, t_dd) < length
    kind = np.where(t_fx <= t_dd, "fracture", "death")
    iv["event"] = "censored"
    iv.loc[hit, "event"] = kind[hit]
    wait = np.minimum(t_fx, t_dd)[hit]
    iv["stop_day"] = iv.stop_day.astype(float)
    iv.loc[hit, "stop_day"] = iv.start_day[hit] + (wait if exact_times else np.maximum(np.ceil(wait), 1))
    # keep rows up to and including each patient's first event
    first_event = iv[hit].groupby("i").cumcount() == 0
    cut_at = iv[hit][first_event.to_numpy()].groupby("i")["start_day"].min()
    iv = iv[iv.start_day <= iv.i.map(cut_at).fillna(np.inf)].reset_index(drop=True)
    iv["e2_tier_lcms"] = np.where(rng.random(len(iv)) < 0.8, iv.e2_tier, "unknown")
    iv["ai_drug"] = np.where(iv.ai_current, "anastrozole", None)
    iv["ai_dose_mg"] = np.where(iv.ai_current, 1.0, np.nan)
    iv["source_site"] = np.where(iv.i % 2 == 0, "site_a", "site_b")
    iv["patient_key"] = [f"P{i:07d}" for i in iv.i]
    last = iv.groupby("i").tail(1).set_index("i")

    keys = [f"P{i:07d}" for i in range(n)]
    miss = rng.random(n) < missing_share
    members = pd.DataFrame({
        "source_site": np.where(np.arange(n) % 2 == 0, "site_a", "site_b"),
        "patient_key": keys,
        "age_at_index": age,
        "bmi": bmi,
        "vitamin_d_ng_ml": np.where(rng.random(n) < missing_share, np.nan, rng.normal(30, 8, n)),
        "testosterone_ng_dl": rng.normal(500, 150, n),
        "estradiol_pg_ml": np.where(rng.random(n) < missing_share, np.nan, e2),
        "glucocorticoid_at_index": rng.random(n) < 0.05,
        "scanner_manufacturer": np.where(miss, None, np.where(rng.random(n) < 0.6, "Hologic", "GE Lunar")),
        "sbmd_femoral_neck": np.where(miss, np.nan, sbmd),
        "e2_tier_at_index": np.select([e2 < 10, e2 < 20, e2 < 40], ["lt10", "10_20", "20_40"], "ge40"),
        "ai_ever": [bool(initiator[i] and ai_start[i] < last.stop_day[i]) for i in range(n)],
        "follow_up_days": last.stop_day.to_numpy(),
        "follow_up_end_reason": np.where(last.event == "censored", "end_of_enrollment", last.event),
    })
    columns = ["source_site", "patient_key", "start_day", "stop_day", "ai_current", "ai_ever", "ai_drug",
               "ai_dose_mg", "e2_tier", "e2_tier_lcms", "glucocorticoid_current", "event"]
    return members, iv[columns]


def lifelines_reference(members, intervals, terms, outcome="fracture", e2_column="e2_tier"):
    """The same model built independently: pandas merge, dummies, complete cases, no row merging,
    then lifelines' CoxTimeVaryingFitter."""
    from lifelines import CoxTimeVaryingFitter

    df = intervals.merge(members, on=["source_site", "patient_key"], how="left")
    out = pd.DataFrame({"id": df.source_site + "/" + df.patient_key, "start": df.start_day,
                        "stop": df.stop_day, "event": (df.event == outcome).astype(int)})
    for term in terms:
        if term.startswith("e2_"):
            out[term] = (df[e2_column] == term[3:]).astype(float)
        elif term == "age_per_10y":
            out[term] = (df.age_at_index - 65) / 10
        elif term == "bmi_per_5":
            out[term] = (df.bmi - 28) / 5
        elif term == "femoral_neck_sbmd_per_0_1":
            out[term] = (df.sbmd_femoral_neck - 0.8) / 0.1
        else:
            out[term] = df[term].astype(float)
    out = out.dropna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CoxTimeVaryingFitter().fit(out, event_col="event", start_col="start", stop_col="stop", id_col="id"), out


# ------------------------------------------------------------------------------ descriptive


def test_kaplan_meier_by_group_hand_computed_with_numbers_at_risk():
    days = [100, 200, 200, 300, 150, 400]
    members = pd.DataFrame({
        "ai_ever": [True, True, True, True, False, False],
        "follow_up_days": days,
        "follow_up_end_reason": ["fracture", "fracture", "death", "fracture", "end_of_enrollment", "fracture"],
    })
    km = F.kaplan_meier_by_group(members, "ai_ever", "ai_ever", F.AI_EVER_GROUPS)
    ai = km[km.group_label == "AI during follow-up"]
    # n=4: fracture at 100 (S=3/4), fracture + death (censored) at 200 (S=3/4*2/3=1/2), fracture at 300 (S=0)
    assert ai.time_years.tolist() == pytest.approx([0, 100 / DAYS_PER_YEAR, 200 / DAYS_PER_YEAR, 300 / DAYS_PER_YEAR])
    assert ai.at_risk.tolist() == [4, 4, 3, 1]
    assert ai.events.tolist() == [0, 1, 1, 1] and ai.censored.tolist() == [0, 0, 1, 0]
    assert ai.survival.tolist() == pytest.approx([1, 0.75, 0.5, 0.0], abs=1e-12)
    no = km[km.group_label == "No AI"]
    assert no.survival.tolist() == pytest.approx([1, 1, 0.0], abs=1e-12)
    assert list(km.columns) == F.KM_COLUMNS and set(km.curve) == {"ai_ever"}

    at_risk = F.numbers_at_risk(km, [0, 150 / DAYS_PER_YEAR, 250 / DAYS_PER_YEAR, 1.0, 2.0])
    row = at_risk.set_index("group_label").loc["AI during follow-up"].tolist()
    assert row == [4, 3, 1, 0, 0]
    assert at_risk.set_index("group_label").loc["No AI"].tolist() == [2, 2, 1, 1, 0]


def test_cumulative_incidence_hand_computed_ties_and_reproducible():
    # t=1: fracture and death tie (n=5): F = 1/5, S = 3/5; t=2 censored; t=3 fracture (n=2):
    # F = 1/5 + 3/5 * 1/2 = 1/2; t=4 death: F unchanged.
    members = pd.DataFrame({
        "group": ["a"] * 5,
        "follow_up_days": [365, 365, 730, 1095, 1461],
        "follow_up_end_reason": ["fracture", "death", "data_cutoff", "fracture", "death"],
    })
    cif = F.cumulative_incidence_by_group(members, "g", "group", {"a": "All follow-up"})
    assert cif.cif.tolist() == pytest.approx([0, 0.2, 0.2, 0.5, 0.5], abs=1e-12)
    assert cif.at_risk.tolist() == [5, 5, 3, 2, 1]
    assert cif.competing.tolist() == [0, 1, 0, 0, 1] and cif.events.tolist() == [0, 1, 0, 1, 0]
    again = F.cumulative_incidence_by_group(members.sample(frac=1, random_state=3), "g", "group", {"a": "All follow-up"})
    pd.testing.assert_frame_equal(cif, again)
    # 1 - KM (deaths censored) overstates it: 1 - (4/5)(1/2) = 0.6 at t = 3
    km = F.kaplan_meier_by_group(members, "g", "group", {"a": "All follow-up"})
    assert 1 - km.survival.iloc[-1] == pytest.approx(0.6)


def test_incidence_rates_hand_computed_garwood():
    # current AI: 4 person-years (1461 days) with 2 fractures; not on AI: 1 person-year, no fracture.
    intervals = pd.DataFrame({
        "start_day": [0, 730, 0, 0],
        "stop_day": [730, 1095, 366, 365],
        "ai_current": [True, True, True, False],
        "e2_tier": ["lt10", "lt10", "20_40", "20_40"],
        "event": ["censored", "fracture", "fracture", "censored"],
    })
    rates = F.incidence_rates_by_exposure(intervals, {"ai_current": F.AI_CURRENT_GROUPS, "e2_tier": F.E2_TIER_GROUPS})
    on = rates[(rates.exposure == "ai_current") & (rates.level == "true")].iloc[0]
    assert on.events == 2 and on.person_years == pytest.approx(4.0)
    assert on.rate_per_1000py == pytest.approx(500.0)
    # Garwood limits for k = 2: 0.24221 and 7.22471 events
    assert on.ci_low == pytest.approx(0.242209 / 4 * 1000, rel=1e-5)
    assert on.ci_high == pytest.approx(7.224688 / 4 * 1000, rel=1e-5)
    off = rates[(rates.exposure == "ai_current") & (rates.level == "false")].iloc[0]
    assert off.events == 0 and off.ci_low == 0 and off.ci_high == pytest.approx(3.688879 / (365 / DAYS_PER_YEAR) * 1000, rel=1e-5)
    overall = rates[rates.exposure == "overall"].iloc[0]
    assert overall.events == 2 and overall.person_years == pytest.approx(1826 / DAYS_PER_YEAR)
    assert set(rates[rates.exposure == "e2_tier"].level) == {"lt10", "20_40"}  # no person-time: no row
    # pre-aggregated person-time (what the asset passes) gives the same rows
    aggregated = intervals.assign(person_days=intervals.stop_day - intervals.start_day,
                                  events=(intervals.event == "fracture").astype(int))
    again = F.incidence_rates_by_exposure(aggregated.drop(columns=["start_day", "stop_day", "event"]),
                                          {"ai_current": F.AI_CURRENT_GROUPS, "e2_tier": F.E2_TIER_GROUPS})
    pd.testing.assert_frame_equal(rates, again)


# ------------------------------------------------------------------------------ propensity and balance


def test_balance_table_hand_computed():
    X = pd.DataFrame({"x": [1.0, 2.0, 3.0, 2.0, 4.0]})
    treated = np.array([True, True, True, False, False])
    w = np.array([1, 1, 2, 1, 3], dtype=float)
    table = F.balance_table(X, treated, w, threshold=0.1, labels={"x": "X"})
    row = table.iloc[0]
    sd = np.sqrt((1.0 + 2.0) / 2)  # sample variances 1 (treated) and 2 (control)
    assert row.mean_treated_before == 2 and row.mean_control_before == 3
    assert row.smd_before == pytest.approx(-1 / sd)
    assert row.mean_treated_after == pytest.approx(2.25) and row.mean_control_after == pytest.approx(3.5)
    assert row.smd_after == pytest.approx(-1.25 / sd)  # same (unweighted) denominator
    assert row.imbalanced_before and row.imbalanced_after and row.covariate_label == "X"


def test_weights_preference_score_equipoise_and_c_statistic_by_hand():
    ps = np.array([0.1, 0.4, 0.35, 0.8, 0.5])
    t = np.array([False, False, True, True, True])
    w, raw, bounds = F.stabilized_weights(ps, t, None)
    p = 0.6
    assert raw == pytest.approx([0.4 / 0.9, 0.4 / 0.6, p / 0.35, p / 0.8, p / 0.5]) and bounds is None
    w, raw, bounds = F.stabilized_weights(ps, t, (20, 80))
    low, high = np.percentile(raw, [20, 80])
    assert bounds == {"overall": (low, high)} and w == pytest.approx(np.clip(raw, low, high))
    w, _, bounds = F.stabilized_weights(ps, t, (0, 50), scope="group")
    assert w[~t] == pytest.approx([raw[0], np.median(raw[~t])]) and set(bounds) == {"treated", "control"}
    pref = F.preference_score(ps, p)
    assert pref[4] == pytest.approx(1 / (1 + np.exp(-(np.log(1) - np.log(1.5)))))
    assert F.preference_score(np.array([0.6]), 0.6)[0] == pytest.approx(0.5)
    assert F.c_statistic(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)


def test_baseline_design_imputes_medians_and_flags_missing():
    members, _ = simulate_cohort(300, 1)
    design = F.baseline_design(members)
    fn = members.sbmd_femoral_neck
    assert design.imputed["sbmd_femoral_neck"] == {"median": float(fn.median()), "missing": int(fn.isna().sum())}
    assert (design.X.loc[fn.isna(), "sbmd_femoral_neck"] == fn.median()).all()
    assert (design.X["sbmd_femoral_neck_missing"] == fn.isna()).all()
    assert "testosterone_ng_dl_missing" not in design.X  # nothing missing: no indicator
    assert design.dropped["e2_tier_at_index=20_40"] == "reference level"
    # no scan <=> no sBMD here: the 'none' scanner level repeats the missing indicator
    assert design.dropped["scanner_manufacturer=none"] == "collinear with other covariates"
    assert design.labels["scanner_manufacturer=none"] == "Baseline DXA scanner: none (no baseline scan)"
    assert not set(design.fit_columns) & set(design.dropped)


def test_propensity_model_matches_statsmodels_on_unstandardized_design():
    import statsmodels.api as sm

    members, _ = simulate_cohort(800, 2, ai_logit=(-1.0, 0.15))
    model = PropensityScoreModel(truncation_percentiles=None).fit(members)
    X = sm.add_constant(model.design_.X[model.design_.fit_columns].to_numpy(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sm.Logit(members.ai_ever.astype(float).to_numpy(), X).fit(method="bfgs", maxiter=5000, gtol=1e-10,
                                                                         disp=False)
    # 1e-5: a few quasi-separated members (e.g. estradiol missing with a known tier) have PS -> 0 along
    # a direction where the two optimizers stop at slightly different points; all others agree to 1e-8.
    np.testing.assert_allclose(model.propensity_scores_, ref.predict(X), atol=1e-5)
    assert np.median(np.abs(model.propensity_scores_ - ref.predict(X))) < 1e-8
    assert model.fit_method_ == "logit"
    assert model.c_statistic_ == pytest.approx(F.c_statistic(ref.predict(X), members.ai_ever.to_numpy(bool)))
    scores = model.scores()
    assert list(scores.columns) == ["treated", "propensity_score", "preference_score", "iptw_untruncated", "iptw"]
    assert model.summary["n_treated"] == members.ai_ever.sum()


def test_propensity_model_falls_back_to_ridge_on_separation():
    members, _ = simulate_cohort(200, 3)
    members = members.assign(ai_ever=members.source_site == "site_a")  # site predicts AI perfectly
    model = PropensityScoreModel().fit(members)
    assert model.fit_method_.startswith("ridge")
    assert np.isfinite(model.weights_).all() and model.equipoise_ < 0.2


# ------------------------------------------------------------------------------ Cox models vs lifelines


def assert_matches_lifelines(result, ref, tol=1e-6):
    est = result.estimates.loc[list(ref.params_.index)]
    np.testing.assert_allclose(est.log_hr, ref.params_, atol=tol, rtol=0)
    np.testing.assert_allclose(est.se, ref.standard_errors_, atol=tol, rtol=0)
    np.testing.assert_allclose(est.p_value, ref.summary["p"], atol=tol, rtol=0)
    np.testing.assert_allclose(np.log(est.ci_low), ref.confidence_intervals_.iloc[:, 0], atol=tol, rtol=0)
    np.testing.assert_allclose(np.log(est.ci_high), ref.confidence_intervals_.iloc[:, 1], atol=tol, rtol=0)
    return float(np.max(np.abs(est.log_hr - ref.params_)))


@pytest.mark.parametrize("outcome", ["fracture", "death"])
def test_time_varying_adjusted_cox_matches_lifelines(outcome):
    members, intervals = simulate_cohort(700, 4)
    result = F.fit_time_varying_cox(intervals, members, outcome=outcome,
                                    model="time_varying_adjusted" if outcome == "fracture" else "death_cause_specific")
    ref, data = lifelines_reference(members, intervals, F.ADJUSTED_TERMS, outcome=outcome)
    assert_matches_lifelines(result, ref)
    assert result.n_events == data.event.sum() and result.n_patients == data.id.nunique()
    assert result.n_patients_excluded == members.sbmd_femoral_neck.isna().sum()
    assert result.terms == list(F.ADJUSTED_TERMS) and result.adjustment == "regression"
    assert result.se_type == "model-based"


def test_lcms_tier_and_collapsed_rows_change_nothing():
    members, intervals = simulate_cohort(500, 5)
    frame = F.counting_process_frame(intervals, members, F.ADJUSTED_TERMS, e2_column="e2_tier_lcms")
    assert len(frame.data) < frame.n_rows_input  # rows split by drug/dose/other tier were merged
    result = F.fit_cox(frame, "time_varying_adjusted_lcms", ph_time_transforms=("km", "rank"))
    ref, _ = lifelines_reference(members, intervals, F.ADJUSTED_TERMS, e2_column="e2_tier_lcms")
    assert_matches_lifelines(result, ref)
    # PH tests kept with the result, one per term and transform
    assert set(result.ph_tests.time_transform) == {"km", "rank"}
    assert len(result.ph_tests) == 2 * len(F.ADJUSTED_TERMS) and result.ph_tests.p_value.between(0, 1).all()


def test_iptw_itt_cox_matches_lifelines_weighted_robust():
    """AI from day 0 for initiators: the ITT rows collapse to one per patient, where lifelines'
    CoxPHFitter gives the weighted robust (sandwich, clustered) reference. Untied event times:
    with ties lifelines' score residuals are not Efron-adjusted (ours are, as R's coxph)."""
    from lifelines import CoxPHFitter

    members, intervals = simulate_cohort(900, 6, ai_from_start=True, ai_logit=(-1.0, 0.12), exact_times=True)
    ps = PropensityScoreModel().fit(members)
    result = F.fit_iptw_cox(intervals, members, ps.weights_)
    last = intervals.groupby(["source_site", "patient_key"]).tail(1)
    per_patient = members.assign(w=ps.weights_).merge(last, on=["source_site", "patient_key"], suffixes=("", "_i"))
    df = pd.DataFrame({"t": per_patient.stop_day, "e": (per_patient.event == "fracture").astype(int),
                       "ai_ever": per_patient.ai_ever.astype(float), "w": per_patient.w,
                       "id": np.arange(len(per_patient))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CoxPHFitter().fit(df, "t", "e", weights_col="w", robust=True, cluster_col="id", fit_options=TIGHT)
    est = result.estimates.loc["ai_ever"]
    assert est.log_hr == pytest.approx(ref.params_["ai_ever"], abs=1e-6)
    assert est.se == pytest.approx(ref.standard_errors_["ai_ever"], abs=1e-6)
    assert result.adjustment == "iptw" and result.se_type.startswith("robust")


def test_itt_from_initiation_matches_lifelines_time_varying():
    """AI started during follow-up: time before initiation is unexposed (no immortal time)."""
    from lifelines import CoxTimeVaryingFitter

    members, intervals = simulate_cohort(700, 7, beta={"ai_ever": 0.5})
    crude = F.fit_iptw_cox(intervals, members, None, model="crude_itt")
    df = pd.DataFrame({"id": intervals.patient_key, "start": intervals.start_day, "stop": intervals.stop_day,
                       "event": (intervals.event == "fracture").astype(int), "ai_ever": intervals.ai_ever.astype(float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CoxTimeVaryingFitter().fit(df, event_col="event", start_col="start", stop_col="stop", id_col="id")
    assert_matches_lifelines(crude, ref)
    assert crude.adjustment == "none"
    # weighted: same point estimate as lifelines' weighted fit (lifelines has no robust SE here)
    w = np.random.default_rng(1).uniform(0.5, 2, len(members))
    weighted = F.fit_iptw_cox(intervals, members, w)
    wdf = df.assign(w=intervals.patient_key.map(dict(zip(members.patient_key, w))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wref = CoxTimeVaryingFitter().fit(wdf, event_col="event", start_col="start", stop_col="stop", id_col="id",
                                          weights_col="w")
    assert weighted.estimates.loc["ai_ever", "log_hr"] == pytest.approx(wref.params_["ai_ever"], abs=1e-6)


def test_term_without_exposed_events_is_dropped_at_its_limit():
    """No fracture during glucocorticoid use: that HR's MLE is 0 (monotone likelihood). The term is
    reported as not estimable and the other terms take their limiting estimates (fit without the
    exposed rows), instead of the whole model failing."""
    members, intervals = simulate_cohort(700, 12)
    exposed_event = intervals.glucocorticoid_current & (intervals.event == "fracture")
    intervals = intervals.assign(glucocorticoid_current=intervals.glucocorticoid_current & ~exposed_event)
    result = F.fit_time_varying_cox(intervals, members)
    assert result.estimable and set(result.dropped) == {"glucocorticoid_current"}
    assert "no events while exposed" in result.dropped["glucocorticoid_current"]
    terms = [t for t in F.ADJUSTED_TERMS if t != "glucocorticoid_current"]
    ref, _ = lifelines_reference(members, intervals[~intervals.glucocorticoid_current], terms)
    assert_matches_lifelines(result, ref)
    table = F.fracture_cox_table([result], None).set_index("term")
    gc = table.loc["glucocorticoid_current"]
    assert not gc.estimable and not gc.diagnostics_passed and np.isnan(gc.hazard_ratio)
    assert table.loc["age_per_10y", "estimable"]


def test_not_estimable_model_is_reported_not_raised():
    members, intervals = simulate_cohort(60, 8, rate_per_day=1e-7)
    intervals = intervals.assign(event=intervals.event.replace("fracture", "censored"))
    result = F.fit_time_varying_cox(intervals, members)
    assert not result.estimable and "no fracture events" in result.error
    table = F.fracture_cox_table([result], None)
    assert (~table.diagnostics_passed).all() and table.hazard_ratio.isna().all()
    assert table.diagnostics_notes.str.contains("not estimable").all()


# ------------------------------------------------------------------------------ confounding and the gate


def confounded_cohort(seed=10, n=20000):
    """Strong confounding by BMI: heavier men start AIs more often and fracture less. Exposure is
    fixed from day 0, follow-up short (cumulative incidence ~6%), so the marginal HR ~ the planted 1.5."""
    return simulate_cohort(
        n, seed, ai_from_start=True, ai_logit=(-1.0, 0.2), follow_up=(300, 1100),
        beta={"ai_ever": np.log(1.5), "bmi_per_5": np.log(0.55)}, rate_per_day=1 / 12000, missing_share=0.05,
    )


@pytest.fixture(scope="module")
def confounded():
    members, intervals = confounded_cohort()
    return members, intervals


def test_weighting_removes_planted_confounding(confounded):
    members, intervals = confounded
    truth = np.log(1.5)
    crude = F.fit_iptw_cox(intervals, members, None, model="crude_itt").estimates.loc["ai_ever"]
    ps = PropensityScoreModel(truncation_percentiles=None).fit(members)
    weighted = F.fit_iptw_cox(intervals, members, ps.weights_).estimates.loc["ai_ever"]
    assert not np.log(crude.ci_low) <= truth <= np.log(crude.ci_high)  # crude: confounded
    assert np.log(weighted.ci_low) <= truth <= np.log(weighted.ci_high)  # weighted: recovered
    assert abs(weighted.log_hr - truth) < 0.25 * abs(crude.log_hr - truth)
    balance = F.balance_table(ps.design_, ps.treated_, ps.weights_).set_index("covariate")
    assert abs(balance.loc["bmi", "smd_before"]) > 0.5 and abs(balance.loc["bmi", "smd_after"]) < 0.05
    assert not balance.imbalanced_after.any()
    # default truncation (1st/99th percentile) still removes most of the bias
    default = F.fit_iptw_cox(intervals, members, PropensityScoreModel().fit(members).weights_).estimates.loc["ai_ever"]
    assert abs(default.log_hr - truth) < 0.5 * abs(crude.log_hr - truth)


def test_diagnostics_gate_flags_unbalanced_fixture(confounded):
    members, intervals = confounded
    settings = FractureModelSettings(truncation_percentiles=(10, 90))  # heavy truncation: balance lost
    ps = PropensityScoreModel.from_settings(settings).fit(members)
    balance = F.balance_table(ps.design_, ps.treated_, ps.weights_, settings.smd_threshold)
    assert balance.imbalanced_after.any()
    summary = BalanceSummary.from_results(balance, ps.equipoise_)
    results = [F.fit_iptw_cox(intervals, members, ps.weights_), F.fit_iptw_cox(intervals, members, None, model="crude_itt"),
               F.fit_time_varying_cox(intervals, members)]
    table = F.fracture_cox_table(results, summary, settings).set_index(["model", "term"])
    iptw = table.loc[("iptw_itt", "ai_ever")]
    assert not iptw.diagnostics_passed and "imbalance after weighting" in iptw.diagnostics_notes
    assert iptw.max_abs_smd == pytest.approx(summary.max_abs_smd_after) and iptw.max_abs_smd > 0.1
    crude = table.loc[("crude_itt", "ai_ever")]
    assert not crude.diagnostics_passed and "imbalance (unweighted)" in crude.diagnostics_notes
    # the regression-adjusted model is not judged on balance; its other terms pass
    adjusted = table.loc["time_varying_adjusted"]
    assert adjusted.loc["age_per_10y", "diagnostics_passed"] and adjusted.loc["bmi_per_5", "diagnostics_passed"]
    # the same data with untruncated weights pass the balance check
    good = PropensityScoreModel(truncation_percentiles=None).fit(members)
    ok = F.balance_table(good.design_, good.treated_, good.weights_)
    passed = F.fracture_cox_table([F.fit_iptw_cox(intervals, members, good.weights_)],
                                  BalanceSummary.from_results(ok, good.equipoise_)).iloc[0]
    assert passed.diagnostics_passed, passed.diagnostics_notes


def test_diagnostics_gate_events_equipoise_and_mdrr():
    members, intervals = simulate_cohort(150, 11, rate_per_day=1 / 40000)
    result = F.fit_time_varying_cox(intervals, members)
    assert 0 < result.n_events < 10
    gate = DiagnosticsGate(FractureModelSettings(min_events=10))
    poor = BalanceSummary(0.5, 0.05, "bmi", "bmi", equipoise=0.1)
    rows = gate.evaluate(result, poor).set_index("term")
    assert not rows.diagnostics_passed.any()
    assert "fewer than 10 events in the model" in rows.loc["age_per_10y", "diagnostics_notes"]
    ai = rows.loc["ai_current", "diagnostics_notes"]
    assert "equipoise 0.10 < 0.2" in ai and "MDRR" in ai and "events while exposed" in ai
    assert "imbalance" not in ai  # regression-adjusted: balance not judged
    # MDRR as CohortMethod's computeMdrr: exp(sqrt((z_0.975 + z_0.8)^2 / (D p (1 - p))))
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert F.minimum_detectable_relative_risk(100, 0.25) == pytest.approx(np.exp(np.sqrt(z**2 / (100 * 0.25 * 0.75))))
    with pytest.raises(ValueError):
        FractureModelSettings(truncation_percentiles=(99, 1))


# ------------------------------------------------------------------------------ the assets' pure parts


def test_intervals_from_codes_builds_categoricals_and_fills_nulls():
    codes = {
        "patient_id": np.array([0, 0, 1]), "start_day": np.array([0, 30, 0]), "stop_day": np.array([30, 90, 45]),
        "ai_current": np.ma.array([False, True, True], mask=[False, False, True]),
        "ai_ever": np.array([False, True, False]), "glucocorticoid_current": np.array([False, False, True]),
        "e2_code": np.ma.array([0, 2, 0], mask=[False, False, True], dtype=np.int8),
        "e2_lcms_code": np.array([4, 3, 1], dtype=np.int8),
        "event_code": np.ma.array([0, 1, 2], mask=[False, False, True], dtype=np.int8),
    }
    frame = F.intervals_from_codes(codes)
    assert frame["e2_tier"].tolist() == ["lt10", "20_40", "unknown"]  # NULL tier: unknown
    assert frame["e2_tier_lcms"].tolist() == ["unknown", "ge40", "10_20"]
    assert frame["event"].tolist() == ["censored", "fracture", "censored"]  # NULL event: censored
    assert frame["ai_current"].tolist() == [False, True, False] and frame["ai_current"].dtype == bool
    assert F.EVENT_ORDER == ["censored", "fracture", "death"]
    # what counting_process_frame makes of them equals what it makes of the same rows as strings
    members = pd.DataFrame({"patient_id": [0, 1], "age_at_index": [60.0, 70.0], "bmi": [27.0, 31.0],
                            "sbmd_femoral_neck": [0.8, 0.7]})
    as_strings = frame.assign(e2_tier=frame["e2_tier"].astype(str), event=frame["event"].astype(str))
    a = F.counting_process_frame(frame, members, F.ADJUSTED_TERMS, id_columns=["patient_id"])
    b = F.counting_process_frame(as_strings, members, F.ADJUSTED_TERMS, id_columns=["patient_id"])
    pd.testing.assert_frame_equal(a.data, b.data)


def test_fracture_settings_come_from_the_protocol():
    from cohort.protocol import load_protocol

    protocol = load_protocol()
    settings = FractureModelSettings.from_protocol(protocol)
    section = protocol.fracture_models
    assert settings.truncation_percentiles == tuple(section.truncation_percentiles)
    assert settings.equipoise_bounds == tuple(section.equipoise_bounds)
    assert (settings.min_events, settings.ph_time_transform) == (section.min_events, section.ph_time_transform)
    changed = protocol.model_copy(update={"fracture_models": section.model_copy(update={"min_events": 25})})
    assert FractureModelSettings.from_protocol(changed).min_events == 25


def test_counts_in_estimator_messages_are_suppressed_in_metadata_text():
    from assets.models import _suppress_counts_in_text

    shown = _suppress_counts_in_text(
        "not estimable (covariate 'e2_unknown' equals 1 for all 3 events); fewer than 10 events while exposed; "
        "MDRR 18 > 10; lumbar_spine (8 patients, 1,250 scans); 11 patients; 0 events", 11)
    assert "all <11 events" in shown and "(<11 patients, 1,250 scans)" in shown
    assert "fewer than 10 events" in shown and "MDRR 18 > 10" in shown and "equals 1 for" in shown
    assert "; 11 patients; 0 events" in shown


def test_code_location_imports_no_estimator_or_plotting_library():
    """Dagster loads the code location by importing it: the models stage must not pull in scipy, pandas,
    matplotlib, statsmodels or lifelines at import time (they cost seconds)."""
    import subprocess
    import sys

    heavy = ("scipy", "pandas", "matplotlib", "statsmodels", "lifelines")
    code = f"import sys, assets.models; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).parents[1])).stdout
    assert out.strip() == "[]", out


# ------------------------------------------------------------------------------ the real pipeline


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    """A generated delivery with planted effects through the real pipeline: the jobs `cohort run`
    uses (ingest and validation per delivery, then the quarterly job's cohort and models stages, as
    pipelines.headless.run_pipeline runs them), stopping before the report (test_pipeline_end_to_end
    covers it) to keep this under a minute."""
    import dagster as dg

    from cohort.generator import generate
    from cohort.settings import Settings
    from pipelines.definitions import build_definitions
    from pipelines.headless import QUIET, _failure_message, _stage_keys
    from pipelines.partitions import delivery_partitions, quarter_key
    from pipelines.resources import build_resources

    root = tmp_path_factory.mktemp("generated")
    settings = Settings(landing_dir=root / "landing", duckdb_path=root / "warehouse.duckdb", reports_dir=root / "reports")
    truth = generate(settings.landing_dir, patients=5000, sites=1, quarters=1, seed=2024)
    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(build_resources(settings))
    lines: list[str] = []
    for delivery, info in truth["deliveries"].items():
        instance.add_dynamic_partitions(delivery_partitions.name, [delivery])
        result = defs.resolve_job_def("ingest_new_deliveries").execute_in_process(
            run_config=QUIET, partition_key=delivery, instance=instance, raise_on_error=False)
        assert result.success, _failure_message(result)
        quarter = quarter_key(date.fromisoformat(info["data_cutoff"]))
    for group in ("cohort", "models"):
        result = defs.resolve_job_def("quarterly_cohort_report").execute_in_process(
            run_config=QUIET, partition_key=quarter, instance=instance, raise_on_error=False,
            asset_selection=_stage_keys(defs, group))
        assert result.success, f"{group}: {_failure_message(result)}"
        lines.append(f"[{group}] {quarter}: done")
    return settings, truth, lines, instance


def test_generated_cohort_recovers_planted_hazard_ratios(generated_run):
    from tests.conftest import query

    settings, truth, lines, _ = generated_run
    assert any(line.startswith("[models]") for line in lines), lines
    cox = pd.DataFrame(query(settings, "SELECT model, term, hazard_ratio, ci_low, ci_high, n_events, estimable "
                                       "FROM results.fracture_cox"),
                       columns=["model", "term", "hr", "lo", "hi", "events", "estimable"]).set_index(["model", "term"])
    assert {"time_varying_adjusted", "time_varying_adjusted_lcms", "iptw_itt", "crude_itt",
            "death_cause_specific"} <= set(cox.index.get_level_values(0))
    planted = truth["fracture_model"]["hazard_ratio"]
    primary = cox.loc["time_varying_adjusted"]
    # A rare exposure may have no fracture in a cohort this small (its HR is then not estimable and
    # reported so); the main terms must be estimated, and every estimated one must cover the truth.
    assert primary.loc[["ai_current", "e2_10_20", "age_per_10y", "bmi_per_5", "femoral_neck_sbmd_per_0_1"],
                       "estimable"].all()
    missed = {term: (planted[term], row.lo, row.hi) for term, row in primary.iterrows()
              if term in planted and row.estimable and not row.lo <= planted[term] <= row.hi}
    assert not missed, f"planted HR outside the 95% CI: {missed}"
    assert set(primary.index) >= {"ai_current", "e2_lt10", "e2_10_20", "e2_ge40", "age_per_10y",
                                  "femoral_neck_sbmd_per_0_1", "bmi_per_5", "glucocorticoid_current"}
    death_age = cox.loc[("death_cause_specific", "age_per_10y")]
    assert death_age.lo <= truth["death_model"]["hazard_ratio_per_10y"] <= death_age.hi
    # The planted confounding (BMI, estradiol drive AI initiation) shows before weighting and shrinks after.
    balance = dict((c, (b, a)) for c, b, a in query(
        settings, "SELECT covariate, smd_before, smd_after FROM results.balance"))
    for covariate in ("bmi", "estradiol_pg_ml"):
        before, after = balance[covariate]
        assert before > 0.3 and abs(after) < 0.5 * before, (covariate, before, after)
    # Every other results table was written for the quarter.
    for table in ("km_curves", "km_curves_e2_tier", "cumulative_incidence", "incidence_rates",
                  "propensity_diagnostics", "fracture_ph_tests"):
        assert query(settings, f"SELECT count(*) FROM results.{table}")[0][0] > 0, table
    labels = {g for (g,) in query(settings, "SELECT DISTINCT group_label FROM results.km_curves")}
    assert labels == {"AI during follow-up", "No AI"}
    (weights,) = query(settings, "SELECT count(*) FROM analysis.fracture_iptw_weights")[0]
    assert weights == query(settings, "SELECT count(*) FROM cohort.members")[0][0]
    json.dumps(truth["fracture_model"])  # truth.json's model section is what was compared


def test_materializations_show_hazard_ratios_curves_and_flags(generated_run):
    from tests.conftest import latest_metadata

    _, _, _, instance = generated_run

    cox = latest_metadata(instance, "results", "fracture_cox")
    table = cox["hazard_ratios"].value
    assert "Current aromatase inhibitor" in table and "HR (95% CI)" in table
    assert "**FAILED**" in table or cox["results_failing_diagnostics"].value == 0
    assert cox["forest_plot"].value.startswith("![Hazard ratios](data:image/png;base64,")
    for key in (("results", "km_curves"), ("results", "km_curves_e2_tier")):
        assert latest_metadata(instance, *key)["km_plot"].value.startswith("![Kaplan-Meier](data:image/png;base64,")
    assert "cif_plot_ai" in latest_metadata(instance, "results", "cumulative_incidence")
    assert "ps_overlap_plot" in latest_metadata(instance, "results", "propensity_diagnostics")
    assert "SMD after" in latest_metadata(instance, "results", "balance")["balance"].value
    # counts shown to people are suppressed: no bare 1-10 in the events columns
    rates = latest_metadata(instance, "results", "incidence_rates")["incidence_rates"].value
    for line in rates.splitlines()[2:]:
        fractures = line.split("|")[3].strip()
        assert fractures == "<11" or fractures == "0" or int(fractures.replace(",", "")) >= 11, line


def test_result_tables_declare_the_columns_they_are_written_with(generated_run):
    """Every table asset of the models stage shows its columns before any materialization (from the DDL,
    described as in the warehouse), names SQL files that exist, and its materializations show the same
    columns as written."""
    import dagster as dg

    from assets import models
    from cohort.settings import SQL_DIR

    _, _, _, instance = generated_run
    specs = [spec for definition in dg.load_assets_from_modules([models]) for spec in definition.specs]
    assert len(specs) == 11
    for spec in specs:
        declared = spec.metadata["dagster/column_schema"]
        assert isinstance(declared, dg.TableSchema) and declared.columns, spec.key
        assert all(c.description for c in declared.columns), spec.key
        files = spec.description.split("SQL: ")[1].rstrip(".").split(", ")
        assert files[-1] == f"`sql/models/{spec.key.path[-1]}.sql`", spec.key
        assert all((SQL_DIR.parent / f.strip("`")).is_file() for f in files), files
        written = instance.get_latest_materialization_event(spec.key).asset_materialization.metadata
        assert [(c.name, c.type) for c in written["dagster/column_schema"].value.columns] == \
            [(c.name, c.type) for c in declared.columns], spec.key


def test_materialization_counts_of_people_are_suppressed(generated_run):
    """Counts of people, events and scans in metadata are suppressed text; dagster/row_count counts
    result rows, except for the per-member weights, where it is shown only when not small."""
    import dagster as dg

    from cohort.display import suppress_count
    from tests.conftest import query

    settings, _, _, instance = generated_run
    weights = instance.get_latest_materialization_event(
        dg.AssetKey(["analysis", "fracture_iptw_weights"])).asset_materialization.metadata
    (members,) = query(settings, "SELECT count(*) FROM analysis.fracture_iptw_weights")[0]
    assert members >= 11 and weights["dagster/row_count"].value == members
    treated, control = query(settings, "SELECT count(*) FILTER (ai_ever), count(*) FILTER (NOT ai_ever) "
                                       "FROM analysis.fracture_iptw_weights")[0]
    assert weights["ai_initiators"].value == suppress_count(treated)
    assert weights["non_initiators"].value == suppress_count(control)
    km = instance.get_latest_materialization_event(dg.AssetKey(["results", "km_curves_e2_tier"]))
    for line in km.asset_materialization.metadata["fractures"].value.splitlines()[2:]:
        for cell in line.split("|")[2:4]:
            assert cell.strip() in ("0", "<11") or int(cell.strip().replace(",", "")) >= 11, line
