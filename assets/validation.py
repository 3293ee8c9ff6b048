"""Validation stage: Great Expectations suites (expectations/staging_<table>.json) as blocking
asset checks on each staging table, results kept in `meta.dq_results`."""

from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from cohort.contract import TABLES
from cohort.display import markdown_table
from cohort.validation import ExpectationOutcome, validate_frame
from pipelines.partitions import delivery_partitions
from pipelines.resources import Locations, Warehouse

CHECK_SPECS = [
    dg.AssetCheckSpec(
        name=f"staging_{table}_expectations",
        asset=["staging", table],
        blocking=True,
        description=f"Great Expectations suite expectations/staging_{table}.json (conformance, completeness, "
        "plausibility); any failed `error` expectation blocks downstream assets.",
    )
    for table in TABLES
]


def _check_result(table: str, outcomes: list[ExpectationOutcome]) -> dg.AssetCheckResult:
    failed = [o for o in outcomes if not o.passed]
    blocking = [o for o in failed if o.blocking_failure]
    frame = pd.DataFrame(
        [
            {
                "expectation": o.expectation,
                "column": o.column,
                "category": o.category,
                "severity": o.severity,
                "result": "errored" if o.errored else ("passed" if o.passed else "failed"),
                "observed": o.observed_value,
                "unexpected": o.unexpected_count,
                "unexpected_%": None if o.unexpected_percent is None else round(o.unexpected_percent, 3),
                "example_records": ",".join(map(str, o.example_records)),
            }
            for o in outcomes
        ]
    )
    return dg.AssetCheckResult(
        asset_key=["staging", table],
        check_name=f"staging_{table}_expectations",
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        description=(
            f"{len(failed)} of {len(outcomes)} expectations failed"
            + (f"; blocking: {', '.join(sorted({f'{o.expectation}({o.column})' for o in blocking}))}" if blocking else "")
        ),
        metadata={
            "expectations": len(outcomes),
            "failed": len(failed),
            "errored": sum(o.errored for o in outcomes),
            "results": dg.MetadataValue.md(markdown_table(frame, max_rows=100)),
        },
    )


def _persist(con, run_id: str, delivery_id: str, table: str, outcomes: list[ExpectationOutcome]) -> None:
    now = datetime.now(timezone.utc)
    rows = pd.DataFrame(
        [
            {
                "run_id": run_id, "delivery_id": delivery_id, "table_name": table, "expectation": o.expectation,
                "column_name": o.column, "category": o.category, "severity": o.severity, "passed": o.passed,
                "errored": o.errored, "observed_value": o.observed_value, "unexpected_count": o.unexpected_count,
                "unexpected_percent": o.unexpected_percent, "example_records": ",".join(map(str, o.example_records)),
                "error": o.error, "validated_at": now,
            }
            for o in outcomes
        ]
    )
    con.execute("DELETE FROM meta.dq_results WHERE delivery_id = ? AND table_name = ?", [delivery_id, table])
    con.execute("INSERT INTO meta.dq_results BY NAME SELECT * FROM rows")


@dg.multi_asset_check(specs=CHECK_SPECS, pool="duckdb", name="staging_expectations")
def staging_expectations(context: dg.AssetCheckExecutionContext, warehouse: Warehouse):
    """Run each staging table's GX suite on the delivery being ingested."""
    delivery_id = context.run.tags.get("dagster/partition")
    blocking_failures = 0
    with warehouse.get_connection() as con:
        for table in TABLES:
            frame = con.execute(f"SELECT * FROM staging.{table} WHERE delivery_id = ?", [delivery_id]).df()
            outcomes = validate_frame(frame, f"staging_{table}")
            _persist(con, context.run.run_id, delivery_id, table, outcomes)
            blocking_failures += sum(o.blocking_failure for o in outcomes)
            yield _check_result(table, outcomes)
        # Later runs (the quarterly cohort) use only deliveries whose blocking checks passed.
        con.execute(
            "UPDATE meta.deliveries SET validation_passed = ? WHERE delivery_id = ?", [blocking_failures == 0, delivery_id]
        )


@dg.asset(
    key=["meta", "dq_results"],
    group_name="validation",
    kinds={"duckdb", "python"},
    owners=["team:data-engineering"],
    partitions_def=delivery_partitions,
    deps=[["staging", t] for t in TABLES],
    pool="duckdb",
)
def data_quality_results(context: dg.AssetExecutionContext, warehouse: Warehouse, locations: Locations) -> dg.MaterializeResult:
    """Data-quality results of the delivery (table `meta.dq_results`): every expectation of every
    staging suite with its Kahn category, severity and outcome. Materializes only when no
    blocking (error-severity) expectation failed."""
    with warehouse.get_connection() as con:
        summary = con.execute(
            "SELECT table_name, category, count(*) AS expectations, count(*) FILTER (passed) AS passed, "
            "count(*) FILTER (NOT passed AND NOT errored) AS failed, count(*) FILTER (errored) AS errored "
            "FROM meta.dq_results WHERE delivery_id = ? GROUP BY ALL ORDER BY ALL",
            [context.partition_key],
        ).df()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(summary["expectations"].sum()) if len(summary) else 0,
            "summary": dg.MetadataValue.md(markdown_table(summary, max_rows=50)),
        }
    )
