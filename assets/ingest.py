"""Ingest stage: each delivery folder in the landing zone -> raw, staging and quarantine in DuckDB."""

import dagster as dg
import pandas as pd

from cohort.contract import TABLES
from cohort.display import figure_png, markdown_table, png_data_uri
from cohort.ingest import IngestOutcome, ingest_delivery
from cohort.sql import set_variables, sql_text
from pipelines.metadata import column_schema, preview
from pipelines.partitions import delivery_partitions
from pipelines.resources import Locations, Warehouse

TABLE_MEANING = {
    "patients": "Patients of the delivery: sex at birth, birth year, enrollment window, death date.",
    "medications": "Dispensings mapped to ingredient and drug class (aromatase inhibitor, testosterone, bone-active drugs, glucocorticoids); end dates derived from days' supply.",
    "labs": "Lab results in canonical units (estradiol pg/mL, testosterone ng/dL, vitamin D ng/mL, lipids mg/dL), censored results kept with their flag.",
    "dxa": "DXA bone density per skeletal site and scan, standardized across manufacturers (sBMD) with the raw value kept.",
    "diagnoses": "ICD-10-CM diagnoses, codes normalized without the dot.",
}

STAGING_SPECS = [
    dg.AssetSpec(
        ["staging", table],
        group_name="ingest",
        kinds={"duckdb", "sql"},
        owners=["team:data-engineering"],
        description=f"{meaning} Table `staging.{table}`; built by `sql/staging/{table}.sql`.",
    )
    for table, meaning in TABLE_MEANING.items()
]
FRACTURES_SPEC = dg.AssetSpec(
    ["staging", "fractures"],
    group_name="ingest",
    kinds={"duckdb", "sql"},
    owners=["team:data-engineering"],
    deps=[["staging", "diagnoses"]],
    description="Incident fragility fractures derived from ICD-10-CM per the contract (initial encounters only, "
    "same-site codes within 90 days merged, pathological fractures excluded). Table `staging.fractures`; "
    "built by `sql/staging/fractures.sql`.",
)
QUARANTINE_SPEC = dg.AssetSpec(
    ["quarantine", "rows"],
    group_name="ingest",
    kinds={"duckdb", "sql"},
    owners=["team:data-engineering"],
    description="Every delivered record that could not go to staging, with the rule it broke, its file and record "
    "number, and its original values. Table `quarantine.rows`; routed by `sql/staging/route_typed_rows.sql`.",
)


def _table_metadata(con, outcome: IngestOutcome, table: str) -> dict:
    counts = outcome.counts.get(table, {})
    reasons = [r for r in outcome.quarantine_reasons if r[0] == table]
    metadata = {
        "dagster/row_count": counts.get("staging", 0),
        "raw_rows": counts.get("raw", 0),
        "quarantined_rows": counts.get("quarantined", 0),
        "exact_duplicates_removed": counts.get("duplicates", 0),
        "ingest_status": outcome.status,
        "dagster/column_schema": column_schema(con, f"staging.{table}"),
        "preview": preview(con, f"staging.{table}", "delivery_id = ?", [outcome.delivery_id]),
    }
    if extras := outcome.extra_columns.get(table):
        metadata["extra_columns_kept_in_raw"] = ", ".join(extras)
    if reasons:
        frame = pd.DataFrame(reasons, columns=["table", "rule", "column", "rows"]).drop(columns="table")
        metadata["quarantine_reasons"] = dg.MetadataValue.md(markdown_table(frame))
    return metadata


@dg.asset_check(
    asset=["quarantine", "rows"],
    name="row_conservation",
    blocking=True,
    pool="duckdb",
    description="Every delivered record is accounted for: per table, raw rows = staging rows + quarantined rows "
    "+ exact duplicates removed, and the counts in meta.ingest_counts match the tables. SQL "
    "`sql/staging/row_conservation.sql`.",
)
def row_conservation(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
    delivery_id = context.run.tags.get("dagster/partition")
    with warehouse.get_connection() as con:
        set_variables(con, delivery_id=delivery_id)
        broken = con.execute(sql_text("staging/row_conservation")).df()
    return dg.AssetCheckResult(
        passed=broken.empty,
        description="raw = staging + quarantine + duplicates for every table" if broken.empty
        else f"row conservation broken in: {', '.join(broken['table_name'])}",
        metadata={"broken_tables": dg.MetadataValue.md(markdown_table(broken)) if not broken.empty else "none"},
    )


@dg.multi_asset(
    name="ingest_delivery",
    specs=[*STAGING_SPECS, FRACTURES_SPEC, QUARANTINE_SPEC],
    partitions_def=delivery_partitions,
    pool="duckdb",
    can_subset=False,
)
def ingest_delivery_asset(context: dg.AssetExecutionContext, warehouse: Warehouse, locations: Locations):
    """Load one delivery (the partition) atomically: manifest and checksums checked, every record
    typed and harmonized into staging or quarantined with its reason, nothing lost."""
    folder = locations.landing / context.partition_key
    with warehouse.get_connection() as con:
        outcome = ingest_delivery(con, folder)
        context.log.info(f"delivery {outcome.delivery_id}: {outcome.status}")
        for table in TABLES:
            yield dg.MaterializeResult(asset_key=["staging", table], metadata=_table_metadata(con, outcome, table))
        fractures = con.execute(
            "SELECT count(*) FROM staging.fractures WHERE delivery_id = ?", [outcome.delivery_id]
        ).fetchone()[0]
        yield dg.MaterializeResult(
            asset_key=["staging", "fractures"],
            metadata={
                "dagster/row_count": fractures,
                "dagster/column_schema": column_schema(con, "staging.fractures"),
                "preview": preview(con, "staging.fractures", "delivery_id = ?", [outcome.delivery_id]),
            },
        )
        quarantined = sum(c.get("quarantined", 0) for c in outcome.counts.values())
        yield dg.MaterializeResult(
            asset_key=["quarantine", "rows"],
            metadata={
                "dagster/row_count": quarantined,
                "dagster/column_schema": column_schema(con, "quarantine.rows"),
                "rows_per_layer": dg.MetadataValue.md(
                    markdown_table(pd.DataFrame([{"table": t, **c} for t, c in sorted(outcome.counts.items())]))
                ),
                "quarantine_reasons": _reasons_plot(outcome),
            },
        )


def _reasons_plot(outcome: IngestOutcome) -> dg.MetadataValue:
    """Quarantined rows by table and rule, as a bar chart (or a note when nothing was quarantined)."""
    if not outcome.quarantine_reasons:
        return dg.MetadataValue.md("Nothing quarantined.")
    from cohort.figures import bar_figure

    frame = pd.DataFrame(outcome.quarantine_reasons, columns=["table", "rule", "column", "rows"])
    labels = frame["table"] + "." + frame["column"] + ": " + frame["rule"]
    png = figure_png(bar_figure(labels.tolist(), frame["rows"].tolist(), "Quarantined rows", "Rows"))
    return dg.MetadataValue.md(f"![quarantine reasons]({png_data_uri(png)})")
