"""Benchmark the BMD mixed models through the real path: analysis.bmd_long in a DuckDB warehouse ->
the `bmd_change_models` Dagster asset (per site: load, design matrix, primary + LC-MS/MS + crude fits,
residuals, figures, writes) at network scale; and the statsmodels reference on subsets.

    .venv/bin/python bench/bench_bmd.py                                  # 100,000 simulated patients
    .venv/bin/python bench/bench_bmd.py --source pipeline --patients 100000   # generator + real ingest/cohort
    .venv/bin/python bench/bench_bmd.py --statsmodels-sizes 2000 20000
    .venv/bin/python bench/bench_bmd.py --only-statsmodels --statsmodels-sizes 20000 --work DIR  # reuse a warehouse

Data (`--source`):
  simulated  analysis.bmd_long written directly (tests/test_bmd_models.simulate_bmd_long: 2-6 scans
             per patient and site, mean 4, 1-2 years apart; AI, estradiol tiers, age, BMI, per-scan
             manufacturer, 10 sites of care), so the benchmark measures the models, not ingest;
  pipeline   cohort.generator deliveries run through the real ingest and cohort assets first
             (tests/test_bmd_models.build_bmd_warehouse; validation skipped).

Measured: wall and CPU seconds (CPU includes BLAS threads; other jobs on the machine inflate wall
time, so the load average is recorded) and peak resident memory (Linux VmHWM, reset through
/proc/self/clear_refs before each measured step). BLAS is limited to one thread (--blas-threads) in our
fits and, for a fair ratio, in statsmodels' too: on this shared 2-core machine OpenBLAS threads only
slowed both down. Writes bench/out/bmd.json (bmd_statsmodels.json with --only-statsmodels).
"""

from __future__ import annotations

import argparse
import gc
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
PARTITION, CUTOFF = "2025-04-01", "2025-06-30"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measured(fn):
    """fn() with wall and CPU seconds and peak RSS (MiB) during the call."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, {"wall_seconds": round(time.perf_counter() - start, 3), "cpu_seconds": round(time.process_time() - cpu, 3),
                    "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 1), "load_average_1min": round(os.getloadavg()[0], 2)}


def simulated_warehouse(database: Path, patients: int, seed: int) -> dict:
    import duckdb
    import pandas as pd

    from cohort.sql import sql_text
    from tests.test_bmd_models import simulate_bmd_long

    rows = simulate_bmd_long(n_patients=patients, seed=seed, scans=(2, 6),
                             care_sites=tuple(f"site{i:02d}" for i in range(1, 11)))
    with duckdb.connect(str(database)) as con:
        con.execute(sql_text("cohort/schema"))
        con.register("rows", rows.assign(data_cutoff=pd.Timestamp(CUTOFF).date()))
        con.execute("INSERT INTO analysis.bmd_long BY NAME SELECT * FROM rows")
        con.unregister("rows")
    return {"rows": len(rows)}


def pipeline_warehouse(root: Path, patients: int, sites: int, seed: int) -> dict:
    from tests.test_bmd_models import build_bmd_warehouse

    settings, _, _ = build_bmd_warehouse(root, patients=patients, sites=sites, seed=seed, include_models=False)
    shutil.rmtree(settings.landing_dir, ignore_errors=True)  # the warehouse is root / "warehouse.duckdb"
    return {}


def per_site_breakdown(database: Path, blas_threads: int | None) -> list[dict]:
    """The asset's steps one by one (same SQL, same functions), timed per site and analysis."""
    import duckdb

    from assets.models import bmd_rows
    from cohort.bmd import ANALYSES, SKELETAL_SITES, BmdChangeModel, build_design, prepare_rows

    out = []
    with duckdb.connect(str(database), read_only=True) as con:
        for site in SKELETAL_SITES:
            rows, load = measured(lambda: prepare_rows(bmd_rows(con, CUTOFF, site)))
            entry = {"site": site, "scans": len(rows), "load": load, "analyses": {}}
            total_wall, total_cpu = load["wall_seconds"], load["cpu_seconds"]
            for analysis in ANALYSES:
                design, build = measured(lambda: build_design(rows, analysis, site))
                model, fit = measured(lambda: BmdChangeModel(analysis=analysis, blas_threads=blas_threads).fit(design))
                d = model.diagnostics_
                entry["analyses"][analysis] = {
                    "design": build, "fit_with_residuals": fit, "fit_only_wall_seconds": round(model.fit_seconds_, 3),
                    "fit_only_cpu_seconds": round(model.fit_cpu_seconds_, 3), "patients": d["n_patients"],
                    "fixed_effects": design.X.shape[1], "converged": d["converged"], "iterations": d["n_iterations"],
                    "grad_norm": d["grad_norm"]}
                total_wall += build["wall_seconds"] + fit["wall_seconds"]
                total_cpu += build["cpu_seconds"] + fit["cpu_seconds"]
                del design, model
            entry["site_total_wall_seconds"], entry["site_total_cpu_seconds"] = round(total_wall, 2), round(total_cpu, 2)
            print(f"  {site:<13} {entry['scans']:>8,} scans  load {load['wall_seconds']:.2f} s  "
                  + "  ".join(f"{a} {v['design']['wall_seconds'] + v['fit_with_residuals']['wall_seconds']:.2f} s "
                              f"(REML {v['fit_only_wall_seconds']:.2f} s wall / {v['fit_only_cpu_seconds']:.2f} s CPU)"
                              for a, v in entry["analyses"].items())
                  + f"  = {total_wall:.1f} s wall / {total_cpu:.1f} s CPU", flush=True)
            out.append(entry)
            del rows
    return out


def statsmodels_ratio(database: Path, sizes: list[int], seed: int, blas_threads: int | None) -> list[dict]:
    """Primary lumbar-spine model on a random subset of N patients: ours vs fit_statsmodels_reference."""
    import duckdb

    from assets.models import bmd_rows
    from cohort.bmd import BmdChangeModel, limit_blas_threads
    from cohort.mixed_model import ConvergenceError, fit_statsmodels_reference

    with duckdb.connect(str(database), read_only=True) as con:
        rows = bmd_rows(con, CUTOFF, "lumbar_spine")
    ids = rows["patient_id"].unique()
    out = []
    for n in sizes:
        chosen = np.random.default_rng(seed + n).choice(ids, size=min(n, len(ids)), replace=False)
        subset = rows[rows["patient_id"].isin(chosen)]
        model, ours = measured(lambda: BmdChangeModel(blas_threads=blas_threads).fit(subset, "lumbar_spine"))
        design = model.design_
        entry = {"patients": len(chosen), "scans": len(subset), "fixed_effects": design.X.shape[1],
                 "ours": ours | {"reml_fit_wall_seconds": round(model.fit_seconds_, 3),
                                 "reml_fit_cpu_seconds": round(model.fit_cpu_seconds_, 3)}}
        print(f"  statsmodels reference on {len(chosen):,} patients ...", flush=True)
        try:  # statsmodels under the same BLAS thread limit as ours (threads only slow it down here too)
            with limit_blas_threads(blas_threads):
                ref, sm = measured(lambda: fit_statsmodels_reference(*design.fit_args(),
                                                                     term_names=list(design.X.columns)))
        except ConvergenceError as error:
            entry["statsmodels"] = {"converged": False, "error": str(error)}
            out.append(entry)
            continue
        m = model.model_
        rel = lambda a, b, floor=None: float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))  # noqa: E731
                                                     / (np.abs(np.asarray(b, float)) if floor is None
                                                        else np.maximum(np.abs(np.asarray(b, float)), floor))))
        entry["statsmodels"] = sm | {"converged": True}
        entry["ratio_wall"] = round(sm["wall_seconds"] / model.fit_seconds_, 1)
        entry["ratio_cpu"] = round(sm["cpu_seconds"] / model.fit_cpu_seconds_, 1)
        entry["max_rel_diff"] = {"params": rel(m.params_, ref.params_, ref.bse_), "bse": rel(m.bse_, ref.bse_),
                                 "cov_re": rel(m.cov_re_, ref.cov_re_), "scale": rel(m.scale_, ref.scale_),
                                 "llf": rel(m.llf_, ref.llf_)}
        print(f"  {len(chosen):,} patients: ours {model.fit_seconds_:.2f} s wall / {model.fit_cpu_seconds_:.2f} s CPU; "
              f"statsmodels {sm['wall_seconds']:.1f} s wall / {sm['cpu_seconds']:.1f} s CPU; ratio "
              f"{entry['ratio_wall']}x wall, {entry['ratio_cpu']}x CPU; max rel diff {entry['max_rel_diff']}",
              flush=True)
        out.append(entry)
    return out


def materialize_asset(database: Path, blas_threads: int) -> dict:
    """The real asset (dg.materialize of bmd_change_models), timed, with the REML fit times it recorded."""
    import dagster as dg
    import duckdb

    from assets.models import bmd_change_models
    from pipelines.resources import Warehouse

    print("materializing results/bmd_change + results/bmd_trajectory (real asset) ...", flush=True)
    run, asset = measured(lambda: dg.materialize(
        [bmd_change_models], partition_key=PARTITION, resources={"warehouse": Warehouse(database=str(database))},
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"bmd_change_models": {"config": {"blas_threads": blas_threads}}}}))
    with duckdb.connect(str(database), read_only=True) as con:
        fits = con.execute("SELECT skeletal_site, analysis, any_value(fit_seconds), any_value(n_patients), "
                           "any_value(n_scans), bool_and(converged) FROM results.bmd_change GROUP BY ALL "
                           "ORDER BY ALL").fetchall()
    asset |= {"success": run.success, "reml_fits": [
        {"site": s, "analysis": a, "reml_fit_wall_seconds": round(f, 3), "patients": p, "scans": n, "converged": c}
        for s, a, f, p, n, c in fits]}
    print(f"asset: { {k: v for k, v in asset.items() if k != 'reml_fits'} }", flush=True)
    for f in asset["reml_fits"]:
        print(f"  {f['site']:<13} {f['analysis']:<10} REML fit {f['reml_fit_wall_seconds']:.2f} s wall "
              f"({f['patients']:,} patients, {f['scans']:,} scans)")
    return asset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--source", choices=("simulated", "pipeline"), default="simulated")
    parser.add_argument("--sites", type=int, default=2, help="generator sites (--source pipeline)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--statsmodels-sizes", type=int, nargs="*", default=[2000])
    parser.add_argument("--skip-breakdown", action="store_true")
    parser.add_argument("--only-statsmodels", action="store_true", help="skip the asset and the breakdown")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads in the fits (0: library default)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the warehouse (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the warehouse")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/out/bmd.json (bmd_statsmodels.json with --only-statsmodels)")
    args = parser.parse_args()
    args.out = args.out or OUT / ("bmd_statsmodels.json" if args.only_statsmodels else "bmd.json")

    own_home = None if os.environ.get("DAGSTER_HOME") else tempfile.mkdtemp(prefix="dagster_home_")
    if own_home:
        os.environ["DAGSTER_HOME"] = own_home
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_bmd_"))
    work.mkdir(parents=True, exist_ok=True)
    database = work / "warehouse.duckdb"
    result = {"tool": "bench/bench_bmd.py", "source": args.source, "patients": args.patients,
              "blas_threads": args.blas_threads or "library default",
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "total_memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}}
    try:
        if not database.exists():
            print(f"preparing analysis.bmd_long ({args.source}, {args.patients:,} patients) ...", flush=True)
            _, result["preparation"] = measured(
                lambda: simulated_warehouse(database, args.patients, args.seed) if args.source == "simulated"
                else pipeline_warehouse(work, args.patients, args.sites, args.seed))
        import duckdb

        with duckdb.connect(str(database), read_only=True) as con:
            result["bmd_long"] = {"rows": con.execute("SELECT count(*) FROM analysis.bmd_long").fetchone()[0]}
            result["bmd_long"]["rows_by_site"] = dict(con.execute(
                "SELECT skeletal_site, count(*) FROM analysis.bmd_long GROUP BY 1 ORDER BY 1").fetchall())
            result["bmd_long"]["patients"] = con.execute(
                "SELECT count(DISTINCT (source_site, patient_key)) FROM analysis.bmd_long").fetchone()[0]
        print(f"bmd_long: {result['bmd_long']}", flush=True)

        def save():  # after every stage, so a long statsmodels run lost midway keeps the rest
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")

        if args.only_statsmodels:
            args.skip_breakdown = True
        else:
            result["asset"] = materialize_asset(database, args.blas_threads)
            save()
        if not args.skip_breakdown:
            print("per-site breakdown (same SQL and functions as the asset):", flush=True)
            result["per_site"] = per_site_breakdown(database, args.blas_threads or None)
            save()
        result["statsmodels"] = []
        for size in args.statsmodels_sizes:
            result["statsmodels"] += statsmodels_ratio(database, [size], args.seed, args.blas_threads or None)
            save()
        print(f"written to {args.out}")
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        if own_home:
            shutil.rmtree(own_home, ignore_errors=True)


if __name__ == "__main__":
    main()
