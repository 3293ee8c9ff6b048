"""The `cohort` command: generate synthetic deliveries, run the pipeline headlessly, open the UI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from cohort.settings import PROJECT_ROOT, Settings

DEMO_PATIENTS = 2000
DEMO_SEED = 20251


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "COHORT_LANDING_DIR": args.landing,
        "COHORT_DUCKDB_PATH": args.duckdb,
        "COHORT_REPORTS_DIR": args.reports,
    }
    return Settings.from_env({**os.environ, **{k: str(v) for k, v in overrides.items() if v}})


def cmd_generate(args: argparse.Namespace) -> int:
    from cohort.generator import generate

    truth = generate(
        Path(args.out), patients=args.patients, sites=args.sites, quarters=args.quarters, seed=args.seed,
        fmt=args.format, defects=args.defects, last_cutoff=date.fromisoformat(args.last_cutoff),
        progress=lambda line: print(line, flush=True),
    )
    deliveries = ", ".join(sorted(truth["deliveries"]))
    print(f"wrote {deliveries} and truth.json to {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.headless import PipelineError, run_pipeline

    settings = _settings(args)
    print(f"landing: {settings.landing_dir}\nwarehouse: {settings.duckdb_path}\nreports: {settings.reports_dir}", flush=True)
    try:
        summary = run_pipeline(settings, progress=lambda line: print(line, flush=True))
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for quarter, path in summary.reports.items():
        print(f"report {quarter}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not any(settings.landing_dir.glob("*/manifest.json")):
        print(f"landing folder {settings.landing_dir} is empty: generating a synthetic demo delivery", flush=True)
        args.out, args.patients, args.sites, args.quarters, args.seed = settings.landing_dir, DEMO_PATIENTS, 1, 1, DEMO_SEED
        args.format, args.defects, args.last_cutoff = "csv", 0.0, "2025-06-30"
        cmd_generate(args)
    return cmd_run(args)


def cmd_dictionary(args: argparse.Namespace) -> int:
    import duckdb

    from cohort.dictionary import render

    with duckdb.connect(args.duckdb, read_only=True) as con:
        text = render(con)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.headless import dagster_home

    dagster_home()
    command = ["dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "--port", str(args.port)]
    return subprocess.call([str(Path(sys.executable).with_name("dagster")), *command[1:]], cwd=PROJECT_ROOT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohort", description="Aromatase inhibitors and bone health: cohort pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write synthetic deliveries (with planted truth) to a folder")
    generate.add_argument("--out", required=True, help="folder to write delivery folders and truth.json into")
    generate.add_argument("--patients", type=int, default=2000, help="patients in all (split across sites)")
    generate.add_argument("--sites", type=int, default=1)
    generate.add_argument("--quarters", type=int, default=1, help="quarterly full snapshots per site")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--format", choices=["csv", "csv.gz", "parquet"], default="csv")
    generate.add_argument("--defects", type=float, default=0.0, help="rate of injected defects per row, e.g. 0.01")
    generate.add_argument("--last-cutoff", default="2025-06-30", help="data cutoff of the newest snapshot (a quarter end)")
    generate.set_defaults(handler=cmd_generate)

    for name, handler, text in (
        ("run", cmd_run, "ingest every delivery and build cohort, models and reports for every quarter with data"),
        ("demo", cmd_demo, "like run, generating a synthetic demo delivery first if the landing folder is empty"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--landing", help="landing folder (default: $COHORT_LANDING_DIR or data/landing)")
        sub.add_argument("--duckdb", help="warehouse file (default: $COHORT_DUCKDB_PATH or data/warehouse.duckdb)")
        sub.add_argument("--reports", help="reports folder (default: $COHORT_REPORTS_DIR or reports/out)")
        sub.set_defaults(handler=handler)

    dictionary = commands.add_parser("dictionary", help="write the data dictionary (markdown) of a warehouse file")
    dictionary.add_argument("--duckdb", required=True, help="a warehouse built by the pipeline")
    dictionary.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "data_dictionary.md"))
    dictionary.set_defaults(handler=cmd_dictionary)

    ui = commands.add_parser("ui", help="start the Dagster UI (dagster dev) on this project")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
