"""Reports stage: the quarterly cohort report, one partition per quarter."""

from pathlib import Path

import dagster as dg

from pipelines.partitions import quarter_cutoff, quarter_label, quarter_partitions
from pipelines.resources import Locations, Warehouse


def _model_tables() -> list[dg.AssetKey]:
    """Every asset of the models stage: the report reads whichever results tables they fill."""
    from assets import models

    keys: set[dg.AssetKey] = set()
    for definition in dg.load_assets_from_modules([models]):
        keys.update(getattr(definition, "keys", []))
    return sorted(keys, key=lambda k: k.to_user_string())


@dg.asset(
    group_name="reports",
    kinds={"html", "pdf", "python"},
    owners=["team:epidemiology"],
    partitions_def=quarter_partitions,
    deps=[["cohort", "members"], ["cohort", "attrition"], ["analysis", "bmd_long"],
          *[k for k in _model_tables() if k not in (dg.AssetKey(["cohort", "members"]),)]],
    pool="duckdb",
)
def quarterly_report(context: dg.AssetExecutionContext, warehouse: Warehouse, locations: Locations) -> dg.MaterializeResult:
    """The quarterly cohort report for clinicians, as the cohort stood at the quarter's data cutoff:
    key findings, data sources and data quality, protocol, cohort flow, Table 1 with SMDs, PS overlap,
    BMD trajectories and estimates, fracture curves, rates and Cox models, sensitivity analyses, change
    since the previous quarter, limitations and provenance. Every count is small-cell suppressed (with
    complementary suppression). Written to `COHORT_REPORTS_DIR/<YYYY-Qn>/`: `cohort_report.html`
    (self-contained), `cohort_report.pdf`, `figures/*.png`, `tables/*.csv`, `provenance.json`.
    Backfilling a past quarter rebuilds it with the same numbers."""
    from cohort.report import gather, write_report  # numpy, pandas: loaded by the run, not the code location

    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        content = gather(con, quarter_label(context.partition_key), cutoff, context.run.run_id)
    output = write_report(content, locations.reports)
    report = output.report
    if output.browser is not None and not output.browser.ok:
        raise dg.Failure(
            description=f"the report at {output.html} does not render cleanly in Chromium: "
            f"console errors {output.browser.console_errors[:3]}, broken images {output.browser.broken_images}, "
            f"external requests {output.browser.external_requests[:3]}",
            metadata={"report_path": dg.MetadataValue.path(str(output.html))},
        )
    if output.pdf_problem:
        context.log.warning(output.pdf_problem)
    for error in report.errors:
        context.log.error(f"report section not built: {error}")
    context.log.info(f"report written to {output.html}")
    summary = report.ledger.summary()
    metadata = {
        "report_path": dg.MetadataValue.path(str(output.html)),
        "pdf_path": dg.MetadataValue.path(str(output.pdf)) if output.pdf else output.pdf_problem or "no PDF",
        "data_cutoff": str(cutoff),
        "cohort_size": report.ledger.text(("n", "all")),
        "fractures": report.ledger.text(("end", "fracture", "all")),
        "figures": len(output.figures),
        "tables": len(output.tables),
        "counts_suppressed": f"{summary['primary']} below the threshold, {summary['complementary']} complementary",
        "sections_not_available": ", ".join(report.unavailable_sections) or "none",
        "flags": dg.MetadataValue.md("\n".join(f"- {f}" for f in report.flags) or "none"),
        "section_errors": dg.MetadataValue.md("\n".join(f"- {e}" for e in report.errors) or "none"),
    }
    return dg.MaterializeResult(metadata=metadata)


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
    from cohort.publish import CURRENT, publish

    label = quarter_label(context.partition_key)
    path = publish(Path(warehouse.database), locations.published, label, quarter_cutoff(context.partition_key))
    return dg.MaterializeResult(
        metadata={
            "published_path": dg.MetadataValue.path(str(path)),
            "current_path": dg.MetadataValue.path(str(locations.published / CURRENT)),
            "size_mb": round(path.stat().st_size / 1e6, 1),
        }
    )
