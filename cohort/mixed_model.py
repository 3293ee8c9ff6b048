"""REML fit of a linear mixed model with a correlated random intercept and slope.

Model, for subject ``i`` and visit ``j``::

    y_ij = x_ij' beta + b0_i + b1_i * t_ij + e_ij,
    (b0_i, b1_i) ~ N(0, G),  G an unrestricted 2x2 covariance,  e_ij ~ N(0, sigma^2).

:class:`RandomSlopeMixedModel` fits it exactly (to optimizer precision) by REML, fast
enough for 100,000 subjects in seconds.  :func:`fit_statsmodels_reference` fits the same
model with statsmodels ``MixedLM`` the way that is known to converge on DXA-scale data
(Powell, then a BFGS polish started from Powell's result) and returns the same fields;
it is the project's reference implementation.

Method (why it is fast and exact)
---------------------------------
Write ``Z_i = [1, t_i]`` and ``Psi = G / sigma^2 = L L'`` with ``L`` lower triangular,
``theta = (L11, L21, L22)``.  Then ``V_i = sigma^2 (I + Z_i Psi Z_i')`` and by the
Woodbury identity everything the REML criterion needs reduces to 2x2 algebra per subject,
driven by per-subject sums ``S_i = Z_i'Z_i``, ``A_i = Z_i'X_i``, ``c_i = Z_i'y_i`` that are
computed once::

    M_i = I + L' S_i L                      log|I + Z_i Psi Z_i'| = log|M_i|
    X'WX = X'X - sum_i A_i' L M_i^-1 L' A_i  (W = (I + Z Psi Z')^-1, likewise X'Wy, y'Wy)

``beta`` and ``sigma^2`` are profiled out analytically (GLS and ``qf / (n - p)``), leaving::

    f(theta) = sum_i log|M_i| + log|X'WX| + (n - p) log qf,    qf = min_beta (y - X beta)'W(y - X beta)

which is ``-2 * REML log-likelihood`` up to a constant.  Its gradient and Hessian with
respect to ``Psi`` are again sums of 2x2 terms (``K_i = Z_i'W_iZ_i``, ``B_i = Z_i'W_iX_i``,
``g_i = Z_i'W_i(y_i - X_i beta)``); the chain rule through ``Psi = L L'`` gives the exact
gradient and Hessian in ``theta`` and a Newton iteration on three parameters converges
quadratically.  Each evaluation is a handful of vectorised ``n_subjects x p`` array
operations and ``p x p`` matrix products, with no Python loop over subjects.

Boundary (singular G)
---------------------
``L L'`` covers every positive semi-definite ``G``, including singular ones: a correlation
of +-1 (``L22 = 0``; the usual outcome when the true slope variance is ~0) or a zero slope
variance (``L21 = L22 = 0``).  Because ``f`` is a smooth function of ``theta`` on all of
R^3, such an estimate is an ordinary stationary point in ``theta``, so the fit converges
normally: ``converged_`` is True, ``on_boundary_`` is True and a :class:`SingularFitWarning`
is issued (as lme4 reports "boundary (singular) fit"); ``re_corr_`` is +-1, or NaN when a
variance is 0.  ``beta`` and ``cov_type="lme4"`` standard errors keep their usual meaning.
The ``"statsmodels"`` standard errors then rest on an information matrix evaluated where
the score in ``G`` is not zero, and can differ from lme4's by a few percent in small
samples; the statsmodels reference itself usually fails to converge there (its BFGS polish
reports precision loss).  Inference on the variance components at the boundary is
non-standard and is not offered.

Standard errors of beta
-----------------------
``cov_type="statsmodels"`` (default) inverts the joint observed information of
``(beta, Psi)`` as statsmodels does, so it matches the reference;
``cov_type="lme4"`` uses ``sigma^2 (X'V^-1X)^-1`` (G treated as known), as lme4, nlme and
SAS report.  The two differ by O(1/n_subjects) (about 1% at 200 subjects).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg, optimize, stats

__all__ = ["ConvergenceError", "RandomSlopeMixedModel", "SingularFitWarning", "fit_statsmodels_reference"]

_COV_TYPES = ("statsmodels", "lme4")
_RE_NAMES = ["intercept", "slope"]
# Notation: Psi's free elements are packed (0,0), (1,0), (1,1), as statsmodels packs cov_re;
# E_a is the symmetric 0/1 matrix with ones at element a (both off-diagonal places for (1,0)).


class ConvergenceError(RuntimeError):
    """The REML optimisation did not reach a verified optimum."""


class SingularFitWarning(UserWarning):
    """The REML estimate of G is singular (on the boundary of the parameter space)."""


@dataclass
class _Evaluation:
    """REML criterion f(theta) = -2 llf + const, with derivatives when requested."""

    f: float
    grad: np.ndarray | None = None  # df/dtheta
    hess: np.ndarray | None = None  # d2f/dtheta2
    beta: np.ndarray | None = None
    qf: float | None = None
    xwx: np.ndarray | None = None  # X'WX (W for the relative covariance I + Z Psi Z')
    cross: np.ndarray | None = None  # d2f / dbeta dPsi, p x 3
    hess_psi_fixed_beta: np.ndarray | None = None  # d2f / dPsi2 at fixed beta, 3 x 3


class _RemlProblem:
    """Per-subject sufficient statistics and the profiled REML criterion over theta."""

    def __init__(self, y, X, time, codes, n_groups):
        self.n, self.p = X.shape
        self.dof = self.n - self.p
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=n_groups)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        t = time[:, None]
        rows = np.hstack([X, t * X, y[:, None], t * y[:, None], t, t * t])[order]
        sums = np.add.reduceat(rows, starts, axis=0)
        p = self.p
        self.A0, self.A1 = sums[:, :p], sums[:, p : 2 * p]  # sum x, sum t*x
        self.c0, self.c1 = sums[:, 2 * p], sums[:, 2 * p + 1]  # sum y, sum t*y
        self.s00, self.s01, self.s11 = counts.astype(float), sums[:, 2 * p + 2], sums[:, 2 * p + 3]
        self.xx = X.T @ X
        self.xy = X.T @ y
        self.yy = float(y @ y)

    def evaluate(self, theta, order=2) -> _Evaluation:
        """f(theta), and for order >= 1 its gradient, for order 2 its Hessian."""
        l11, l21, l22 = theta
        s00, s01, s11 = self.s00, self.s01, self.s11
        # P = S L (2x2 per subject); M = I + L'S L; upper Cholesky M = R'R in closed form.
        p00, p01 = s00 * l11 + s01 * l21, s01 * l22
        p10, p11 = s01 * l11 + s11 * l21, s11 * l22
        m00 = 1.0 + l11 * p00 + l21 * p10
        m01 = l11 * p01 + l21 * p11
        m11 = 1.0 + l22 * p11
        r00 = np.sqrt(m00)
        r01 = m01 / r00
        r11 = np.sqrt(m11 - r01 * r01)
        logdet_m = 2.0 * np.sum(np.log(r00) + np.log(r11))

        # w = R^-T L' A  (rows 0/1 of a 2 x p block per subject), omega = R^-T L' c.
        u0 = l11 * self.A0 + l21 * self.A1
        u1 = l22 * self.A1
        w0 = u0 / r00[:, None]
        w1 = (u1 - r01[:, None] * w0) / r11[:, None]
        v0 = l11 * self.c0 + l21 * self.c1
        v1 = l22 * self.c1
        om0 = v0 / r00
        om1 = (v1 - r01 * om0) / r11

        xwx = self.xx - w0.T @ w0 - w1.T @ w1
        xwy = self.xy - w0.T @ om0 - w1.T @ om1
        ywy = self.yy - om0 @ om0 - om1 @ om1
        chol = linalg.cho_factor(xwx, lower=True)
        beta = linalg.cho_solve(chol, xwy)
        qf = ywy - beta @ xwy
        logdet_h = 2.0 * np.sum(np.log(np.diag(chol[0])))
        f = logdet_m + logdet_h + self.dof * np.log(qf)
        if order == 0:
            return _Evaluation(f=f)

        # Q = R^-T L' S  so that  S L M^-1 L' S = Q'Q.
        q00, q01 = p00 / r00, p10 / r00
        q10, q11 = (p01 - r01 * q00) / r11, (p11 - r01 * q01) / r11
        # Symmetric 2x2 per-subject matrices are kept packed as (N, 3): entries 00, 01, 11.
        K = np.column_stack(  # Z'WZ = S - Q'Q
            [s00 - q00 * q00 - q10 * q10, s01 - q00 * q01 - q10 * q11, s11 - q01 * q01 - q11 * q11]
        )
        # B = Z'WX = A - Q'w,  q = Z'Wy = c - Q'omega,  g = Z'W(y - X beta) = q - B beta.
        B0 = self.A0 - q00[:, None] * w0 - q10[:, None] * w1
        B1 = self.A1 - q01[:, None] * w0 - q11[:, None] * w1
        g0 = self.c0 - q00 * om0 - q10 * om1 - B0 @ beta
        g1 = self.c1 - q01 * om0 - q11 * om1 - B1 @ beta
        gg = np.column_stack([g0 * g0, g0 * g1, g1 * g1])
        # Whitened B (H = C C', Bt = B C^-T) gives Omega = B H^-1 B' and J_a = Bt'E_a Bt.
        Bt0 = linalg.solve_triangular(chol[0], B0.T, lower=True).T
        Bt1 = linalg.solve_triangular(chol[0], B1.T, lower=True).T
        Om = np.column_stack(
            [np.einsum("ij,ij->i", Bt0, Bt0), np.einsum("ij,ij->i", Bt0, Bt1), np.einsum("ij,ij->i", Bt1, Bt1)]
        )

        # df = tr(Gpsi dPsi) with Gpsi symmetric; packed gradient = tr(Gpsi E_a).
        gpsi = K.sum(axis=0) - Om.sum(axis=0) - (self.dof / qf) * gg.sum(axis=0)
        grad_psi = gpsi * np.array([1.0, 2.0, 1.0])
        jac = np.array([[2 * l11, 0.0, 0.0], [l21, l11, 0.0], [0.0, 2 * l21, 2 * l22]])
        grad = jac.T @ grad_psi
        if order == 1:
            return _Evaluation(f=f, grad=grad, beta=beta, qf=qf, xwx=xwx)

        # Hessian in Psi at fixed beta (statsmodels' hess_re, times -2), from
        # d2 log|V| = -tr(K E_a K E_b),  d2 log|X'WX| = 2 tr(Omega E_a K E_b) - tr(H^-1 J_a H^-1 J_b),
        # d2 qf = 2 g'E_a K E_b g,  d qf = -g'E_a g  (sums over subjects).
        jt = [Bt0.T @ Bt0, Bt0.T @ Bt1 + Bt1.T @ Bt0, Bt1.T @ Bt1]
        t_j = np.array([[np.sum(ja * jb) for jb in jt] for ja in jt])
        qf_a = -gg.sum(axis=0) * np.array([1.0, 2.0, 1.0])
        hess_psi_fixed = (
            -_sum_traces(K, K)
            + 2.0 * _sum_traces(Om, K)
            - t_j
            + self.dof * (2.0 * _sum_traces(gg, K) / qf - np.outer(qf_a, qf_a) / qf**2)
        )
        # d2f/dbeta dPsi_a = 2 (n-p)/qf sum B'E_a g;  d2f/dbeta2 = 2 (n-p)/qf X'WX.
        cross = (2.0 * self.dof / qf) * np.column_stack([B0.T @ g0, B0.T @ g1 + B1.T @ g0, B1.T @ g1])
        # Profile out beta (Schur complement), then chain rule through Psi = L L'.
        cross_w = linalg.solve_triangular(chol[0], cross, lower=True)
        hess_psi = hess_psi_fixed - (qf / (2.0 * self.dof)) * cross_w.T @ cross_w
        second = np.array(
            [
                [2 * grad_psi[0], grad_psi[1], 0.0],
                [grad_psi[1], 2 * grad_psi[2], 0.0],
                [0.0, 0.0, 2 * grad_psi[2]],
            ]
        )
        hess = jac.T @ hess_psi @ jac + second
        return _Evaluation(f, grad, hess, beta, qf, xwx, cross, hess_psi_fixed)


def _sum_traces(a, b):
    """sum_i tr(A_i E_r B_i E_s) for r, s over Psi's packed elements (3 x 3, symmetric).

    ``a``, ``b`` hold symmetric 2x2 matrices packed as (N, 3) columns 00, 01, 11; with
    ``P = a'b`` every trace is a fixed combination of P's entries.
    """
    P = a.T @ b
    t01 = P[1, 0] + P[0, 1]
    t12 = P[1, 2] + P[2, 1]
    return np.array(
        [
            [P[0, 0], t01, P[1, 1]],
            [t01, 2 * P[1, 1] + P[0, 2] + P[2, 0], t12],
            [P[1, 1], t12, P[2, 2]],
        ]
    )


@dataclass
class _Optimum:
    """Where an optimizer run stopped, and why."""

    theta: np.ndarray
    evaluation: _Evaluation
    n_iter: int
    grad_norm: float  # max |d llf / d theta|
    hessian_pd: bool
    success: bool
    message: str


def _newton(problem: _RemlProblem, theta0, maxiter: int, gtol: float) -> _Optimum:
    """Damped Newton on f(theta) with the exact Hessian.

    Stops when ``max|d llf/d theta| <= gtol`` at a positive-definite Hessian.  Indefinite
    Hessians (far from the optimum) are made positive definite by taking absolute
    eigenvalues.  The Armijo test allows a rounding-level rise of f (relative 1e-12):
    near the optimum the predicted decrease falls below the rounding error of f, which is
    a sum over all subjects, and the gradient, not f, then decides convergence.
    """
    theta = np.asarray(theta0, dtype=float)
    ev = problem.evaluate(theta)
    message = f"iteration limit ({maxiter}) reached"
    for n_iter in range(maxiter + 1):
        grad_norm = 0.5 * float(np.max(np.abs(ev.grad)))
        eigval, eigvec = np.linalg.eigh(ev.hess)
        hessian_pd = bool(eigval[0] > 0)
        if grad_norm <= gtol and hessian_pd:
            message = "gradient below gtol at a minimum"
            return _Optimum(theta, ev, n_iter, grad_norm, hessian_pd, True, message)
        if n_iter == maxiter:
            break
        scale = np.maximum(np.abs(eigval), 1e-10 * np.max(np.abs(eigval)))
        step = -eigvec @ ((eigvec.T @ ev.grad) / scale)
        # Far from the optimum a Newton step can be huge; keep it within the size of theta.
        step *= min(1.0, (1.0 + np.max(np.abs(theta))) / np.max(np.abs(step)))
        threshold = ev.f + 1e-12 * (1.0 + abs(ev.f))
        slope = float(ev.grad @ step)
        t = 1.0
        trial = problem.evaluate(theta + step)  # near the optimum the full step is accepted
        while trial.f > threshold + 1e-4 * t * slope and t > 1e-10:
            t *= 0.5
            trial = problem.evaluate(theta + t * step, order=0)
        if trial.f > threshold + 1e-4 * t * slope:
            message = "line search failed to decrease the REML criterion"
            break
        theta = theta + t * step
        ev = trial if t == 1.0 else problem.evaluate(theta)
    return _Optimum(theta, ev, n_iter, grad_norm, hessian_pd, False, message)


def _optimize(problem: _RemlProblem, theta0, maxiter: int, gtol: float) -> _Optimum:
    """Newton from theta0; if it fails, L-BFGS-B from theta0 and Newton again from there.

    The fallback guards against a Newton run stalling far from the optimum (e.g. in a flat,
    non-convex region): the quasi-Newton method needs only the gradient and descends
    steadily, and the final Newton run restores the convergence test.
    """
    first = _newton(problem, theta0, maxiter, gtol)
    if first.success:
        first.message = f"Newton: {first.message}"
        return first

    def f_and_grad(theta):
        ev = problem.evaluate(theta, order=1)
        return ev.f, ev.grad

    options = {"maxiter": maxiter, "ftol": 1e-15, "gtol": gtol}
    quasi = optimize.minimize(f_and_grad, theta0, jac=True, method="L-BFGS-B", options=options)
    second = _newton(problem, quasi.x, maxiter, gtol)
    second.n_iter += first.n_iter + quasi.nit
    second.message = (
        f"Newton failed ({first.message}); fallback L-BFGS-B ({quasi.nit} iterations, {quasi.message}) "
        f"then Newton: {second.message}"
    )
    return second


def _start_theta(problem: _RemlProblem, time, codes) -> np.ndarray:
    """Starting theta: one-way ANOVA ratio of between- to within-subject variance of the
    OLS residuals for L11; for L22, one residual SD per within-subject time spread.

    L22 must start away from 0: f is even in L22, so L22 = 0 is a stationary plane.
    """
    n_i = problem.s00
    within_ss = problem.yy - np.sum(problem.c0**2 / n_i)
    within = within_ss / max(problem.n - len(n_i), 1)
    between = np.var(problem.c0 / n_i) - within * np.mean(1.0 / n_i)
    l11 = np.sqrt(max(between / within, 1e-2)) if within > 0 else 1.0
    t_spread = np.sqrt(np.mean((time - (problem.s01 / n_i)[codes]) ** 2))
    return np.array([l11, 0.0, 1.0 / t_spread])


def _as_inputs(y, X, time, groups, term_names):
    """Validate inputs; return float arrays, group codes and term names."""
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns] if term_names is None else list(term_names)
        X = X.to_numpy(dtype=float)
    else:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-dimensional, got shape {X.shape}")
        names = [f"x{j}" for j in range(X.shape[1])] if term_names is None else list(term_names)
    y = np.asarray(y, dtype=float).ravel()
    time = np.asarray(time, dtype=float).ravel()
    groups = pd.Series(np.asarray(groups).ravel())
    n, p = X.shape
    if len(names) != p or len(set(names)) != p:
        raise ValueError(f"term_names must be {p} distinct names, got {names}")
    if not (len(y) == len(time) == len(groups) == n):
        lengths = f"{len(y)}, {n}, {len(time)}, {len(groups)}"
        raise ValueError(f"y, X, time and groups must have equal lengths, got {lengths}")
    for label, arr in (("y", y), ("time", time)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(
                f"{label} has {bad.sum()} missing or non-finite values (first at row {np.argmax(bad)})"
            )
    bad_cols = [names[j] for j in np.flatnonzero(~np.isfinite(X).all(axis=0))]
    if bad_cols:
        raise ValueError(f"X has missing or non-finite values in columns {bad_cols}")
    if groups.isna().any():
        raise ValueError(f"groups has {int(groups.isna().sum())} missing values")
    if n <= p:
        raise ValueError(f"need more observations ({n}) than fixed effects ({p})")
    codes, uniques = pd.factorize(groups, sort=False)
    return y, X, time, codes.astype(np.intp), len(uniques), names


def _column_scales(X, names):
    """RMS of each column, after checking that X has full column rank.

    The columns involved in a linear dependence are those with non-negligible weight in a
    right singular vector of (column-scaled) X with a negligible singular value.
    """
    scales = np.sqrt(np.mean(X * X, axis=0))
    zero = [names[j] for j in np.flatnonzero(scales == 0)]
    if zero:
        raise ValueError(f"X is rank deficient: columns {zero} are all zero")
    r = np.linalg.qr(X / scales, mode="r")
    _, sv, vt = np.linalg.svd(r)
    tol = sv[0] * max(X.shape) * np.finfo(float).eps
    null = vt[sv <= tol]
    if len(null):
        involved = [names[j] for j in np.flatnonzero(np.any(np.abs(null) > 1e-6, axis=0))]
        raise ValueError(
            f"X is rank deficient (rank {X.shape[1] - len(null)} of {X.shape[1]}): "
            f"columns {involved} are linearly dependent"
        )
    return scales


class RandomSlopeMixedModel:
    """Linear mixed model with correlated random intercept and slope per subject, by REML.

    Parameters
    ----------
    alpha : float
        Confidence intervals are at level ``1 - alpha``.
    cov_type : {"statsmodels", "lme4"}
        Covariance of the fixed effects: inverse joint observed information of
        ``(beta, G / sigma^2)`` as in statsmodels (default), or ``sigma^2 (X'V^-1 X)^-1`` as in
        lme4/nlme/SAS.  See the module docstring.
    maxiter : int
        Iteration limit of each optimizer stage: Newton (typically 5-12 iterations are
        used) and, only if that fails, the L-BFGS-B fallback and a second Newton run.
    gtol : float
        Convergence requires ``max|d llf / d theta| <= gtol``, ``theta`` being the Cholesky
        factor of ``G / sigma^2`` (the same parameters statsmodels optimises).

    Attributes (after ``fit``)
    --------------------------
    params_, bse_, pvalues_ : pandas.Series indexed by term
        Fixed effects, standard errors, two-sided Wald p-values (normal reference).
    cov_params_ : pandas.DataFrame
        Covariance of the fixed effects.
    confidence_intervals_ : pandas.DataFrame
        Wald intervals at level ``1 - alpha`` (normal reference).
    cov_re_ : pandas.DataFrame
        ``G``, indexed ``["intercept", "slope"]``.
    re_corr_ : float
        Correlation of random intercept and slope (NaN if a variance is 0).
    scale_ : float
        Residual variance ``sigma^2``.
    llf_ : float
        REML log-likelihood, on the scale of statsmodels' ``MixedLMResults.llf`` (it
        depends on the scaling of X's columns, as every REML likelihood does).
    converged_ : bool
        True iff the (final) Newton run stopped by its convergence test: a positive-definite
        Hessian and ``grad_norm_ <= gtol``.
    on_boundary_ : bool
        ``G`` is (numerically) singular: smallest eigenvalue of ``G / sigma^2`` below
        1e-8 times its largest.
    n_obs_, n_groups_ : int
    n_iter_ : int
        Optimizer iterations, summed over stages.
    grad_norm_ : float
        ``max|d llf / d theta|`` at the solution.
    theta_ : numpy.ndarray
        ``(L11, L21, L22)``, the Cholesky factor of ``G / sigma^2``.
    optimizer_message_ : str
        How the optimizer stopped, per stage.
    """

    def __init__(
        self, alpha: float = 0.05, cov_type: str = "statsmodels", maxiter: int = 100, gtol: float = 1e-6
    ):
        if cov_type not in _COV_TYPES:
            raise ValueError(f"cov_type must be one of {_COV_TYPES}, got {cov_type!r}")
        self.alpha = alpha
        self.cov_type = cov_type
        self.maxiter = maxiter
        self.gtol = gtol

    def fit(
        self, y, X, time, groups, term_names=None, raise_on_failure: bool = True
    ) -> "RandomSlopeMixedModel":
        """Fit by REML.

        Parameters
        ----------
        y : array-like, shape (n,)
            Response.  All inputs are aligned by position (a pandas index is ignored).
        X : array-like or pandas.DataFrame, shape (n, p)
            Fixed-effects design, including the intercept column if wanted; a DataFrame's
            column names become the term names.  Must have full column rank.
        time : array-like, shape (n,)
            Covariate of the random slope (years since baseline).
        groups : array-like, shape (n,)
            Subject identifier, any hashable dtype; rows need not be sorted.  Subjects with
            a single observation are allowed.
        term_names : sequence of str, optional
            Names of X's columns (default: DataFrame columns, else ``x0, x1, ...``).
        raise_on_failure : bool
            If True (default) a fit that does not converge raises :class:`ConvergenceError`;
            if False it returns with ``converged_ = False`` and a ``RuntimeWarning``.

        Raises
        ------
        ValueError
            Missing/non-finite values, mismatched lengths, rank-deficient X (naming the
            columns), or no subject with two distinct times (slope not identifiable).
        ConvergenceError
            See ``raise_on_failure``.

        Warns
        -----
        SingularFitWarning
            The estimate of G is singular (see the module docstring, "Boundary").
        """
        y, X, time, codes, n_groups, names = _as_inputs(y, X, time, groups, term_names)
        scales = _column_scales(X, names)
        Xs = X / scales
        # GLS is linear in y, so fitting y - X b_ols and adding b_ols back is exact; it keeps
        # y'Wy - beta'X'Wy (the residual quadratic form) free of cancellation.
        beta_ols = np.linalg.lstsq(Xs, y, rcond=None)[0]
        problem = _RemlProblem(y - Xs @ beta_ols, Xs, time, codes, n_groups)
        if not np.any(problem.s00 * problem.s11 - problem.s01**2 > 1e-12 * problem.s00 * (1 + problem.s11)):
            raise ValueError("no subject has two distinct times: the random slope is not identifiable")

        opt = _optimize(problem, _start_theta(problem, time, codes), self.maxiter, self.gtol)
        if not opt.success:
            msg = (
                f"REML optimisation did not converge after {opt.n_iter} iterations ({opt.message}); "
                f"max|d llf/d theta| = {opt.grad_norm:.3g} (gtol {self.gtol:g}), "
                f"Hessian {'positive definite' if opt.hessian_pd else 'NOT positive definite'}, "
                f"theta = {np.array2string(opt.theta, precision=6)}"
            )
            if raise_on_failure:
                raise ConvergenceError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

        ev = opt.evaluation
        dof = problem.dof
        scale = ev.qf / dof
        if self.cov_type == "lme4":
            cov_s = scale * linalg.cho_solve(linalg.cho_factor(ev.xwx), np.eye(len(names)))
        else:
            # Observed information of (beta, Psi) for llf = -f/2 is [[X'WX/sigma^2, C/2], [C'/2, T/2]]
            # (C = cross, T = hess_psi_fixed_beta); beta's block of its inverse is a Schur complement.
            info = ev.xwx / scale - 0.5 * ev.cross @ np.linalg.solve(ev.hess_psi_fixed_beta, ev.cross.T)
            cov_s = np.linalg.inv(info)
        theta = _canonical_theta(opt.theta)
        logdet_scales = 2.0 * np.sum(np.log(scales))
        llf = -0.5 * (ev.f + logdet_scales + dof * (1.0 + np.log(2.0 * np.pi / dof)))
        self._set_results(
            names=names,
            params=(beta_ols + ev.beta) / scales,
            cov_params=cov_s / np.outer(scales, scales),
            psi=_psi(theta),
            scale=scale,
            llf=llf,
            converged=opt.success,
            n_obs=len(y),
            n_groups=n_groups,
            n_iter=opt.n_iter,
            grad_norm=opt.grad_norm,
            theta=theta,
            message=opt.message,
        )
        if self.on_boundary_:
            G = self.cov_re_.to_numpy()
            warnings.warn(
                f"boundary (singular) fit: the random-effects covariance G is singular (intercept "
                f"variance {G[0, 0]:.4g}, slope variance {G[1, 1]:.4g}, correlation {self.re_corr_:.4f})",
                SingularFitWarning,
                stacklevel=2,
            )
        return self

    def _set_results(self, names, params, cov_params, psi, scale, llf, converged, n_obs, n_groups, n_iter,
                     grad_norm, theta, message):
        """Store results; shared with :func:`fit_statsmodels_reference`."""
        bse = np.sqrt(np.diag(cov_params))
        z = params / bse
        crit = stats.norm.ppf(1 - self.alpha / 2)
        level = f"{100 * (1 - self.alpha):g}%"
        self.params_ = pd.Series(params, index=names, name="coef")
        self.bse_ = pd.Series(bse, index=names, name="se(coef)")
        self.cov_params_ = pd.DataFrame(cov_params, index=names, columns=names)
        self.z_values_ = pd.Series(z, index=names, name="z")
        self.pvalues_ = pd.Series(2 * stats.norm.sf(np.abs(z)), index=names, name="p")
        self.confidence_intervals_ = pd.DataFrame(
            {f"coef lower {level}": params - crit * bse, f"coef upper {level}": params + crit * bse},
            index=names,
        )
        G = scale * psi
        self.cov_re_ = pd.DataFrame(G, index=_RE_NAMES, columns=_RE_NAMES)
        sd = np.sqrt(np.diag(G))
        self.re_corr_ = float(np.clip(G[0, 1] / (sd[0] * sd[1]), -1, 1)) if np.all(sd > 0) else float("nan")
        eig = np.linalg.eigvalsh(psi)
        self.on_boundary_ = bool(eig[0] <= 1e-8 * max(eig[1], np.finfo(float).tiny))
        self.scale_ = float(scale)
        self.llf_ = float(llf)
        self.converged_ = bool(converged)
        self.n_obs_ = int(n_obs)
        self.n_groups_ = int(n_groups)
        self.n_iter_ = int(n_iter)
        self.grad_norm_ = float(grad_norm)
        self.theta_ = np.asarray(theta, dtype=float)
        self.optimizer_message_ = message

    @property
    def summary(self) -> pd.DataFrame:
        """Fixed effects: coef, se(coef), z, p and confidence limits, one row per term."""
        columns = [self.params_, self.bse_, self.z_values_, self.pvalues_, self.confidence_intervals_]
        return pd.concat(columns, axis=1)

    def __repr__(self):
        if not hasattr(self, "params_"):
            return f"<RandomSlopeMixedModel: unfitted, cov_type={self.cov_type!r}>"
        return (
            f"<RandomSlopeMixedModel: {self.n_obs_} obs, {self.n_groups_} groups, "
            f"REML llf={self.llf_:.4f}, converged={self.converged_}>"
        )


def _canonical_theta(theta):
    """theta and (-L11, -L21, L22), (L11, L21, -L22) give the same G; report L11, L22 >= 0."""
    l11, l21, l22 = theta
    if l11 < 0:
        l11, l21 = -l11, -l21
    return np.array([l11, l21, abs(l22)])


def _psi(theta):
    L = np.array([[theta[0], 0.0], [theta[1], theta[2]]])
    return L @ L.T


def fit_statsmodels_reference(y, X, time, groups, term_names=None, cov_type: str = "statsmodels",
                              alpha: float = 0.05) -> RandomSlopeMixedModel:
    """Fit the same model with statsmodels ``MixedLM`` (the project's reference).

    Per STACK_NOTES, statsmodels' default optimisers do not converge on DXA-scale data
    (between-subject SD ~0.15 against residual SD ~0.012), and ``method=["powell", "lbfgs"]``
    would stop after Powell whenever Powell claims success.  So Powell runs first and a
    separate fit polishes from its result; the polish must report convergence.  The polish
    is BFGS with ``gtol=1e-8`` (on the score per observation): ``MixedLM.fit`` drops
    L-BFGS's tolerance arguments, and L-BFGS's default ``pgtol=1e-5`` leaves scores ~1e-3
    and relative errors ~1e-5 (1e-3 near a zero slope variance); BFGS at ``gtol=1e-8``
    agrees with the exact optimum to ~1e-7.

    Inputs are as for :meth:`RandomSlopeMixedModel.fit`.  Returns a
    :class:`RandomSlopeMixedModel` carrying statsmodels' estimates in the same attributes
    (``n_iter_`` counts Powell iterations plus BFGS gradient evaluations; ``grad_norm_`` is
    the max abs score of statsmodels' profile REML log-likelihood in the Cholesky
    parameters, i.e. in the same ``theta`` as the fast fitter).  statsmodels' warnings (e.g.
    its "may be on the boundary" notice, issued whenever a variance is below 0.01) are
    suppressed because convergence is checked here.

    Raises
    ------
    ConvergenceError
        If the BFGS polish does not report convergence.
    """
    import statsmodels.api as sm

    out = RandomSlopeMixedModel(alpha=alpha, cov_type=cov_type)
    y, X, time, codes, n_groups, names = _as_inputs(y, X, time, groups, term_names)
    _column_scales(X, names)
    model = sm.MixedLM(y, X, groups=codes, exog_re=np.column_stack([np.ones_like(time), time]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        powell = model.fit(reml=True, method="powell", full_output=True)
        result = model.fit(
            reml=True, method="bfgs", start_params=powell.params_object, full_output=True,
            gtol=1e-8, maxiter=1000,
        )
        sqrt_params = result.params_object.get_packed(use_sqrt=True, has_fe=False)
        score = model.score(sqrt_params, profile_fe=True)
        p = len(names)
        if cov_type == "lme4":
            cov = np.linalg.inv(-model.hessian(result.params_object)[0][:p, :p])
        else:
            cov = np.asarray(result.cov_params())[:p, :p]
    grad_norm = float(np.max(np.abs(score)))
    if not result.converged:
        raise ConvergenceError(
            f"statsmodels MixedLM BFGS polish did not converge "
            f"(scipy fmin_bfgs warnflag {result.hist[-1]['warnflag']}); max|score| = {grad_norm:.3g}"
        )
    out._set_results(
        names=names,
        params=np.asarray(result.fe_params),
        cov_params=cov,
        psi=np.asarray(result.cov_re_unscaled),
        scale=result.scale,
        llf=result.llf,
        converged=True,
        n_obs=len(y),
        n_groups=n_groups,
        n_iter=powell.hist[-1]["iterations"] + result.hist[-1]["gcalls"],
        grad_norm=grad_norm,
        theta=_canonical_theta(sqrt_params),
        message="statsmodels Powell, then BFGS polish: converged",
    )
    return out
