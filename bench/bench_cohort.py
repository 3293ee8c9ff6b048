"""Benchmark the cohort stage: build every cohort and analysis table for one data cutoff from an
ingested delivery of N patients, timing each SQL file (median of --repeat builds); prints and
writes bench/out/cohort.json.

    .venv/bin/python bench/bench_cohort.py --patients 1000000

The delivery (bench/out/delivery_N) and its ingested warehouse (bench/out/cohort_warehouse_N.duckdb)
are cached between runs; only the cohort SQL is timed, on a connection set up as the pipeline's
(cohort.settings.Settings.duckdb_config: memory limit, insertion order).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from datetime import date
from pathlib import Path

OUT = Path(__file__).parent / "out"
COHORT_SQL = ("ai_episodes", "estradiol_results", "members", "exposure_segments", "fracture_intervals", "bmd_long")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3,
                        help="builds timed in a row; the figures are each file's median (this machine is shared and noisy)")
    args = parser.parse_args()

    import duckdb

    from cohort.generator import generate
    from cohort.ingest import ingest_delivery
    from cohort.protocol import load_protocol
    from cohort.settings import Settings
    from cohort.sql import run_sql, sql_text

    data = OUT / f"delivery_{args.patients}"
    if not (data / "truth.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        generate(data, patients=args.patients, seed=args.seed)
    warehouse = OUT / f"cohort_warehouse_{args.patients}.duckdb"
    if not warehouse.exists():
        with duckdb.connect(str(warehouse)) as con:
            ingest_delivery(con, next(p for p in data.iterdir() if (p / "manifest.json").exists()))
            con.execute("UPDATE meta.deliveries SET validation_passed = true")
    cutoff = date.fromisoformat(json.loads((data / "truth.json").read_text())["generator"]["last_cutoff"])
    runs: dict[str, list[float]] = {name: [] for name in COHORT_SQL}
    config = Settings.from_env().duckdb_config
    with duckdb.connect(str(warehouse), config=config) as con:
        con.execute(sql_text("cohort/schema"))
        for run in range(1, args.repeat + 1):
            for name in COHORT_SQL:
                started = time.perf_counter()
                run_sql(con, f"cohort/{name}", data_cutoff=cutoff, **load_protocol().sql_variables())
                runs[name].append(round(time.perf_counter() - started, 2))
                print(f"build {run}: {name:<20} {runs[name][-1]:7.1f} s", flush=True)
        rows = {t: con.execute(f"SELECT count(*) FROM {t} WHERE data_cutoff = ?", [cutoff]).fetchone()[0]
                for t in ("cohort.members", "cohort.exposure_segments", "analysis.fracture_intervals", "analysis.bmd_long")}
    if not rows["cohort.members"]:
        raise SystemExit(f"no cohort members at {cutoff}: is the delivery in {warehouse} loaded and validated?")
    timings = {name: statistics.median(seconds) for name, seconds in runs.items()}
    result = {
        "patients": args.patients, "duckdb_config": config, "repeat": args.repeat,
        "seconds": timings, "total_seconds": round(sum(timings.values()), 1),
        "build_totals": [round(sum(seconds[i] for seconds in runs.values()), 1) for i in range(args.repeat)],
        "rows": rows, "load_average": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(result, indent=2))
    (OUT / "cohort.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
