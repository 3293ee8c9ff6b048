"""Ingest stage: each delivery folder in the landing zone -> raw, staging and quarantine in DuckDB."""

from typing import TYPE_CHECKING

import dagster as dg

from cohort.contract import TABLES
from cohort.display import markdown_image, markdown_table, suppress_count
from cohort.ingest import IngestOutcome, ingest_delivery
from cohort.sql import set_variables, sql_text
from pipelines.metadata import (
    INGEST_LAYERS,
    column_schema,
    ingest_ledger,
    preview,
    row_count,
    small_cell_threshold,
    sql_description,
    table_metadata,
)
from pipelines.partitions import delivery_partitions
from pipelines.resources import Locations, Warehouse

if TYPE_CHECKING:
    from cohort.suppression import Ledger

TABLE_MEANING = {
    "patients": "Patients of the delivery: sex at birth, birth year, enrollment window, death date.",
    "medications": "Dispensings mapped to ingredient and drug class (aromatase inhibitor, testosterone, bone-active drugs, glucocorticoids); end dates derived from days' supply.",
    "labs": "Lab results in canonical units (estradiol pg/mL, testosterone ng/dL, vitamin D ng/mL, lipids mg/dL), censored results kept with their flag.",
    "dxa": "DXA bone density per skeletal site and scan, standardized across manufacturers (sBMD) with the raw value kept.",
    "diagnoses": "ICD-10-CM diagnoses, codes normalized without the dot.",
}
INGEST_KW = dict(group_name="ingest", kinds={"duckdb", "sql"}, owners=["team:data-engineering"])

STAGING_SPECS = [
    dg.AssetSpec(
        ["staging", table],
        **INGEST_KW,
        metadata=table_metadata(f"staging.{table}"),
        description=sql_description(meaning, f"staging.{table}", f"staging/{table}", "staging/route_typed_rows"),
    )
    for table, meaning in TABLE_MEANING.items()
]
FRACTURES_SPEC = dg.AssetSpec(
    ["staging", "fractures"],
    **INGEST_KW,
    deps=[["staging", "diagnoses"]],
    metadata=table_metadata("staging.fractures"),
    description=sql_description(
        "Incident fragility fractures derived from ICD-10-CM per the contract (initial encounters only, same-site "
        "codes within 90 days merged, pathological fractures excluded).", "staging.fractures", "staging/fractures",
    ),
)
QUARANTINE_SPEC = dg.AssetSpec(
    ["quarantine", "rows"],
    **INGEST_KW,
    metadata=table_metadata("quarantine.rows"),
    description=sql_description(
        "Every delivered record that could not go to staging, with the rule it broke, its file and record number, "
        "and its original values.", "quarantine.rows", "staging/route_typed_rows",
    ),
)


def _reasons_table(ledger: "Ledger", outcome: IngestOutcome, table: str | None = None) -> str:
    """Quarantine reasons (of one table, or all) with their suppressed row counts, as markdown."""
    import pandas as pd

    frame = pd.DataFrame([
        {"table": t, "rule": rule, "column": column, "rows": ledger.text((t, "reason", rule, column))}
        for t, rule, column, _ in outcome.quarantine_reasons if table in (None, t)
    ])
    return markdown_table(frame.drop(columns="table") if table else frame, max_rows=50)


def _table_metadata(con, outcome: IngestOutcome, ledger: "Ledger", table: str) -> dict:
    metadata = {
        **row_count(ledger.get((table, "staging"))),
        "raw_rows": ledger.text((table, "raw")),
        "quarantined_rows": ledger.text((table, "quarantined")),
        "exact_duplicates_removed": ledger.text((table, "duplicates")),
        "ingest_status": outcome.status,
        "dagster/column_schema": column_schema(con, f"staging.{table}"),
        "preview": preview(con, f"staging.{table}", "delivery_id = ?", [outcome.delivery_id]),
    }
    if extras := outcome.extra_columns.get(table):
        metadata["extra_columns_kept_in_raw"] = ", ".join(extras)
    if any(r[0] == table for r in outcome.quarantine_reasons):
        metadata["quarantine_reasons"] = dg.MetadataValue.md(_reasons_table(ledger, outcome, table))
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
    # The counts that disagree, each small-cell suppressed (they no longer add up: no relation to protect).
    threshold = small_cell_threshold()
    shown = broken.assign(**{c: broken[c].map(lambda n: suppress_count(n, threshold)) for c in broken.columns if c != "table_name"})
    return dg.AssetCheckResult(
        passed=broken.empty,
        description="raw = staging + quarantine + duplicates for every table" if broken.empty
        else f"row conservation broken in: {', '.join(broken['table_name'])}",
        metadata={"broken_tables": dg.MetadataValue.md(markdown_table(shown)) if not broken.empty else "none"},
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
        outcome = ingest_delivery(con, folder, progress=context.log.info)
        context.log.info(f"delivery {outcome.delivery_id}: {outcome.status}")
        fractures = con.execute(
            "SELECT count(*) FROM staging.fractures WHERE delivery_id = ?", [outcome.delivery_id]
        ).fetchone()[0]
        counts = {table: outcome.counts.get(table, {}) for table in TABLES}
        ledger = ingest_ledger(counts, outcome.quarantine_reasons, fractures, small_cell_threshold())
        for table in TABLES:
            yield dg.MaterializeResult(asset_key=["staging", table], metadata=_table_metadata(con, outcome, ledger, table))
        yield dg.MaterializeResult(
            asset_key=["staging", "fractures"],
            metadata={
                **row_count(ledger.get("fractures")),
                "dagster/column_schema": column_schema(con, "staging.fractures"),
                "preview": preview(con, "staging.fractures", "delivery_id = ?", [outcome.delivery_id]),
            },
        )
        yield dg.MaterializeResult(
            asset_key=["quarantine", "rows"],
            metadata={
                **row_count(ledger.get("quarantined")),
                "dagster/column_schema": column_schema(con, "quarantine.rows"),
                "rows_per_layer": dg.MetadataValue.md(_layers_table(ledger)),
                "quarantine_reasons": _reasons_plot(ledger, outcome),
            },
        )


def _layers_table(ledger: "Ledger") -> str:
    import pandas as pd

    return markdown_table(pd.DataFrame(
        [{"table": t, **{layer: ledger.text((t, layer)) for layer in INGEST_LAYERS}} for t in TABLES if (t, "raw") in ledger]
    ))


def _reasons_plot(ledger: "Ledger", outcome: IngestOutcome) -> dg.MetadataValue:
    """Quarantined rows by table and rule, as a bar chart with suppressed counts (a suppressed bar is
    not drawn, only its text), with the table below it (or a note when nothing was quarantined)."""
    if not outcome.quarantine_reasons:
        return dg.MetadataValue.md("Nothing quarantined.")
    from cohort.figures import bar_figure

    labels = [f"{table}.{column}: {rule}" for table, rule, column, _ in outcome.quarantine_reasons]
    values = [n for *_, n in outcome.quarantine_reasons]
    texts = [ledger.text((table, "reason", rule, column)) for table, rule, column, _ in outcome.quarantine_reasons]
    figure = bar_figure(labels, values, "Quarantined rows", "Rows", texts=texts)
    return dg.MetadataValue.md(markdown_image(figure, "quarantine reasons") + "\n\n" + _reasons_table(ledger, outcome))
