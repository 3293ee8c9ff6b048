"""Benchmark `TimeVaryingCox.fit` on simulated counting-process data (optionally vs lifelines).

Simulates ~`--rows` (start, stop] rows, ~5 per subject, in whole days (default) or months, so
event times tie, with 10 covariates (time-varying exposure, dose and lab value; baseline age, BMI, eGFR,
testosterone and three binary conditions) and piecewise-exponential event times tuned to
~2,000 events at 250,000 rows. Prints and writes JSON to bench/out/survival.json.

    .venv/bin/python bench/bench_survival.py --rows 250000 [--unit month] [--with-lifelines]

lifelines' cost grows with the number of distinct event times (~1,900 with days, ~120 with
months); ours barely does.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cohort.survival import TimeVaryingCox  # noqa: E402

COVARIATES = [
    "exposed", "dose", "lab", "age", "bmi", "egfr", "testosterone", "diabetes", "steroids", "prior_fracture",
]
BETA = np.array([0.4, 0.15, 0.1, 0.5, -0.2, -0.1, -0.15, 0.3, 0.35, 0.6])


def simulate(n_rows: int, seed: int = 0, rows_per_subject: int = 5, unit: str = "day") -> pd.DataFrame:
    """Counting-process rows: follow-up 24-120 months cut into 1-9 intervals per subject,
    times in whole `unit`s."""
    rng = np.random.default_rng(seed)
    per_month = {"day": 30, "month": 1}[unit]
    n_subj = n_rows // rows_per_subject
    follow = rng.integers(24, 121, n_subj) * per_month
    k = rng.integers(1, 2 * rows_per_subject, n_subj)
    sid = np.repeat(np.arange(n_subj), k)
    pos = np.arange(len(sid)) - np.repeat(np.cumsum(k) - k, k)  # interval number within subject
    start = np.floor(follow[sid] * pos / k[sid])
    stop = np.floor(follow[sid] * (pos + 1) / k[sid])
    n = len(sid)
    base = rng.normal(size=(n_subj, 4))
    binary = rng.random((n_subj, 3)) < [0.2, 0.1, 0.15]
    exposed = rng.random(n) < 0.3
    X = np.column_stack([
        exposed, exposed * rng.gamma(2.0, 0.5, n), rng.normal(size=n), base[sid], binary[sid],
    ]).astype(float)
    rate = 3.1e-4 / per_month * np.exp(X @ BETA)
    wait = rng.exponential(1 / rate)
    event = wait < stop - start
    stop = np.where(event, np.ceil(start + wait), stop)
    before = np.cumsum(event) - event  # events in earlier rows of the same subject
    first = np.cumsum(k) - k
    keep = (before - np.repeat(before[first], k)) == 0
    df = pd.DataFrame(X, columns=COVARIATES)
    df.insert(0, "id", sid)
    df.insert(1, "start", start)
    df.insert(2, "stop", stop)
    df.insert(3, "event", event.astype(int))
    return df[keep].reset_index(drop=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--unit", choices=["day", "month"], default="day")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-lifelines", action="store_true", help="also fit lifelines' CoxTimeVaryingFitter (~3 min at 250k)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "survival.json")
    args = parser.parse_args()

    df = simulate(args.rows, unit=args.unit)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model = TimeVaryingCox().fit(df, "event", covariates=COVARIATES, id_col="id")
        times.append(time.perf_counter() - t0)
    result = {
        "rows": len(df),
        "time_unit": args.unit,
        "subjects": model.n_subjects_,
        "events": model.n_events_,
        "covariates": len(COVARIATES),
        "distinct_event_times": int(df.loc[df.event == 1, "stop"].nunique()),
        "newton_iterations": model.n_iter_,
        "fit_seconds_first": round(times[0], 3),
        "fit_seconds_min": round(min(times), 3),
        "peak_rss_mb_after_fit": round(peak_rss_mb(), 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(model.summary[["coef", "se(coef)", "p"]].assign(planted=BETA).round(4).to_string())

    if args.with_lifelines:
        from lifelines import CoxTimeVaryingFitter

        cols = ["id", "start", "stop", "event", *COVARIATES]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = CoxTimeVaryingFitter().fit(df[cols], event_col="event", id_col="id", start_col="start", stop_col="stop")
        result["lifelines_seconds"] = round(time.perf_counter() - t0, 2)
        result["speedup_vs_lifelines"] = round(result["lifelines_seconds"] / min(times), 1)
        result["max_abs_coef_diff"] = float(np.abs(model.params_ - ref.params_).max())
        result["max_abs_se_diff"] = float(np.abs(model.standard_errors_ - ref.standard_errors_).max())
        result["log_likelihood_diff"] = float(model.log_likelihood_ - ref.log_likelihood_)
        result["peak_rss_mb_with_lifelines"] = round(peak_rss_mb(), 1)

    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
