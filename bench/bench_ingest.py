"""Benchmark ingest against DuckDB alone: generate (or reuse) a delivery of N patients, time a plain
`read_csv` of its files into tables, then `ingest_delivery` (raw -> staging + quarantine), and print
and write (bench/out/ingest.json) both times, their ratio and peak memory.

    .venv/bin/python bench/bench_ingest.py --patients 1000000
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def peak_rss_gb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    import duckdb

    from cohort.generator import generate
    from cohort.ingest import ingest_delivery

    data = OUT / f"delivery_{args.patients}"
    if not (data / "truth.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        started = time.perf_counter()
        generate(data, patients=args.patients, seed=args.seed)
        print(f"generated {args.patients:,} patients in {time.perf_counter() - started:.0f} s")
    folder = next(p for p in data.iterdir() if (p / "manifest.json").exists())
    work = OUT / "ingest_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    with duckdb.connect(str(work / "plain.duckdb")) as con:
        started = time.perf_counter()
        for file in sorted(folder.glob("*.csv*")):
            con.execute(f"CREATE TABLE {file.name.split('.')[0]} AS SELECT * FROM read_csv(?)", [str(file)])
        plain = time.perf_counter() - started
    with duckdb.connect(str(work / "warehouse.duckdb")) as con:
        started = time.perf_counter()
        outcome = ingest_delivery(con, folder)
        ingest = time.perf_counter() - started
    result = {
        "patients": args.patients,
        "rows": {t: c["raw"] for t, c in outcome.counts.items()},
        "read_csv_seconds": round(plain, 1),
        "ingest_seconds": round(ingest, 1),
        "ratio": round(ingest / plain, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "load_average": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(result, indent=2))
    (OUT / "ingest.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
