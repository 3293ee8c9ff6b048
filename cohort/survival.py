"""Exact, fast survival estimators with a lifelines-style fit / summary API.

* `TimeVaryingCox`: Cox model on counting-process rows (start, stop], Efron or Breslow ties,
  case weights, robust (sandwich) variance clustered on subject, strata, and the
  Grambsch-Therneau proportional-hazards test on scaled Schoenfeld residuals.
* `AalenJohansen`: cumulative incidence of one cause with competing events, ties exact.
* `kaplan_meier`: tidy wrapper around lifelines' `KaplanMeierFitter`.
* `incidence_rate`: events per 1,000 person-years with exact (Garwood) Poisson limits.

Why the Cox fit is fast. lifelines' `CoxTimeVaryingFitter` rebuilds the risk set
{i : start_i < t <= stop_i} with a boolean scan of every row at every event time, O(n m) per
Newton step. Here the m distinct event times are indexed once: row i is at risk at event
index j exactly when lo_i <= j < hi_i, with lo_i = #{event times <= start_i} and
hi_i = #{event times <= stop_i}. A risk-set sum is then sum_{hi_i > j} a_i - sum_{lo_i > j} a_i,
i.e. a reverse cumulative sum over event times of "+a_i at hi_i, -a_i at lo_i" (one sparse
product per Newton step). The d x d second-moment sums are never formed per event time:
sum_j c_j S2(t_j) = sum_i (sum_{j at risk} c_j) w_i r_i x_i x_i', a difference of cumulative
sums of c per row, so the information matrix is one weighted X'X per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import linalg, sparse, stats

__all__ = [
    "AalenJohansen",
    "CoxConvergenceError",
    "TimeVaryingCox",
    "incidence_rate",
    "kaplan_meier",
]


class CoxConvergenceError(RuntimeError):
    """The Cox partial likelihood has no finite maximum or a singular information matrix.

    `diagnosis` names the likely cause found in the data (constant covariate, covariate with a
    single value among the events at the edge of its range, collinear covariates).
    """

    def __init__(self, problem: str, diagnosis: str):
        self.problem = problem
        self.diagnosis = diagnosis
        super().__init__(f"{problem}. Likely cause: {diagnosis}")


def _diagnose(X: np.ndarray, event: np.ndarray, group: np.ndarray, names: Sequence[str]) -> str:
    """Name the data patterns that make the partial likelihood flat or unbounded."""
    causes = []
    sd = X.std(axis=0)
    within = pd.DataFrame(X).groupby(group).agg(lambda col: col.max() - col.min()).max().to_numpy()
    Xe = X[event]
    for j, name in enumerate(names):
        if within[j] == 0:
            where = "within every stratum" if sd[j] > 0 else "over all rows"
            causes.append(f"covariate '{name}' is constant {where}")
            continue
        values = np.unique(Xe[:, j])
        if len(values) == 1 and values[0] in (X[:, j].min(), X[:, j].max()):
            edge = "minimum" if values[0] == X[:, j].min() else "maximum"
            causes.append(
                f"covariate '{name}' equals {values[0]:g} (its {edge}) for all {len(Xe)} events: "
                "no variation among events, so its coefficient diverges (monotone likelihood)"
            )
    varying = sd > 0
    if varying.sum() > 1:
        Z = (X[:, varying] - X[:, varying].mean(axis=0)) / sd[varying]
        eigval, eigvec = np.linalg.eigh(Z.T @ Z / len(Z))
        if eigval[0] < 1e-8:
            involved = [str(n) for n, load in zip(np.asarray(names)[varying], eigvec[:, 0]) if abs(load) > 0.05]
            causes.append(f"covariates {', '.join(repr(n) for n in involved)} are collinear")
    return "; ".join(causes) or (
        "no single covariate explains it; look for separation within risk sets "
        "(a covariate combination that predicts every event) or extreme covariate values"
    )


class _RiskSets:
    """Counting-process data indexed by event time, and the Efron/Breslow sums at any beta.

    Death rows are ordered by event index j; within a tie group of d_j deaths the k-th one
    (k = 0..d_j-1) carries the Efron fraction k/d_j (0 for Breslow): the k-th term of the Efron
    partial likelihood removes k/d_j of the tied deaths' risk from the denominator. Every tie
    term is weighted by the mean weight of the tied deaths, as in R's coxph and lifelines.
    """

    def __init__(self, X, start, stop, event, w, group, efron: bool):
        n = len(X)
        self.X = X - X.mean(axis=0)  # centring changes no estimate, only avoids exp overflow
        self.w = w
        uniq, inv = np.unique(np.concatenate([start, stop]), return_inverse=True)
        K = len(uniq)
        key_start = group * K + inv[:n]  # (stratum, time rank): risk sets never cross strata
        key_stop = group * K + inv[n:]
        event_keys = np.unique(key_stop[event])
        self.event_times = uniq[event_keys % K]
        m = len(event_keys)
        self.lo = np.searchsorted(event_keys, key_start, side="right")
        self.hi = np.searchsorted(event_keys, key_stop, side="right")
        rows = np.concatenate([self.hi, self.lo])
        vals = np.concatenate([np.ones(n), -np.ones(n)])
        self.M = sparse.csr_matrix((vals, (rows, np.concatenate([np.arange(n)] * 2))), shape=(m + 1, n))

        death = np.flatnonzero(event)
        jd = self.hi[death] - 1
        order = np.argsort(jd, kind="stable")
        self.death, self.jd = death[order], jd[order]
        counts = np.bincount(self.jd, minlength=m)
        self.starts = np.cumsum(counts) - counts
        self.counts = counts
        k = np.arange(len(death)) - self.starts[self.jd]
        self.frac = k / counts[self.jd] if efron else np.zeros(len(death))
        W = np.add.reduceat(w[self.death], self.starts)
        self.meanwt = (W / counts)[self.jd]
        self.wx_death = (w[self.death, None] * self.X[self.death]).sum(axis=0)

    def _sums(self, beta):
        X, death, jd, frac = self.X, self.death, self.jd, self.frac
        eta = X @ beta
        r = self.w * np.exp(eta)
        A = np.empty((len(X), X.shape[1] + 1))
        A[:, 0] = r
        A[:, 1:] = X * r[:, None]
        net = self.M @ A  # +a at hi_i, -a at lo_i
        S = np.cumsum(net[::-1], axis=0)[::-1][1:]  # S[j] = sum_{k > j} net[k]: risk-set sums
        T = np.add.reduceat(A[death], self.starts)  # tied deaths' sums per event time
        den = S[jd, 0] - frac * T[jd, 0]
        xbar = (S[jd, 1:] - frac[:, None] * T[jd, 1:]) / den[:, None]
        return eta, r, den, xbar

    def evaluate(self, beta):
        """Log partial likelihood, score and information at beta."""
        X, death, jd, meanwt = self.X, self.death, self.jd, self.meanwt
        eta, r, den, xbar = self._sums(beta)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = self.w[death] @ eta[death] - meanwt @ np.log(den)
        grad = self.wx_death - meanwt @ xbar
        # sum over tie terms of meanwt * S2_k / den_k, carried to rows as cumulative hazards.
        hz = meanwt / den
        h = np.add.reduceat(hz, self.starts)
        e = np.add.reduceat(hz * self.frac, self.starts)
        Hc = np.concatenate([[0.0], np.cumsum(h)])
        v = r * (Hc[self.hi] - Hc[self.lo])
        v[death] -= r[death] * e[jd]
        info = X.T @ (X * v[:, None]) - (xbar * meanwt[:, None]).T @ xbar
        return ll, grad, info

    def score_residuals(self, beta):
        """Per-row score residuals U_i (sum_i w_i U_i = score), Efron-adjusted as R's coxph.

        U_i = delta_i (x_i - mean_k xbar_k(t_i))
              - r_i sum_{tie terms k at risk} c_ik (meanwt_k / den_k) (x_i - xbar_k),
        where c_ik = 1 - k/d for the term's own tied deaths and 1 otherwise.
        """
        X, death, jd, starts = self.X, self.death, self.jd, self.starts
        eta, _, den, xbar = self._sums(beta)
        r = np.exp(eta)  # unweighted: the caller multiplies U_i by w_i
        hz = self.meanwt / den
        h = np.add.reduceat(hz, starts)
        hx = np.add.reduceat(hz[:, None] * xbar, starts)
        e = np.add.reduceat(hz * self.frac, starts)
        ex = np.add.reduceat((hz * self.frac)[:, None] * xbar, starts)
        Hc = np.concatenate([[0.0], np.cumsum(h)])
        HXc = np.vstack([np.zeros(X.shape[1]), np.cumsum(hx, axis=0)])
        U = -r[:, None] * (X * (Hc[self.hi] - Hc[self.lo])[:, None] - (HXc[self.hi] - HXc[self.lo]))
        xbar_mean = np.add.reduceat(xbar, starts) / self.counts[:, None]
        U[death] += X[death] - xbar_mean[jd] + r[death, None] * (X[death] * e[jd, None] - ex[jd])
        return U

    def schoenfeld(self, beta):
        """Schoenfeld residuals of the death rows (in `self.death` order): x_i - mean_k xbar_k."""
        _, _, _, xbar = self._sums(beta)
        xbar_mean = np.add.reduceat(xbar, self.starts) / self.counts[:, None]
        return self.X[self.death] - xbar_mean[self.jd]


def _solve_information(info: np.ndarray, grad: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Newton step info^-1 grad, or None if the information is singular.

    Singular: a diagonal entry that is rounding noise next to `ref` (the information the
    covariate would carry if each risk set spanned its whole variance), or a correlation-scale
    eigenvalue below 1e-10 (collinearity).
    """
    d = np.diag(info)
    if not np.all(np.isfinite(info)) or np.any(d <= 1e-10 * ref):
        return None
    s = 1 / np.sqrt(d)
    corr = info * np.outer(s, s)
    if np.linalg.eigvalsh(corr)[0] < 1e-10:
        return None
    return linalg.cho_solve(linalg.cho_factor(corr), grad * s) * s


class TimeVaryingCox:
    """Cox proportional hazards on counting-process rows (start, stop].

    Maximises the (weighted) Efron or Breslow partial likelihood by Newton-Raphson from beta=0,
    halving the step while the log-likelihood decreases (as R's coxph). Converged when every
    Newton step component, in covariate-SD units, is below `tol`; otherwise, or if the
    information matrix is singular, `fit` raises `CoxConvergenceError` naming the likely cause.
    An infinite MLE (monotone likelihood) keeps Newton steps near 1 and so ends in that error
    rather than in a huge, silently "converged" coefficient.

    Variance: inverse information (model-based) or, with `robust=True`, the sandwich
    V (sum_g u_g u_g') V with u_g the weighted score residuals summed over cluster g
    (`cluster_col`, else `id_col`, else rows), as R's coxph(..., cluster=) and lifelines;
    giving `cluster_col` implies `robust=True`. Use `robust=True` with IPTW weights.

    Attributes after `fit`: params_ (log HR), hazard_ratios_, standard_errors_,
    variance_matrix_, confidence_intervals_, p_values_ (Wald), log_likelihood_, n_events_,
    n_rows_, n_subjects_ (None without id_col), n_iter_, converged_ (always True: failures
    raise), summary.
    """

    def __init__(self, ties: str = "efron", alpha: float = 0.05, tol: float = 1e-9, max_iter: int = 50):
        if ties not in ("efron", "breslow"):
            raise ValueError("ties must be 'efron' or 'breslow'")
        self.ties = ties
        self.alpha = alpha
        self.tol = tol
        self.max_iter = max_iter

    def fit(
        self,
        df: pd.DataFrame,
        event_col: str,
        start_col: str = "start",
        stop_col: str = "stop",
        covariates: Sequence[str] | None = None,
        weights_col: str | None = None,
        id_col: str | None = None,
        cluster_col: str | None = None,
        strata: str | Sequence[str] | None = None,
        robust: bool = False,
    ) -> "TimeVaryingCox":
        """Fit on `df`; covariates default to every column not named in another argument."""
        if not isinstance(df, pd.DataFrame):
            df = df.to_pandas()
        strata = [strata] if isinstance(strata, str) else list(strata or [])
        used = {event_col, start_col, stop_col, weights_col, id_col, cluster_col, *strata}
        names = list(covariates) if covariates is not None else [c for c in df.columns if c not in used]
        if not names:
            raise ValueError("no covariates to fit")
        X = df[names].to_numpy(dtype=float)
        start = df[start_col].to_numpy(dtype=float)
        stop = df[stop_col].to_numpy(dtype=float)
        event = df[event_col].to_numpy()
        if not np.isin(event, (0, 1)).all():
            raise ValueError(f"{event_col} must be 0/1 (or boolean)")
        event = event.astype(bool)
        w = np.ones(len(df)) if weights_col is None else df[weights_col].to_numpy(dtype=float)
        for label, arr in (("covariates", X), ("start/stop", np.c_[start, stop]), ("weights", w)):
            if not np.isfinite(arr).all():
                raise ValueError(f"{label} contain NaN or infinite values")
        if np.any(stop <= start):
            raise ValueError(f"every row needs {start_col} < {stop_col}")
        if np.any(w <= 0):
            raise ValueError("weights must be positive")
        if not event.any():
            raise ValueError("no events")
        group = df.groupby(strata, sort=True).ngroup().to_numpy() if strata else np.zeros(len(df), dtype=np.int64)

        rs = _RiskSets(X, start, stop, event, w, group, efron=self.ties == "efron")
        beta, ll, info, n_iter = self._newton(rs, X, event, group, names)

        z = stats.norm.ppf(1 - self.alpha / 2)
        V = V_model = linalg.inv(info)
        robust = robust or cluster_col is not None  # cluster implies robust, as R and lifelines
        if robust:
            U = rs.score_residuals(beta) * w[:, None]
            clusters = df[cluster_col or id_col].to_numpy() if (cluster_col or id_col) else np.arange(len(df))
            codes = pd.factorize(clusters)[0]
            Ug = np.column_stack([np.bincount(codes, weights=U[:, k]) for k in range(len(names))])
            V = V_model @ (Ug.T @ Ug) @ V_model
        idx = pd.Index(names, name="covariate")
        self.params_ = pd.Series(beta, index=idx, name="coef")
        self.hazard_ratios_ = pd.Series(np.exp(beta), index=idx, name="exp(coef)")
        self.variance_matrix_ = pd.DataFrame(V, index=idx, columns=idx)
        self.standard_errors_ = pd.Series(np.sqrt(np.diag(V)), index=idx, name="se(coef)")
        level = f"{100 * (1 - self.alpha):g}%"
        self.confidence_intervals_ = pd.DataFrame(
            {f"{level} lower-bound": beta - z * self.standard_errors_, f"{level} upper-bound": beta + z * self.standard_errors_},
            index=idx,
        )
        self.p_values_ = pd.Series(2 * stats.norm.sf(np.abs(beta / self.standard_errors_)), index=idx, name="p")
        self.log_likelihood_ = float(ll)
        self.n_events_ = int(event.sum())
        self.n_rows_ = len(df)
        self.n_subjects_ = int(df[id_col].nunique()) if id_col else None
        self.n_iter_ = n_iter
        self.converged_ = True
        self.robust = robust
        self._ph = (rs, beta, V_model, start, stop, w)
        return self

    def _newton(self, rs: _RiskSets, X, event, group, names):
        scale = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
        ref = rs.meanwt.sum() * scale**2
        beta = np.zeros(X.shape[1])
        ll, grad, info = rs.evaluate(beta)
        for n_iter in range(1, self.max_iter + 1):
            step = _solve_information(info, grad, ref)
            if step is None:
                raise CoxConvergenceError(
                    f"singular information matrix at iteration {n_iter} "
                    f"(coefficients {np.round(beta, 2).tolist()})",
                    _diagnose(X, event, group, names),
                )
            if np.max(np.abs(step) * scale) < self.tol:
                return beta, ll, info, n_iter
            new = beta + step
            for _ in range(30):
                ll_new, grad_new, info_new = rs.evaluate(new)
                if np.isfinite(ll_new) and ll_new >= ll - 1e-12 * (1 + abs(ll)):
                    break
                new = (beta + new) / 2
            else:
                raise CoxConvergenceError(
                    f"step halving could not increase the log-likelihood at iteration {n_iter}",
                    _diagnose(X, event, group, names),
                )
            beta, ll, grad, info = new, ll_new, grad_new, info_new
        raise CoxConvergenceError(
            f"no convergence in {self.max_iter} Newton-Raphson iterations "
            f"(coefficients {np.round(beta, 2).tolist()})",
            _diagnose(X, event, group, names),
        )

    @property
    def summary(self) -> pd.DataFrame:
        """coef, exp(coef), se(coef), CIs on both scales, z and p, one row per covariate."""
        level = f"{100 * (1 - self.alpha):g}%"
        lo, hi = self.confidence_intervals_.iloc[:, 0], self.confidence_intervals_.iloc[:, 1]
        return pd.DataFrame(
            {
                "coef": self.params_,
                "exp(coef)": self.hazard_ratios_,
                "se(coef)": self.standard_errors_,
                f"coef lower {level}": lo,
                f"coef upper {level}": hi,
                f"exp(coef) lower {level}": np.exp(lo),
                f"exp(coef) upper {level}": np.exp(hi),
                "z": self.params_ / self.standard_errors_,
                "p": self.p_values_,
            }
        )

    def proportional_hazard_test(self, time_transform: str = "rank") -> pd.DataFrame:
        """Per-covariate test of proportional hazards on scaled Schoenfeld residuals.

        Grambsch & Therneau's one-degree-of-freedom approximation (R's cox.zph before
        survival 3.0, and lifelines' `proportional_hazard_test`): with D deaths, Schoenfeld
        residuals s_i, model-based variance V and transformed death times g_i,
            T_j = (sum_i (g_i - mean g) (D s_i V)_j)^2 / (D V_jj sum_i (g_i - mean g)^2),
        compared to chi-square(1). Transforms of the death times:
          'rank'     average ranks (R's rank(); identical to lifelines' ranks without ties,
                     whereas lifelines orders tied deaths arbitrarily),
          'km'       1 - KM(t), the right-continuous (weighted) Kaplan-Meier at t computed on
                     the (start, stop] risk sets, as lifelines (R uses the left limit KM(t-)),
          'identity' t, 'log' log(t).
        Uses the model-based V even after a robust fit (lifelines would use the robust SE in
        the denominator).
        """
        rs, beta, V, start, stop, w = self._ph
        t = rs.event_times[rs.jd]
        if time_transform == "rank":
            g = stats.rankdata(t)
        elif time_transform == "km":
            u, inv = np.unique(t, return_inverse=True)
            n_risk = _weight_at_risk(start, stop, w, u)
            deaths = np.bincount(inv, weights=w[rs.death])
            g = 1 - np.cumprod(1 - deaths / n_risk)[inv]
        elif time_transform == "identity":
            g = t
        elif time_transform == "log":
            g = np.log(t)
        else:
            raise ValueError("time_transform must be 'rank', 'km', 'identity' or 'log'")
        D = len(t)
        scaled = D * rs.schoenfeld(beta) @ V
        gc = g - g.mean()
        stat = (gc @ scaled) ** 2 / (D * np.diag(V) * (gc @ gc))
        return pd.DataFrame(
            {"test_statistic": stat, "p": stats.chi2.sf(stat, 1)},
            index=pd.Index(self.params_.index, name="covariate"),
        ).assign(time_transform=time_transform)


def _weight_at_risk(start, stop, w, times):
    """sum of w over rows with start < t <= stop, for each t: rows with start >= t also have
    stop >= t, so this is sum_{stop >= t} w - sum_{start >= t} w (sorted tail sums)."""

    def weight_at_or_after(x):
        order = np.argsort(x)
        tail = np.concatenate([np.cumsum(w[order][::-1])[::-1], [0.0]])
        return tail[np.searchsorted(x[order], times, side="left")]

    return weight_at_or_after(stop) - weight_at_or_after(start)


class AalenJohansen:
    """Aalen-Johansen cumulative incidence of one cause in the presence of competing events.

    At each distinct time t_k with (weighted) n_k at risk, d_k events of any cause and c_k of
    the cause of interest:
        F(t_k) = F(t_{k-1}) + S(t_{k-1}) c_k / n_k,   S(t_k) = S(t_{k-1}) (1 - d_k / n_k),
    S being the all-cause Kaplan-Meier. Events of different causes at the same time enter the
    same step, which is exact (the estimator needs no tie-breaking); censorings at t_k count
    as at risk at t_k. This is R's survfit(Surv(t, factor(status)) ~ 1) estimate.

    Variance: the delta-method (Greenwood-type) formula of Collett, Modelling Survival Data in
    Medical Research (3rd ed., p. 411), also used by lifelines' AalenJohansenFitter:
        Var F(t) = sum_{t_k <= t} [ (F(t) - F(t_k))^2 d_k / (n_k (n_k - d_k))
                   + S(t_{k-1})^2 c_k (n_k - c_k) / n_k^3
                   - 2 (F(t) - F(t_k)) S(t_{k-1}) c_k / n_k^2 ],
    with the confidence interval on the log(-log F) scale so it stays inside (0, 1). R's
    survfit reports a different (influence-function) standard error; the estimate is the same.
    With non-integer weights the variance is an approximation.
    """

    def __init__(self, alpha: float = 0.05):
        self.alpha = alpha

    def fit(self, durations, events, cause: int = 1, weights=None) -> "AalenJohansen":
        """`events`: 0 = censored, any other integer = that cause. Sets `cumulative_incidence_`."""
        t = np.asarray(durations, dtype=float)
        e = np.asarray(events)
        w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=float)
        if not (np.isfinite(t).all() and np.isfinite(w).all()) or np.any(w <= 0) or np.any(t < 0):
            raise ValueError("durations must be finite and >= 0, weights finite and > 0")
        u, inv = np.unique(t, return_inverse=True)
        d = np.bincount(inv, weights=w * (e != 0))
        c = np.bincount(inv, weights=w * (e == cause))
        censored = np.bincount(inv, weights=w * (e == 0))
        n = np.cumsum((d + censored)[::-1])[::-1]
        # n_k - d_k summed without cancellation: 0 only when nobody is left after t_k, and then
        # the variance term's factor (F(t) - F(t_k)) is 0 for every t it enters.
        survivors = np.concatenate([n[1:], [0.0]]) + censored
        S = np.cumprod(survivors / n)
        S_prev = np.concatenate([[1.0], S[:-1]])
        F = np.cumsum(S_prev * c / n)

        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(survivors > 0, d / (n * survivors), 0.0)
        b = S_prev**2 * c * (n - c) / n**3
        g = S_prev * c / n**2
        var = (
            F**2 * np.cumsum(a) - 2 * F * np.cumsum(a * F) + np.cumsum(a * F**2)
            + np.cumsum(b)
            - 2 * (F * np.cumsum(g) - np.cumsum(g * F))
        )
        var = np.maximum(var, 0.0)
        z = stats.norm.ppf(1 - self.alpha / 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            loglog = np.log(-np.log(F))
            se_loglog = np.sqrt(var) / (F * np.abs(np.log(F)))
            lo = np.exp(-np.exp(loglog + z * se_loglog))
            hi = np.exp(-np.exp(loglog - z * se_loglog))
        none_yet = F == 0
        self.cause = cause
        self.cumulative_incidence_ = pd.DataFrame(
            {
                "time": u,
                "at_risk": n,
                "events": c,
                "competing": d - c,
                "censored": censored,
                "cif": F,
                "se": np.sqrt(var),
                "ci_low": np.where(none_yet, 0.0, lo),
                "ci_high": np.where(none_yet, 0.0, hi),
            }
        )
        return self

    def predict(self, times) -> np.ndarray:
        """CIF at arbitrary times (right-continuous step function, 0 before the first time)."""
        tab = self.cumulative_incidence_
        pos = np.searchsorted(tab["time"].to_numpy(), np.asarray(times, dtype=float), side="right") - 1
        return np.where(pos >= 0, tab["cif"].to_numpy()[np.maximum(pos, 0)], 0.0)


def kaplan_meier(time, event, weights=None, alpha: float = 0.05) -> pd.DataFrame:
    """Kaplan-Meier table from lifelines' KaplanMeierFitter (exponential Greenwood CI, i.e.
    Greenwood variance on the log(-log S) scale), one row per distinct time plus time 0.

    Columns: time, at_risk, events, censored, survival, ci_low, ci_high (weighted counts if
    `weights` are given).
    """
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter(alpha=alpha).fit(np.asarray(time, dtype=float), np.asarray(event), weights=weights)
    tab = kmf.event_table
    ci = kmf.confidence_interval_survival_function_
    return pd.DataFrame(
        {
            "time": tab.index.to_numpy(),
            "at_risk": tab["at_risk"].to_numpy(),
            "events": tab["observed"].to_numpy(),
            "censored": tab["censored"].to_numpy(),
            "survival": kmf.survival_function_.iloc[:, 0].to_numpy(),
            "ci_low": ci.iloc[:, 0].to_numpy(),
            "ci_high": ci.iloc[:, 1].to_numpy(),
        }
    )


def incidence_rate(events, person_years, alpha: float = 0.05, per: float = 1000.0) -> pd.DataFrame:
    """Incidence rate per `per` person-years with exact Poisson (Garwood 1936) limits:
    lower = chi2_{alpha/2}(2k) / 2, upper = chi2_{1-alpha/2}(2k + 2) / 2 events (lower = 0 when
    k = 0), divided by person-time. Scalars or aligned arrays/Series; one row per input.
    """
    index = events.index if isinstance(events, pd.Series) else None
    k = np.atleast_1d(np.asarray(events, dtype=float))
    py = np.atleast_1d(np.asarray(person_years, dtype=float))
    if np.any(k < 0) or np.any(py <= 0):
        raise ValueError("events must be >= 0 and person_years > 0")
    k, py = np.broadcast_arrays(k, py)
    lower = np.zeros_like(k)
    lower[k > 0] = stats.chi2.ppf(alpha / 2, 2 * k[k > 0]) / 2
    upper = stats.chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    return pd.DataFrame(
        {
            "events": k,
            "person_years": py,
            "rate": k / py * per,
            "ci_low": lower / py * per,
            "ci_high": upper / py * per,
        },
        index=index,
    )
