"""Benchmark how long the Dagster code location takes to load (target: under 5 s).

Each repeat runs in a fresh Python process, as a code server does:

- `import`: import `pipelines.definitions` (Dagster itself included), resolve the asset graph and
  every job, and build the repository snapshot the code server sends to the webserver
  (`RepositorySnap.from_def`), timed inside the process (`load_seconds`, wall; `load_cpu_seconds`,
  the process's CPU time, which a loaded machine inflates much less) and from outside, with the
  interpreter's own start-up (`process_seconds`);
- `validate`: the wall time of `dagster definitions validate -w workspace.yaml` (CLI start-up, instance,
  load, validation), the command a developer or CI runs.

Prints median and max per measure and writes bench/out/code_location.json.

    .venv/bin/python bench/bench_code_location.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
TARGET_SECONDS = 5.0

LOAD_SCRIPT = """
import json, time
started, cpu_started = time.perf_counter(), time.process_time()
import dagster as dg
dagster_imported = time.perf_counter()
from pipelines.definitions import defs
imported = time.perf_counter()
graph = defs.resolve_asset_graph()
repository = defs.get_repository_def()
jobs = repository.get_all_jobs()
from dagster._core.remote_representation.external_data import RepositorySnap
snap = RepositorySnap.from_def(repository)
done, cpu_done = time.perf_counter(), time.process_time()
print(json.dumps({
    "load_seconds": done - started,
    "load_cpu_seconds": cpu_done - cpu_started,
    "import_dagster_seconds": dagster_imported - started,
    "import_definitions_seconds": imported - dagster_imported,
    "resolve_and_snapshot_seconds": done - imported,
    "assets": len(graph.get_all_asset_keys()),
    "asset_checks": len(list(graph.asset_check_keys)),
    "jobs": len(jobs),
}))
"""


def _environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(home)  # a throwaway instance: telemetry off, nothing written to the repo
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def time_import(env: dict[str, str]) -> dict:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"loading pipelines.definitions failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    return result


def time_validate(env: dict[str, str]) -> float:
    dagster = Path(sys.executable).with_name("dagster")
    started = time.perf_counter()
    completed = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"`dagster definitions validate` failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}")
    return wall


def summary(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "min": round(min(values), 2),
        "runs": [round(v, 2) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-validate", action="store_true", help="time only the import")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench_code_location_"))
    try:
        shutil.copyfile(ROOT / "pipelines" / "dagster.yaml", home / "dagster.yaml")
        env = _environment(home)
        load_before = os.getloadavg()
        time_import(env)  # warm the OS file cache (and __pycache__) once; not counted
        imports, validates = [], []
        for repeat in range(1, args.repeats + 1):
            imports.append(time_import(env))
            line = (f"[{repeat}/{args.repeats}] import+resolve+snapshot {imports[-1]['load_seconds']:.2f} s "
                    f"(CPU {imports[-1]['load_cpu_seconds']:.2f} s; process {imports[-1]['process_seconds']:.2f} s)")
            if not args.skip_validate:
                validates.append(time_validate(env))
                line += f"; dagster definitions validate {validates[-1]:.2f} s"
            print(line, flush=True)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(home, ignore_errors=True)

    load = summary([r["load_seconds"] for r in imports])
    load_cpu = summary([r["load_cpu_seconds"] for r in imports])
    process = summary([r["process_seconds"] for r in imports])
    result = {
        "tool": "bench/bench_code_location.py",
        "what": "fresh Python process: import pipelines.definitions (dagster included), resolve the asset graph and "
        "jobs, build the RepositorySnap a code server serves; and `dagster definitions validate -w workspace.yaml`",
        "target_seconds": TARGET_SECONDS,
        "repeats": args.repeats,
        "assets": imports[0]["assets"],
        "asset_checks": imports[0]["asset_checks"],
        "jobs": imports[0]["jobs"],
        "load_seconds": load,
        "load_cpu_seconds": load_cpu,
        "process_seconds": process,
        "breakdown_median_seconds": {
            key: round(statistics.median(r[key] for r in imports), 2)
            for key in ("import_dagster_seconds", "import_definitions_seconds", "resolve_and_snapshot_seconds")
        },
        "validate_seconds": summary(validates) if validates else None,
        "meets_target": load["max"] < TARGET_SECONDS,
        "meets_target_cpu": load_cpu["max"] < TARGET_SECONDS,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "python": platform.python_version(),
        },
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "code_location.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"code location load (import + resolve + snapshot): median {load['median']:.2f} s, max {load['max']:.2f} s "
          f"(target < {TARGET_SECONDS:.0f} s: {'met' if result['meets_target'] else 'NOT met'})")
    print(f"CPU time of the load: median {load_cpu['median']:.2f} s, max {load_cpu['max']:.2f} s "
          f"(target < {TARGET_SECONDS:.0f} s: {'met' if result['meets_target_cpu'] else 'NOT met'}; load average "
          f"{result['machine']['loadavg_before'][0]} -> {result['machine']['loadavg_after'][0]} on {os.cpu_count()} CPUs)")
    print(f"fresh process wall time: median {process['median']:.2f} s, max {process['max']:.2f} s")
    print(f"breakdown (median): {result['breakdown_median_seconds']}")
    if validates:
        print(f"dagster definitions validate: median {result['validate_seconds']['median']:.2f} s, "
              f"max {result['validate_seconds']['max']:.2f} s")
    print(f"wrote {OUT / 'code_location.json'}")


if __name__ == "__main__":
    main()
