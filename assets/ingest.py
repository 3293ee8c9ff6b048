"""Ingest stage: each delivery folder in the landing zone -> raw, staging and quarantine in DuckDB."""

import dagster as dg
import pandas as pd

from cohort.contract import TABLES
from cohort.display import markdown_table
from cohort.ingest import IngestOutcome, ingest_delivery
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


def _table_metadata(outcome: IngestOutcome, table: str) -> dict:
    counts = outcome.counts.get(table, {})
    reasons = [r for r in outcome.quarantine_reasons if r[0] == table]
    metadata = {
        "dagster/row_count": counts.get("staging", 0),
        "raw_rows": counts.get("raw", 0),
        "quarantined_rows": counts.get("quarantined", 0),
        "exact_duplicates_removed": counts.get("duplicates", 0),
        "ingest_status": outcome.status,
    }
    if reasons:
        frame = pd.DataFrame(reasons, columns=["table", "rule", "column", "rows"]).drop(columns="table")
        metadata["quarantine_reasons"] = dg.MetadataValue.md(markdown_table(frame))
    return metadata


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
        fractures = con.execute(
            "SELECT count(*) FROM staging.fractures WHERE delivery_id = ?", [outcome.delivery_id]
        ).fetchone()[0]
    context.log.info(f"delivery {outcome.delivery_id}: {outcome.status}")
    for table in TABLES:
        yield dg.MaterializeResult(asset_key=["staging", table], metadata=_table_metadata(outcome, table))
    yield dg.MaterializeResult(asset_key=["staging", "fractures"], metadata={"dagster/row_count": fractures})
    quarantined = sum(c.get("quarantined", 0) for c in outcome.counts.values())
    yield dg.MaterializeResult(
        asset_key=["quarantine", "rows"],
        metadata={
            "dagster/row_count": quarantined,
            "rows_per_layer": dg.MetadataValue.md(
                markdown_table(pd.DataFrame([{"table": t, **c} for t, c in sorted(outcome.counts.items())]))
            ),
        },
    )
