"""Benchmark cohort.generator.generate(): wall time, peak RSS, rows and bytes per size.

Each size runs in a fresh child process so its peak resident set size
(ru_maxrss from wait4) is that run's alone; its CPU time and the machine's load
average are recorded too, since other jobs on the machine stretch wall time.
Results go to bench/out/generator.json.

    python bench/bench_generator.py                      # 20,000 and 1,000,000 patients, CSV
    python bench/bench_generator.py --sizes 20000 --fmt parquet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
from pathlib import Path
from cohort.generator import generate
t0 = time.perf_counter()
generate(Path(sys.argv[1]), patients=int(sys.argv[2]), sites=int(sys.argv[3]), quarters=int(sys.argv[4]),
         seed=int(sys.argv[5]), fmt=sys.argv[6], defects=float(sys.argv[7]),
         progress=lambda msg: print(f"{time.perf_counter() - t0:8.2f}s {msg}", flush=True))
"""


def run_one(size: int, args, work: Path) -> dict:
    out = work / f"gen_{size}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", CHILD, str(out), str(size), str(args.sites), str(args.quarters), str(args.seed),
           args.fmt, str(args.defects)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    log = proc.stdout.read().splitlines()
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"generate failed for {size} patients:\n" + "\n".join(log))
    truth = json.loads((out / "truth.json").read_text())
    rows: dict[str, int] = {}
    for delivery in truth["deliveries"].values():
        for name, meta in delivery["files"].items():
            table = name.split(".")[0]
            rows[table] = rows.get(table, 0) + meta["rows"]
    size_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    result = dict(patients=size, wall_seconds=round(wall, 2), peak_rss_gb=round(usage.ru_maxrss / 1024**2, 3),
                  cpu_user_seconds=round(usage.ru_utime, 2), cpu_system_seconds=round(usage.ru_stime, 2),
                  load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],
                  rows=rows, rows_per_patient={t: round(n / size / args.quarters, 2) for t, n in rows.items()},
                  bytes_on_disk=size_bytes, progress_log=log)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 1_000_000])
    ap.add_argument("--fmt", default="csv", choices=["csv", "csv.gz", "parquet"])
    ap.add_argument("--sites", type=int, default=1)
    ap.add_argument("--quarters", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defects", type=float, default=0.0)
    ap.add_argument("--work-dir", type=Path, default=None, help="where to write the deliveries (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated deliveries")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "generator.json")
    args = ap.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_generator_"))
    results = []
    for size in args.sizes:          # sequential: runs must not compete for the 2 cores
        r = run_one(size, args, work)
        results.append(r)
        cpu = r["cpu_user_seconds"] + r["cpu_system_seconds"]
        print(f"{size:>9,} patients: {r['wall_seconds']:7.2f} s wall, {cpu:.1f} s CPU, {r['peak_rss_gb']:.2f} GB peak RSS, "
              f"{r['bytes_on_disk'] / 1e9:.2f} GB on disk (load average {r['load_average_1min']})")
        for table, n in r["rows"].items():
            print(f"{'':12}{table:<12}{n:>13,} rows ({r['rows_per_patient'][table]}/patient)")
    if args.work_dir is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = dict(tool="bench/bench_generator.py", machine=dict(python=platform.python_version(), cpus=os.cpu_count(),
                                                                platform=platform.platform()),
                  settings=dict(fmt=args.fmt, sites=args.sites, quarters=args.quarters, seed=args.seed,
                                defects=args.defects), results=results)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
