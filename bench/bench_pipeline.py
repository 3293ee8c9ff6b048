"""Benchmark the whole pipeline: generate a delivery of N patients, run every stage, and print and
write (bench/out/pipeline.json) wall time and peak memory per stage.

    .venv/bin/python bench/bench_pipeline.py --patients 20000

Peak memory per stage is the process's peak resident set size during that stage (Linux: VmHWM,
reset between stages through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the generated delivery and warehouse")
    args = parser.parse_args()

    import dagster as dg

    from cohort.generator import generate
    from cohort.settings import Settings
    from pipelines.headless import run_pipeline

    work = OUT / f"pipeline_{args.patients}"
    shutil.rmtree(work, ignore_errors=True)
    settings = Settings(landing_dir=work / "landing", duckdb_path=work / "warehouse.duckdb",
                        reports_dir=work / "reports", published_dir=work / "published")
    stages: list[dict] = []
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages.append({"stage": name, "seconds": round(now - clock, 2), "peak_rss_mb": round(peak_rss_mb(), 1)})
        print(f"{name:<40} {now - clock:8.1f} s   peak {peak_rss_mb():8.0f} MB", flush=True)
        reset_peak()
        clock = time.perf_counter()

    reset_peak()
    generate(settings.landing_dir, patients=args.patients, seed=args.seed)
    lap("generate")

    def progress(line: str) -> None:
        match = re.match(r"\[(\w+)[^\]]*\] (\S+): (?!\.\.\.)", line)
        if match:
            lap(f"{match.group(1)} {match.group(2).rstrip(':')}")

    run_pipeline(settings, progress=progress, instance=dg.DagsterInstance.ephemeral())
    result = {
        "patients": args.patients,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "stages": stages,
        "total_seconds": round(sum(s["seconds"] for s in stages), 1),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "pipeline.json").write_text(json.dumps(result, indent=2))
    print(f"total {result['total_seconds']} s; written to {OUT / 'pipeline.json'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
