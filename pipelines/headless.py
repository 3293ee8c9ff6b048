"""Run the whole pipeline without the UI: every delivery in the landing zone, then every quarter
that has data, stage by stage, against the configured warehouse. Used by `cohort run`."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg
import duckdb

from cohort.contract import discover_deliveries
from cohort.report import REPORT_FILE
from cohort.settings import PROJECT_ROOT, Settings
from pipelines.definitions import build_definitions
from pipelines.jobs import STAGE_GROUPS
from pipelines.partitions import delivery_partitions, quarter_key, quarter_label
from pipelines.resources import build_resources

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")
# The progress lines are the console output; Dagster's own event log stays in the instance (and the UI).
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class PipelineError(RuntimeError):
    """A stage failed; the message says which and why."""


@dataclass
class PipelineSummary:
    deliveries_loaded: list[str] = field(default_factory=list)
    deliveries_failed: dict[str, str] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)


def dagster_home() -> Path:
    """DAGSTER_HOME (default: the repo's ignored .dagster_home/), with telemetry off and the duckdb pool set."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    return home


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            # The user's exception is the cause; Dagster's wrapper adds nothing a reader needs.
            root = error.cause if error and error.cause else error
            text = root.message.strip() if root else "failed"
            messages.append(f"{event.step_key}: {text.split(': ', 1)[-1] if root is not error else text}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                messages.append(f"check {evaluation.check_name} failed: {evaluation.description}")
    return "; ".join(messages) or "run failed"


def _stage_keys(defs: dg.Definitions, group: str) -> list[dg.AssetKey]:
    return sorted(dg.AssetSelection.groups(group).resolve(defs.resolve_asset_graph()))


def run_pipeline(settings: Settings, progress: Callable[[str], None] = print, instance: dg.DagsterInstance | None = None) -> PipelineSummary:
    """Ingest and validate every delivery, then build cohort, models and report for every quarter with data.

    Raises PipelineError after doing all it can if any delivery or stage failed.
    """
    deliveries = discover_deliveries(settings.landing_dir)
    if not deliveries:
        raise PipelineError(
            f"no deliveries in {settings.landing_dir} (a delivery is a folder with a manifest.json); "
            "make a synthetic one with `cohort generate --out <landing dir>`"
        )
    if instance is None:
        dagster_home()
        instance = dg.DagsterInstance.get()
    defs = build_definitions(build_resources(settings))
    summary = PipelineSummary()

    known = set(instance.get_dynamic_partitions(delivery_partitions.name))
    instance.add_dynamic_partitions(delivery_partitions.name, [d.name for d in deliveries if d.name not in known])
    ingest_job = defs.resolve_job_def("ingest_new_deliveries")
    for number, folder in enumerate(deliveries, start=1):
        started = time.monotonic()
        progress(f"[ingest {number}/{len(deliveries)}] {folder.name} ...")
        result = ingest_job.execute_in_process(
            run_config=QUIET, partition_key=folder.name, instance=instance, raise_on_error=False
        )
        if result.success:
            summary.deliveries_loaded.append(folder.name)
            progress(f"[ingest {number}/{len(deliveries)}] {folder.name}: staged and validated ({time.monotonic() - started:.1f} s)")
        else:
            summary.deliveries_failed[folder.name] = _failure_message(result)
            progress(f"[ingest {number}/{len(deliveries)}] {folder.name}: FAILED: {summary.deliveries_failed[folder.name]}")

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        cutoffs = [row[0] for row in con.execute(
            "SELECT DISTINCT data_cutoff FROM meta.deliveries WHERE status = 'loaded' AND validation_passed ORDER BY 1").fetchall()]
    quarters = sorted({quarter_key(cutoff) for cutoff in cutoffs})
    quarter_job = defs.resolve_job_def("quarterly_cohort_report")
    for quarter in quarters:
        label = quarter_label(quarter)
        for group in STAGE_GROUPS[2:]:
            started = time.monotonic()
            result = quarter_job.execute_in_process(
                run_config=QUIET,
                partition_key=quarter, instance=instance, raise_on_error=False, asset_selection=_stage_keys(defs, group)
            )
            if not result.success:
                raise PipelineError(f"stage {group} failed for {label}: {_failure_message(result)}")
            progress(f"[{group}] {label}: done ({time.monotonic() - started:.1f} s)")
        summary.reports[label] = settings.reports_dir / label / REPORT_FILE

    if summary.deliveries_failed:
        failed = "; ".join(f"{name}: {reason}" for name, reason in summary.deliveries_failed.items())
        raise PipelineError(f"{len(summary.deliveries_failed)} deliver{'y' if len(summary.deliveries_failed) == 1 else 'ies'} failed: {failed}")
    return summary
