"""Benchmark the validation stage against ingest: generate a delivery of N patients, ingest it into
a fresh DuckDB file (timed), then run every delivery suite on it exactly as the asset check does
(GX's SQL engine inside DuckDB; timed per suite), persist the results and write the data-quality
page (timed). Prints the figures and writes bench/out/validation.json.

    .venv/bin/python bench/bench_validation.py                     # 1,000,000 patients
    .venv/bin/python bench/bench_validation.py --patients 20000

The requirement: validating a delivery takes at most as long as ingesting it (ratio <= 1).
The machine is shared: the load average before and after is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--defects", type=float, default=0.01, help="per-row rate of planted defects (default 0.01)")
    parser.add_argument("--fmt", default="csv", choices=["csv", "csv.gz", "parquet"])
    parser.add_argument("--work", type=Path, default=None, help="working folder, kept (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--memory-limit", default="8GB", help="DuckDB memory_limit for ingest and validation (shared machine)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse <work>/landing (generated) and, if its ingest finished, <work>/warehouse.duckdb and "
                             "the ingest time recorded in <work>/ingest.json: a long run on a shared machine can resume")
    args = parser.parse_args()

    import duckdb
    import great_expectations as gx

    from cohort import validation as V
    from cohort.contract import TABLES
    from cohort.generator import generate
    from cohort.ingest import ingest_delivery

    temporary = args.work is None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_validation_"))
    resume = args.resume and (work / "landing" / "truth.json").is_file()
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    load_before = os.getloadavg()
    say = lambda text: print(text, flush=True)  # noqa: E731

    clock = time.perf_counter()
    if resume:
        truth = json.loads((work / "landing" / "truth.json").read_text())
        if truth["generator"]["patients"] != args.patients:
            raise SystemExit(f"{work}/landing holds {truth['generator']['patients']} patients, not {args.patients}")
        generate_seconds = None
    else:
        truth = generate(work / "landing", patients=args.patients, seed=args.seed, fmt=args.fmt, defects=args.defects,
                         progress=lambda m: say(f"  generate: {m}"))
        generate_seconds = time.perf_counter() - clock
    (delivery_id,) = truth["deliveries"]
    say(f"delivery {delivery_id}: {args.patients:,} patients" + (f", generated in {generate_seconds:.1f} s" if generate_seconds else " (reused)"))

    ingested = work / "ingest.json"
    if not (resume and ingested.is_file()):
        (work / "warehouse.duckdb").unlink(missing_ok=True)
        (work / "warehouse.duckdb.wal").unlink(missing_ok=True)
    con = duckdb.connect(str(work / "warehouse.duckdb"), config={"memory_limit": args.memory_limit})
    if resume and ingested.is_file():
        recorded = json.loads(ingested.read_text())
        ingest_seconds, ingest_peak, rows = recorded["ingest_seconds"], recorded["peak_rss_mb"], recorded["records"]
        say(f"ingest: reusing the warehouse ingested earlier in {ingest_seconds:.1f} s")
    else:
        reset_peak()
        clock = time.perf_counter()
        outcome = ingest_delivery(con, work / "landing" / delivery_id)
        ingest_seconds = time.perf_counter() - clock
        ingest_peak = peak_rss_mb()
        rows = {t: c["raw"] for t, c in outcome.counts.items()}
        ingested.write_text(json.dumps({"ingest_seconds": ingest_seconds, "peak_rss_mb": ingest_peak, "records": rows,
                                        "load_average": os.getloadavg()}))
    say(f"ingest: {ingest_seconds:.1f} s for {sum(rows.values()):,} records ({rows}); peak RSS {ingest_peak:.0f} MB")

    reset_peak()
    suites = []
    outcomes: dict[str, list] = {}
    clock = time.perf_counter()
    context = V.delivery_context(con, delivery_id)
    with V.WarehouseValidator(con, **context) as validator:
        for table in TABLES:
            outcomes[table] = []
            for suite in V.suites_for(table):
                started = time.perf_counter()
                result = validator.validate(suite)
                outcomes[table] += result
                suites.append({"suite": suite.name, "expectations": len(result), "seconds": round(time.perf_counter() - started, 2),
                               "failed": sum(not o.passed and not o.errored for o in result),
                               "errored": sum(o.errored for o in result)})
                say(f"  {suite.name:<24} {len(result):>3} expectations {suites[-1]['seconds']:8.2f} s")
    validate_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    for table, table_outcomes in outcomes.items():
        V.persist_delivery_results(con, "bench", delivery_id, context["data_cutoff"], table, table_outcomes)
    page = V.render_data_quality_page(con, delivery_id, work / "data_quality" / f"{delivery_id}.html")
    persist_seconds = time.perf_counter() - clock
    # what ingest quarantined, by first rule: explains a count above the planted one (a genuine record
    # that is implausible too, e.g. a generated T-score beyond +-10)
    quarantine = {f"{t}/{r}:{c}": n for t, r, c, n in con.execute(
        "SELECT table_name, rule, column_name, count(*) FROM quarantine.rows WHERE delivery_id = ? GROUP BY ALL ORDER BY ALL",
        [delivery_id]).fetchall()}
    validation_seconds = validate_seconds + persist_seconds
    validation_peak = peak_rss_mb()
    con.close()

    every = [o for table in outcomes.values() for o in table]
    planted = truth["deliveries"][delivery_id]["defects"]
    caught = {}
    names = {"exact_duplicate_rows": "exact_duplicate_records", "impossible_values": "impossible_values",
             "future_dates": "future_dates", "unknown_units": "unknown_units", "orphan_rows": "orphan_records",
             "end_before_start": "end_before_start"}
    for kind, per_table in planted.items():
        for table, count in per_table.items():
            match = [o for o in outcomes[table] if o.suite == f"delivered_{table}" and o.name == names[kind]]
            if match or count:
                caught[f"{kind}/{table}"] = {"planted": count, "counted": match[0].unexpected_count if match else None}
    result = {
        "tool": "bench/bench_validation.py",
        "patients": args.patients,
        "records": rows,
        "records_total": sum(rows.values()),
        "defects_rate": args.defects,
        "format": args.fmt,
        "duckdb_memory_limit": args.memory_limit,
        "execution_path": f"Great Expectations {gx.__version__} SQL engine (SQLAlchemy + duckdb_engine) inside DuckDB "
                          f"{duckdb.__version__}; relations materialized as TEMP tables with only the suite's columns; "
                          "GX's queries in autocommit (no transaction)",
        "generate_seconds": None if generate_seconds is None else round(generate_seconds, 1),
        "ingest_seconds": round(ingest_seconds, 1),
        "validation_seconds": round(validation_seconds, 1),
        "validation_suites_seconds": round(validate_seconds, 1),
        "validation_persist_and_page_seconds": round(persist_seconds, 2),
        "ratio_validation_to_ingest": round(validation_seconds / ingest_seconds, 3),
        "meets_requirement": validation_seconds <= ingest_seconds,
        "expectations": len(every),
        "expectations_failed": sum(not o.passed and not o.errored for o in every),
        "expectations_errored": sum(o.errored for o in every),
        "blocking_failures": sum(o.blocking_failure for o in every),
        "defects_planted_vs_counted": caught,
        "all_defects_counted_exactly": all(v["planted"] == v["counted"] for v in caught.values()),
        "quarantined_by_first_rule": quarantine,
        "peak_rss_mb": {"ingest": round(ingest_peak), "validation": round(validation_peak)},
        "per_suite": suites,
        "data_quality_page_bytes": page.stat().st_size,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }
    say(f"validation: {validation_seconds:.1f} s (suites {validate_seconds:.1f} s, results + page {persist_seconds:.1f} s); "
        f"ingest {ingest_seconds:.1f} s; ratio {result['ratio_validation_to_ingest']:.3f}; "
        f"defects counted exactly: {result['all_defects_counted_exactly']}")
    OUT.mkdir(exist_ok=True)
    (OUT / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
    say(f"written to {OUT / 'validation.json'}")
    if temporary and not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
