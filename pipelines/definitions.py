"""The Dagster code location: every asset, check, job, schedule and sensor of the cohort pipeline."""

import dagster as dg

from assets import cohort, ingest, models, reports, validation
from pipelines.jobs import ingest_new_deliveries, quarterly_cohort_report, rebuild_cohort_and_models
from pipelines.resources import build_resources
from pipelines.schedules import quarterly_report_schedule
from pipelines.sensors import delivery_sensor


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """All definitions, with the environment's resources unless others are given (tests)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingest, validation, cohort, models, reports]),
        asset_checks=dg.load_asset_checks_from_modules([ingest, validation]),
        jobs=[ingest_new_deliveries, rebuild_cohort_and_models, quarterly_cohort_report],
        schedules=[quarterly_report_schedule],
        sensors=[delivery_sensor],
        resources=resources if resources is not None else build_resources(),
        executor=dg.in_process_executor,  # DuckDB allows one writer process
    )


defs = build_definitions()
