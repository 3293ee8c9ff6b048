"""Benchmark ingest against DuckDB alone: generate (or reuse) a delivery of N patients, time a plain
`read_csv` of its files into tables, then `ingest_delivery` (raw -> staging + quarantine), and print
and write (bench/out/ingest.json) both times, their ratio, the time of each ingest step and peak memory.

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


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def numbering_mismatches(con, delivery_id: str, file: Path, every: int = 9973) -> tuple[int, int]:
    """Sampled records whose source_record/source_line in raw do not match the file read by Python's
    csv module (which knows where each record starts, quoted line breaks included)."""
    import csv

    table = file.name.split(".")[0]
    expected = {}
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader)
        start = reader.line_num + 1
        for record, row in enumerate(reader, 1):
            if record % every == 0:
                expected[record] = (start, row[0] or None)
            start = reader.line_num + 1
    got = {r: (line, key) for r, line, key in con.execute(
        f"SELECT source_record, source_line, patient_key FROM raw.{table} WHERE delivery_id = ? AND source_record % ? = 0",
        [delivery_id, every]).fetchall()}
    return len(expected), sum(got.get(r) != v for r, v in expected.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--memory-limit", default=None,
                        help="DuckDB memory_limit for the ingest (default: the pipeline's, COHORT_DUCKDB_MEMORY_LIMIT)")
    args = parser.parse_args()

    import duckdb

    from cohort.generator import generate
    from cohort.ingest import ingest_delivery
    from cohort.settings import Settings

    memory_limit = args.memory_limit or Settings.from_env().duckdb_memory_limit

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
    plain_peak = peak_rss_gb()
    reset_peak_rss()
    with duckdb.connect(str(work / "warehouse.duckdb"), config={"memory_limit": memory_limit}) as con:
        started = time.perf_counter()
        outcome = ingest_delivery(con, folder, progress=lambda line: print(f"  {line}", flush=True))
        ingest = time.perf_counter() - started
        ingest_peak = peak_rss_gb()
        sampled = {f.name: numbering_mismatches(con, folder.name, f) for f in sorted(folder.glob("*.csv"))}
    result = {
        "patients": args.patients,
        "duckdb_memory_limit": memory_limit,
        "rows": {t: c["raw"] for t, c in outcome.counts.items()},
        "read_csv_seconds": round(plain, 1),
        "ingest_seconds": round(ingest, 1),
        "ratio": round(ingest / plain, 2),
        "ingest_step_seconds": {name: round(seconds, 1) for name, seconds in outcome.step_seconds.items()},
        "read_csv_peak_rss_gb": round(plain_peak, 2),
        "ingest_peak_rss_gb": round(ingest_peak, 2),
        "record_numbering_check": {name: {"sampled": n, "mismatched": bad} for name, (n, bad) in sampled.items()},
        "load_average": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(result, indent=2))
    (OUT / "ingest.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
