"""Coverage of the BMD mixed models' 95% CIs over generated cohorts, through the real pipeline.

For each seed: generate a cohort (default 5,000 patients at 2 sites, as tests/test_bmd_models.py),
run the real ingest, cohort and BMD-model assets in Dagster on a fresh warehouse (validation skipped,
as in the test), then compare every planted effect of truth.json with its 95% CI:

- the published estimands (results.bmd_change, analysis = primary): ai_current, e2_lt10, e2_10_20,
  e2_ge40, e2_unknown;
- the other planted fixed effects, from the same model refitted on analysis.bmd_long with
  cohort.bmd.BmdChangeModel (identical numbers): time, age_x_time, bmi_x_time and the baseline
  effects age_c, bmi_c, intercept.

Also the confounding check: the crude AI contrast (time + current AI only) and the adjusted model
without BMI against the planted AI effect. Writes bench/out/coverage_bmd.json (per-term coverage,
per-seed details) and prints a summary.

    .venv/bin/python bench/coverage_bmd.py                 # 20 seeds (1..20)
    .venv/bin/python bench/coverage_bmd.py --seeds 5 --patients 3000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

SITES = ("lumbar_spine", "femoral_neck", "total_hip")
ESTIMANDS = ("ai_current", "e2_lt10", "e2_10_20", "e2_ge40", "e2_unknown")
OTHER = {"time": "time", "age_x_time": "age_x_time_per_10y", "bmi_x_time": "bmi_x_time_per_5"}


def binomial_interval(k: int, n: int) -> list[float]:
    """Exact (Clopper-Pearson) 95% interval of a proportion."""
    from scipy import stats

    low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return [round(float(low), 4), round(float(high), 4)]


def one_seed(seed: int, patients: int, sites: int, work: Path) -> dict:
    import duckdb

    from cohort.bmd import BmdChangeModel
    from tests.test_bmd_models import build_bmd_warehouse

    root = work / f"seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started, cpu = time.perf_counter(), time.process_time()
    settings, truth, _ = build_bmd_warehouse(root, patients=patients, sites=sites, seed=seed)
    pipeline_seconds = time.perf_counter() - started
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        change = con.execute("SELECT * FROM results.bmd_change").df()
        rows = con.execute("SELECT * FROM analysis.bmd_long").df()
    planted = truth["bmd_model"]["sites"]
    checks, confounding = [], []
    for site in SITES:
        model = BmdChangeModel().fit(rows, site)
        summary = model.summary
        base = planted[site]["baseline"]
        values = {t: planted[site][t] for t in ESTIMANDS} | {t: planted[site][k] for t, k in OTHER.items()} | {
            "age_c": base["age_per_10y_pct"], "bmi_c": base["bmi_per_5_pct"],
            "intercept": 100 * base["log_sbmd_at_reference"]}
        published = change[(change["skeletal_site"] == site) & (change["analysis"] == "primary")].set_index("term")
        for term, value in values.items():
            if term in published.index:  # the pipeline's own row
                r = published.loc[term]
                est, low, high, se = r.estimate_pct_per_year, r.ci_low, r.ci_high, r.std_error
            else:
                r = summary.loc[term]
                est, low, high, se = r.pct_per_year, r.ci_low, r.ci_high, r.se_pct
            checks.append({"site": site, "term": term, "truth": value, "estimate": round(float(est), 5),
                           "ci_low": round(float(low), 5), "ci_high": round(float(high), 5),
                           "z": round(float((est - value) / se), 3), "covered": bool(low <= value <= high)})
        crude = change[(change["skeletal_site"] == site) & (change["analysis"] == "crude")].set_index("term")
        no_bmi = BmdChangeModel(omit_terms=("bmi_c", "bmi_x_time")).fit(rows, site).summary.loc["ai_current"]
        true_ai = planted[site]["ai_current"]
        confounding.append({
            "site": site, "truth": true_ai,
            "adjusted": round(float(published.loc["ai_current", "estimate_pct_per_year"]), 4),
            "crude": round(float(crude.loc["ai_current", "estimate_pct_per_year"]), 4),
            "crude_covers_truth": bool(crude.loc["ai_current", "ci_low"] <= true_ai <= crude.loc["ai_current", "ci_high"]),
            "adjusted_without_bmi": round(float(no_bmi.pct_per_year), 4),
            "without_bmi_covers_truth": bool(no_bmi.ci_low <= true_ai <= no_bmi.ci_high),
        })
    shutil.rmtree(root, ignore_errors=True)
    return {"seed": seed, "pipeline_seconds": round(pipeline_seconds, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "n_patients": {s: int(change.loc[change["skeletal_site"] == s, "n_patients"].iloc[0]) for s in SITES},
            "all_covered": all(c["covered"] for c in checks), "checks": checks, "confounding": confounding}


def summarize(results: list[dict]) -> dict:
    checks = [dict(c, seed=r["seed"]) for r in results for c in r["checks"]]
    terms = list(dict.fromkeys(c["term"] for c in checks))
    per_term = {}
    for term in terms:
        part = [c for c in checks if c["term"] == term]
        k = sum(c["covered"] for c in part)
        per_term[term] = {"covered": k, "n": len(part), "coverage": round(k / len(part), 4),
                          "exact_95ci": binomial_interval(k, len(part)),
                          "mean_z": round(float(np.mean([c["z"] for c in part])), 3),
                          "sd_z": round(float(np.std([c["z"] for c in part], ddof=1)), 3) if len(part) > 1 else None}
    estimand = [c for c in checks if c["term"] in ESTIMANDS]
    conf = [c for r in results for c in r["confounding"]]
    k_all, k_est = sum(c["covered"] for c in checks), sum(c["covered"] for c in estimand)
    return {
        "coverage_all_effects": {"covered": k_all, "n": len(checks), "coverage": round(k_all / len(checks), 4),
                                 "exact_95ci": binomial_interval(k_all, len(checks))},
        "coverage_estimands": {"covered": k_est, "n": len(estimand), "coverage": round(k_est / len(estimand), 4),
                               "exact_95ci": binomial_interval(k_est, len(estimand))},
        "per_term": per_term,
        "seeds_with_every_effect_covered": [r["seed"] for r in results if r["all_covered"]],
        "confounding": {
            "mean_bias_adjusted": round(float(np.mean([c["adjusted"] - c["truth"] for c in conf])), 4),
            "mean_bias_crude": round(float(np.mean([c["crude"] - c["truth"] for c in conf])), 4),
            "mean_bias_adjusted_without_bmi": round(float(np.mean([c["adjusted_without_bmi"] - c["truth"]
                                                                   for c in conf])), 4),
            "crude_ci_covers_truth": f"{sum(c['crude_covers_truth'] for c in conf)}/{len(conf)}",
            "without_bmi_ci_covers_truth": f"{sum(c['without_bmi_covers_truth'] for c in conf)}/{len(conf)}",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT / "coverage_bmd.json")
    parser.add_argument("--resume", action="store_true", help="keep the seeds already in --out, run the others")
    args = parser.parse_args()

    own_home = None if os.environ.get("DAGSTER_HOME") else tempfile.mkdtemp(prefix="dagster_home_")
    if own_home:
        os.environ["DAGSTER_HOME"] = own_home
    work = Path(tempfile.mkdtemp(prefix="coverage_bmd_"))
    results = []
    if args.resume and args.out.exists():
        results = [r for r in json.loads(args.out.read_text())["results"]
                   if args.first_seed <= r["seed"] < args.first_seed + args.seeds]
    done = {r["seed"] for r in results}
    started = time.perf_counter()
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if seed in done:
                continue
            result = one_seed(seed, args.patients, args.sites, work)
            results.append(result)
            missed = [f"{c['site']}/{c['term']} (z={c['z']:+.2f})" for c in result["checks"] if not c["covered"]]
            print(f"seed {seed}: {len(result['checks']) - len(missed)}/{len(result['checks'])} covered"
                  f"{'; missed ' + ', '.join(missed) if missed else ''} ({result['pipeline_seconds']} s)", flush=True)
            summary = summarize(results)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "tool": "bench/coverage_bmd.py",
                "design": f"{args.patients} patients at {args.sites} sites per seed, generated by cohort.generator "
                          "and run through the real ingest, cohort and BMD-model assets (validation skipped)",
                "nominal": 0.95,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "seeds": [r["seed"] for r in results],
                "wall_seconds": round(time.perf_counter() - started, 1),
                **summary,
                "results": results,
            }, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if own_home:
            shutil.rmtree(own_home, ignore_errors=True)
    s = summarize(results)
    print(f"coverage, all planted effects: {s['coverage_all_effects']}")
    print(f"coverage, estimands: {s['coverage_estimands']}")
    for term, row in s["per_term"].items():
        print(f"  {term:<12} {row['covered']}/{row['n']} = {row['coverage']:.3f}  mean z {row['mean_z']:+.2f}")
    print(f"confounding: {s['confounding']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
