"""Validation stage: Great Expectations suites (expectations/*.json, run as SQL inside DuckDB by
cohort.validation) as blocking asset checks on the staging tables of each delivery and on the
cohort tables of each quarter. Results go to `meta.dq_results` (deliveries) and
`meta.cohort_dq_results` (quarters); each delivery gets a data-quality page.

Counts of records shown in metadata (unexpected rows) are small-cell suppressed; counts of
expectations (passed, failed, errored) are not counts of people or records and are shown as they are."""

import dagster as dg

from cohort.contract import TABLES
from cohort.display import markdown_image, markdown_table, suppress_count
from cohort.validation import (
    ExpectationOutcome,
    data_quality_page_path,
    persist_delivery_results,
    persist_quarter_results,
    render_data_quality_page,
    summarize,
    validate_delivery,
    validate_quarter,
)
from pipelines.metadata import shown_outcome, small_cell_threshold, table_metadata
from pipelines.partitions import delivery_partitions, quarter_cutoff
from pipelines.resources import Locations, Warehouse

CHECK_SPECS = [
    dg.AssetCheckSpec(
        name=f"staging_{table}_expectations",
        asset=["staging", table],
        blocking=True,
        description=f"Great Expectations suites expectations/delivered_{table}.json (every delivered record: "
        f"quarantined, duplicated, and per defect family) and expectations/staging_{table}.json (the staged rows: "
        "conformance, completeness, plausibility). A failed `error` expectation blocks downstream assets and "
        f"marks the delivery as not validated. SQL: `sql/validation/delivered_{table}.sql`, "
        f"`sql/validation/staging_{table}.sql` (the relations the suites run on).",
    )
    for table in TABLES
]

COHORT_TABLES = {
    "cohort.members": ["cohort", "members"],
    "cohort.attrition": ["cohort", "attrition"],
    "cohort.ai_episodes": ["cohort", "ai_episodes"],
}


def _cohort_spec(table: str) -> dg.AssetCheckSpec:
    name = table.replace(".", "_")
    return dg.AssetCheckSpec(
        name=f"{name}_expectations",
        asset=COHORT_TABLES[table],
        blocking=True,
        description=f"Great Expectations suite expectations/{name}.json on `{table}` at the quarter's data cutoff; "
        f"a failed `error` expectation blocks the models and the report. SQL: `sql/validation/{name}.sql`.",
    )


def _results_frame(outcomes: list[ExpectationOutcome], threshold: int):
    """Every expectation's outcome as a table, failures first, record counts small-cell suppressed."""
    import pandas as pd

    order = {"errored": 0, "failed": 1, "passed": 2}
    rows = sorted(outcomes, key=lambda o: (order[o.status], o.severity != "error", o.suite, o.name))
    frame = pd.DataFrame(
        [
            {
                "expectation": f"{o.suite}.{o.name}",
                "category": o.category,
                "severity": o.severity,
                "tolerated": f"{o.threshold:.3g}",
                "result": o.status.upper() if o.status != "passed" else "passed",
                "observed": shown.observed_value if not o.errored else (o.error or "")[:120],
                "unexpected": suppress_count(o.unexpected_count, threshold),
                "unexpected_%": "" if shown.unexpected_percent is None else f"{shown.unexpected_percent:.3g}",
                "example_rows": ", ".join(shown.example_keys),
            }
            for o, shown in ((o, shown_outcome(o, threshold)) for o in rows)
        ]
    )
    # a "|" inside a cell would break the markdown table
    return frame if frame.empty else frame.apply(lambda column: column.str.replace("|", "/", regex=False))


def _check_result(asset_key: list[str], check_name: str, outcomes: list[ExpectationOutcome], extra: dict) -> dg.AssetCheckResult:
    failed = [o for o in outcomes if not o.passed]
    blocking = [o for o in outcomes if o.blocking_failure]
    threshold = small_cell_threshold()
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        description=summarize([shown_outcome(o, threshold) for o in outcomes]),
        metadata={
            "expectations": len(outcomes),
            "failed": sum(not o.passed and not o.errored for o in outcomes),
            "errored": sum(o.errored for o in outcomes),
            "blocking_failures": len(blocking),
            "results": dg.MetadataValue.md(markdown_table(_results_frame(outcomes, threshold), max_rows=200)),
            **extra,
        },
    )


@dg.multi_asset_check(specs=CHECK_SPECS, pool="duckdb", name="staging_expectations")
def staging_expectations(context: dg.AssetCheckExecutionContext, warehouse: Warehouse, locations: Locations):
    """Run each staging table's suites on the delivery being ingested (the run's partition), keep the
    results, mark the delivery validated or not, and write its data-quality page."""
    delivery_id = context.run.tags.get("dagster/partition")
    with warehouse.get_connection() as con:
        validation = validate_delivery(con, delivery_id)
        for table, outcomes in validation.outcomes.items():
            persist_delivery_results(con, context.run.run_id, delivery_id, validation.data_cutoff, table, outcomes)
        # Later runs (the quarterly cohort) use only deliveries whose blocking checks passed.
        con.execute("UPDATE meta.deliveries SET validation_passed = ? WHERE delivery_id = ?", [validation.passed, delivery_id])
        page = render_data_quality_page(con, delivery_id, data_quality_page_path(locations.reports, delivery_id))
    context.log.info(f"delivery {delivery_id}: validation {'passed' if validation.passed else 'FAILED'}; page {page}")
    for table in TABLES:
        yield _check_result(
            ["staging", table], f"staging_{table}_expectations", validation.outcomes[table],
            {"delivery_id": delivery_id, "data_quality_page": dg.MetadataValue.path(str(page))},
        )


def _validate_cohort_tables(context: dg.AssetCheckExecutionContext, warehouse: Warehouse, tables: list[str]):
    partition = context.run.tags.get("dagster/partition")
    cutoff = quarter_cutoff(partition)
    with warehouse.get_connection() as con:
        outcomes = validate_quarter(con, cutoff, tables)
        for table in tables:
            persist_quarter_results(con, context.run.run_id, cutoff, table, outcomes[table])
    for table in tables:
        name = table.replace(".", "_")
        yield _check_result(COHORT_TABLES[table], f"{name}_expectations", outcomes[table], {"data_cutoff": str(cutoff)})


@dg.multi_asset_check(
    specs=[_cohort_spec("cohort.members"), _cohort_spec("cohort.attrition")], pool="duckdb", name="cohort_expectations"
)
def cohort_expectations(context: dg.AssetCheckExecutionContext, warehouse: Warehouse):
    """Suites cohort_members and cohort_attrition on the quarter's cohort (run after both are built)."""
    yield from _validate_cohort_tables(context, warehouse, ["cohort.members", "cohort.attrition"])


@dg.multi_asset_check(specs=[_cohort_spec("cohort.ai_episodes")], pool="duckdb", name="ai_episodes_expectations")
def ai_episodes_expectations(context: dg.AssetCheckExecutionContext, warehouse: Warehouse):
    """Suite cohort_ai_episodes on the quarter's aromatase-inhibitor episodes."""
    yield from _validate_cohort_tables(context, warehouse, ["cohort.ai_episodes"])


@dg.asset(
    key=["meta", "dq_results"],
    group_name="validation",
    kinds={"duckdb", "python", "html"},
    owners=["team:data-engineering"],
    partitions_def=delivery_partitions,
    deps=[["staging", t] for t in TABLES],
    pool="duckdb",
    metadata=table_metadata("meta.dq_results"),
    description="Data-quality results of the delivery: every expectation of every delivery suite "
    "(expectations/delivered_<table>.json, staging_<table>.json) with its Kahn category (conformance, "
    "completeness, plausibility), severity, outcome (passed / failed / errored), unexpected count and example "
    "record numbers, and the delivery's data-quality page (`<reports>/data_quality/<delivery_id>.html`). "
    "Materializes only when no blocking (error-severity) expectation failed; the page is written by the checks "
    "either way. Table `meta.dq_results`. SQL: `sql/warehouse/schema.sql` (the table), the suites "
    "run on the relations in `sql/validation/` (e.g. `sql/validation/staging_patients.sql`).",
)
def data_quality_results(context: dg.AssetExecutionContext, warehouse: Warehouse, locations: Locations) -> dg.MaterializeResult:
    """Summarize the delivery's data-quality results per table and Kahn category, with a plot."""
    delivery_id = context.partition_key
    with warehouse.get_connection() as con:
        summary = con.execute(
            "SELECT table_name, category, count(*) AS expectations, count(*) FILTER (passed AND NOT errored) AS passed, "
            "count(*) FILTER (NOT passed AND NOT errored) AS failed, count(*) FILTER (errored) AS errored "
            "FROM meta.dq_results WHERE delivery_id = ? GROUP BY ALL ORDER BY ALL",
            [delivery_id],
        ).df()
        page = render_data_quality_page(con, delivery_id, data_quality_page_path(locations.reports, delivery_id))
    return dg.MaterializeResult(
        metadata={
            # Rows of meta.dq_results are expectations, not people or records: shown as they are.
            "dagster/row_count": int(summary["expectations"].sum()) if len(summary) else 0,
            "summary": dg.MetadataValue.md(markdown_table(summary, max_rows=50)),
            "results_plot": _dq_plot(summary),
            "data_quality_page": dg.MetadataValue.path(str(page)),
        }
    )


def _dq_plot(summary) -> dg.MetadataValue:
    if summary.empty:
        return dg.MetadataValue.md("No data-quality results for this delivery.")
    from cohort.figures import dq_status_figure

    return dg.MetadataValue.md(markdown_image(dq_status_figure(summary), "data-quality results"))
