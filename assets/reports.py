"""Reports stage: the quarterly cohort report, one partition per quarter."""

from pathlib import Path

import dagster as dg

from cohort.publish import CURRENT, publish
from cohort.report import gather, render
from pipelines.partitions import quarter_cutoff, quarter_label, quarter_partitions
from pipelines.resources import Locations, Warehouse


@dg.asset(
    group_name="reports",
    kinds={"html", "python"},
    owners=["team:epidemiology"],
    partitions_def=quarter_partitions,
    deps=[["cohort", "members"], ["cohort", "attrition"], ["results", "km_curves"]],
    pool="duckdb",
)
def quarterly_report(context: dg.AssetExecutionContext, warehouse: Warehouse, locations: Locations) -> dg.MaterializeResult:
    """The quarterly cohort report for clinicians: cohort flow, fracture curves by aromatase-inhibitor
    exposure and provenance, as the cohort stood at the quarter's data cutoff. Written to
    `COHORT_REPORTS_DIR/<YYYY-Qn>/cohort_report.html` (self-contained), with PNG figures and CSV tables."""
    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        content = gather(con, quarter_label(context.partition_key), cutoff, context.run.run_id)
    path = render(content, locations.reports)
    context.log.info(f"report written to {path}")
    return dg.MaterializeResult(
        metadata={
            "report_path": dg.MetadataValue.path(str(path)),
            "data_cutoff": str(cutoff),
            "cohort_size": content.summary["cohort_size"],
            "fractures": content.summary["fractures"],
        }
    )


@dg.asset(
    key=["published", "warehouse"],
    group_name="reports",
    kinds={"duckdb", "python"},
    owners=["team:data-engineering"],
    partitions_def=quarter_partitions,
    deps=["quarterly_report"],
    pool="duckdb",
)
def published_warehouse(context: dg.AssetExecutionContext, warehouse: Warehouse, locations: Locations) -> dg.MaterializeResult:
    """A read-only copy of the warehouse for statisticians, as it stood at the quarter's data cutoff
    (meta, reference, staging of the deliveries then current, cohort, analysis, results), written to
    `COHORT_PUBLISHED_DIR/<YYYY-Qn>.duckdb` and swapped atomically into `current.duckdb` when it is the
    newest quarter. Readers open it while the pipeline writes the working file."""
    label = quarter_label(context.partition_key)
    path = publish(Path(warehouse.database), locations.published, label, quarter_cutoff(context.partition_key))
    return dg.MaterializeResult(
        metadata={
            "published_path": dg.MetadataValue.path(str(path)),
            "current_path": dg.MetadataValue.path(str(locations.published / CURRENT)),
            "size_mb": round(path.stat().st_size / 1e6, 1),
        }
    )
