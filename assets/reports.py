"""Reports stage: the quarterly cohort report, one partition per quarter."""

import dagster as dg

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
