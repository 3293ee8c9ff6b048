"""Benchmark RandomSlopeMixedModel against the statsmodels reference.

For each size, simulates subjects with 2-6 visits (mean 4) using the test suite's
generator (10 fixed effects) plus ``--extra-dummies`` site-of-care dummies (default 4, so
14 fixed effects as in the study's models), fits with the fast fitter and (for the reference sizes) with
``fit_statsmodels_reference``, and records wall time, peak memory, iterations, gradient
norm and the largest differences between the two fits.  Writes JSON to
``bench/out/mixed_model.json`` (or ``--out``).

Times are wall clock (and CPU, which also counts BLAS threads; other jobs on the machine
inflate wall time, so the 1-minute load average is recorded).  Peak memory is the
process's peak resident set size during the fit (Linux ``VmHWM``, reset
just before the fit through ``/proc/self/clear_refs``), reported both in total (it includes
the simulated data) and as the increase over the resident size before the fit.

Usage::

    python bench/bench_mixed_model.py          # 2,000 / 20,000 / 100,000; statsmodels on 2,000 and 20,000
    python bench/bench_mixed_model.py --sizes 2000 --reference-sizes 2000
    python bench/bench_mixed_model.py --no-reference
"""

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cohort.mixed_model import RandomSlopeMixedModel, fit_statsmodels_reference  # noqa: E402
from tests.test_mixed_model import TERMS, simulate_cohort  # noqa: E402


def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measured(fn):
    """Run fn(); return its result, wall and CPU seconds, peak RSS and its increase (MiB)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS high-water mark
    before = _status_kib("VmRSS")
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = _status_kib("VmHWM")
    return result, seconds, cpu_seconds, peak / 1024, (peak - before) / 1024


def fit_record(fit, seconds, cpu_seconds, peak_mib, increase_mib):
    G = fit.cov_re_.to_numpy()
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "load_average_1min_after": os.getloadavg()[0],
        "peak_rss_mib": round(peak_mib, 1),
        "peak_rss_increase_mib": round(increase_mib, 1),
        "converged": fit.converged_,
        "n_iter": fit.n_iter_,
        "grad_norm": fit.grad_norm_,
        "llf": fit.llf_,
        "scale": fit.scale_,
        "cov_re": [G[0, 0], G[1, 0], G[1, 1]],
        "params": fit.params_.to_dict(),
        "bse": fit.bse_.to_dict(),
    }


def differences(ours, ref):
    """Largest absolute and relative differences, per quantity."""
    pairs = {
        "params": (ours.params_.to_numpy(), ref.params_.to_numpy()),
        "bse": (ours.bse_.to_numpy(), ref.bse_.to_numpy()),
        "cov_re": (ours.cov_re_.to_numpy(), ref.cov_re_.to_numpy()),
        "scale": (np.array([ours.scale_]), np.array([ref.scale_])),
        "llf": (np.array([ours.llf_]), np.array([ref.llf_])),
    }
    out = {}
    for name, (a, b) in pairs.items():
        out[f"{name}_max_abs"] = float(np.max(np.abs(a - b)))
        out[f"{name}_max_rel"] = float(np.max(np.abs(a - b) / np.abs(b)))
    # Fixed effects relative to their standard errors (a coefficient may be ~0).
    (ours_beta, ref_beta), ref_se = pairs["params"], pairs["bse"][1]
    out["params_max_abs_over_se"] = float(np.max(np.abs(ours_beta - ref_beta) / ref_se))
    return out


def with_site_dummies(df, k, seed):
    """df[TERMS] plus k dummies of a (k+1)-level subject-level site of care."""
    codes, uniques = pd.factorize(df["subject"])
    site = np.random.default_rng(seed + 1).integers(0, k + 1, len(uniques))[codes]
    return df[TERMS].assign(**{f"care_{j}": (site == j).astype(float) for j in range(1, k + 1)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000],
                        help="numbers of subjects")
    parser.add_argument("--reference-sizes", type=int, nargs="*", default=[2000, 20000],
                        help="sizes also fitted with statsmodels (20,000 takes several minutes)")
    parser.add_argument("--no-reference", action="store_true", help="skip statsmodels entirely")
    parser.add_argument("--extra-dummies", type=int, default=4,
                        help="site-of-care dummies added to X (subject-level, no effect on y)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "mixed_model.json")
    args = parser.parse_args(argv)
    reference_sizes = set() if args.no_reference else set(args.reference_sizes)

    results = []
    for n_subjects in args.sizes:
        df = simulate_cohort(n_subjects=n_subjects, seed=args.seed, visits=(2, 6))
        X = with_site_dummies(df, args.extra_dummies, args.seed)
        data = (df["y"], X, df["t"], df["subject"])
        record = {"n_subjects": n_subjects, "n_obs": len(df), "n_fixed_effects": X.shape[1]}
        ours, *stats = measured(lambda: RandomSlopeMixedModel().fit(*data))
        record["fast"] = fit_record(ours, *stats)
        print(f"{n_subjects:>7} subjects, {len(df):>7} obs: fast fit {stats[0]:8.2f} s ({stats[1]:.2f} s CPU), "
              f"peak RSS {stats[2]:7.0f} MiB (+{stats[3]:.0f}), {ours.n_iter_} Newton iterations, "
              f"|grad| {ours.grad_norm_:.1e}", flush=True)
        if n_subjects in reference_sizes:
            ref, *ref_stats = measured(lambda: fit_statsmodels_reference(*data))
            record["statsmodels"] = fit_record(ref, *ref_stats)
            record["differences"] = differences(ours, ref)
            record["speed_ratio"] = ref_stats[0] / stats[0]
            d = record["differences"]
            print(f"{'':>7} statsmodels {ref_stats[0]:8.2f} s ({ref_stats[1]:.2f} s CPU), peak RSS "
                  f"{ref_stats[2]:7.0f} MiB (+{ref_stats[3]:.0f}); speed ratio {record['speed_ratio']:.0f}x; "
                  "max abs diff: "
                  f"beta {d['params_max_abs']:.1e} ({d['params_max_abs_over_se']:.1e} SE), "
                  f"SE {d['bse_max_abs']:.1e}, G {d['cov_re_max_abs']:.1e}, sigma2 {d['scale_max_abs']:.1e}, "
                  f"llf {d['llf_max_abs']:.1e}; max rel diff: beta {d['params_max_rel']:.1e}, "
                  f"SE {d['bse_max_rel']:.1e}, G {d['cov_re_max_rel']:.1e}, llf {d['llf_max_rel']:.1e}",
                  flush=True)
        results.append(record)
        del df, X, data
        gc.collect()

    import scipy
    import statsmodels

    report = {
        "benchmark": "RandomSlopeMixedModel vs statsmodels MixedLM reference (REML)",
        "design": "simulate_cohort(visits=(2, 6)) from tests/test_mixed_model.py with "
                  f"{args.extra_dummies} extra site-of-care dummies, seed {args.seed}",
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "statsmodels": statsmodels.__version__,
            "cpus": len(os.sched_getaffinity(0)),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
