"""Jobs an analyst launches, named for what they do."""

import dagster as dg

from pipelines.partitions import delivery_partitions, quarter_partitions

ingest_new_deliveries = dg.define_asset_job(
    "ingest_new_deliveries",
    selection=dg.AssetSelection.groups("ingest", "validation"),
    partitions_def=delivery_partitions,
    description="Ingest one delivery (the partition) into raw, staging and quarantine, then validate it with "
    "the Great Expectations suites. The delivery sensor launches it for every new delivery folder.",
)

rebuild_cohort_and_models = dg.define_asset_job(
    "rebuild_cohort_and_models",
    selection=dg.AssetSelection.groups("cohort", "models"),
    partitions_def=quarter_partitions,
    description="Rebuild the cohort and refit the models as they stood at a quarter's data cutoff.",
)

quarterly_cohort_report = dg.define_asset_job(
    "quarterly_cohort_report",
    selection=dg.AssetSelection.groups("cohort", "models", "reports"),
    partitions_def=quarter_partitions,
    description="Cohort, models and the clinician report for a closed quarter. Run by the quarterly schedule; "
    "backfill a past quarter to rebuild its report with the same numbers.",
)

STAGE_GROUPS = ("ingest", "validation", "cohort", "models", "reports")
