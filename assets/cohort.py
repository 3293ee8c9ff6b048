"""Cohort stage: the study cohort and its analysis datasets as they stood at each quarter's data
cutoff, built in SQL (sql/cohort/*.sql, one file per transformation) under the protocol in
sql/cohort/protocol.toml."""

import dagster as dg

from cohort.dictionary import apply_column_docs
from cohort.display import markdown_table, suppress_count
from cohort.sql import run_sql, sql_text
from pipelines.metadata import column_schema, preview
from pipelines.partitions import quarter_cutoff, quarter_partitions
from pipelines.resources import StudyProtocol, Warehouse

ALL_DELIVERIES = dg.AllPartitionMapping()


def _staging(table: str) -> dg.AssetDep:
    return dg.AssetDep(["staging", table], partition_mapping=ALL_DELIVERIES)


def _build(
    context: dg.AssetExecutionContext, warehouse: Warehouse, protocol: StudyProtocol, sql_name: str, table: str
) -> dg.MaterializeResult:
    """Run one cohort SQL file for the partition's data cutoff and describe the table it filled."""
    cutoff = quarter_cutoff(context.partition_key)
    variables = protocol.load().sql_variables()
    with warehouse.get_connection() as con:
        con.execute(sql_text("cohort/schema"))
        run_sql(con, f"cohort/{sql_name}", data_cutoff=cutoff, **variables)
        apply_column_docs(con)
        rows, patients = con.execute(
            f"SELECT count(*), count(DISTINCT (source_site, patient_key)) FROM {table} WHERE data_cutoff = ?", [cutoff]
        ).fetchone()
        metadata = {
            "dagster/row_count": rows,
            "patients": suppress_count(patients),
            "data_cutoff": str(cutoff),
            "dagster/column_schema": column_schema(con, table),
            "preview": preview(con, table, "data_cutoff = ?", [cutoff]),
        }
    return dg.MaterializeResult(metadata=metadata)


def cohort_table_asset(key: list[str], sql_name: str, deps: list, description: str) -> dg.AssetsDefinition:
    table = ".".join(key)

    @dg.asset(
        key=key,
        group_name="cohort",
        kinds={"duckdb", "sql"},
        owners=["team:epidemiology"],
        partitions_def=quarter_partitions,
        deps=deps,
        pool="duckdb",
        description=f"{description} Table `{table}`; SQL `sql/cohort/{sql_name}.sql`.",
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: Warehouse, protocol: StudyProtocol) -> dg.MaterializeResult:
        return _build(context, warehouse, protocol, sql_name, table)

    return _asset


ai_episodes = cohort_table_asset(
    ["cohort", "ai_episodes"], "ai_episodes", [_staging("medications")],
    "Aromatase-inhibitor treatment episodes (anastrozole, letrozole, exemestane): dispensings joined across gaps "
    "up to the protocol's grace period, with drug and mean dose.",
)
estradiol_results = cohort_table_asset(
    ["cohort", "estradiol_results"], "estradiol_results", [_staging("labs")],
    "Estradiol tier (<10, 10-<20, 20-<40, >=40 pg/mL or unknown) per patient and collection day, censored "
    "results placed in a tier only when the limit allows it; all assays and LC-MS/MS only.",
)
exposure_segments = cohort_table_asset(
    ["cohort", "exposure_segments"], "exposure_segments",
    [["cohort", "members"], ["cohort", "ai_episodes"], ["cohort", "estradiol_results"], _staging("medications")],
    "Time-varying exposure of each member: calendar-day segments of constant current AI, estradiol tier and "
    "glucocorticoid use, from baseline to the end of follow-up.",
)
fracture_intervals = cohort_table_asset(
    ["analysis", "fracture_intervals"], "fracture_intervals", [["cohort", "exposure_segments"]],
    "Counting-process rows (start, stop] in days since index for the time-varying fracture models, split at every "
    "change of current AI, estradiol tier and glucocorticoid use, with the event (fracture, death or censored).",
)
bmd_long = cohort_table_asset(
    ["analysis", "bmd_long"], "bmd_long", [["cohort", "exposure_segments"], _staging("dxa")],
    "BMD analysis dataset: one row per member, skeletal site and standardized scan, with log sBMD, years since "
    "baseline and the years spent on AI and in each estradiol tier, for the mixed-effects models.",
)


@dg.multi_asset(
    name="cohort_members",
    specs=[
        dg.AssetSpec(
            ["cohort", "members"],
            group_name="cohort",
            kinds={"duckdb", "sql"},
            owners=["team:epidemiology"],
            deps=[["cohort", "ai_episodes"], ["cohort", "estradiol_results"],
                  *(_staging(t) for t in ("patients", "medications", "labs", "dxa", "fractures"))],
            description="The study cohort: men who are new users of testosterone therapy, with index date, baseline "
            "covariates (age, BMI, vitamin D, testosterone, estradiol and its tier, baseline sBMD per site, scanner) "
            "and follow-up to fracture, death, bone-active drug, end of enrollment or data cutoff. Table "
            "`cohort.members`; SQL `sql/cohort/members.sql`.",
        ),
        dg.AssetSpec(
            ["cohort", "attrition"],
            group_name="cohort",
            kinds={"duckdb", "sql"},
            owners=["team:epidemiology"],
            deps=[["cohort", "ai_episodes"]],
            description="The cohort flow: patients remaining and excluded at each protocol step, in order (the report's "
            "flow diagram). Table `cohort.attrition`; SQL `sql/cohort/members.sql`.",
        ),
    ],
    partitions_def=quarter_partitions,
    pool="duckdb",
    can_subset=False,
)
def cohort_members(context: dg.AssetExecutionContext, warehouse: Warehouse, protocol: StudyProtocol):
    """Build the cohort and its attrition for the quarter's data cutoff."""
    members = _build(context, warehouse, protocol, "members", "cohort.members")
    cutoff = quarter_cutoff(context.partition_key)
    with warehouse.get_connection() as con:
        attrition = con.execute(
            "SELECT step, description, patients_remaining, patients_excluded FROM cohort.attrition "
            "WHERE data_cutoff = ? ORDER BY step_order", [cutoff]
        ).df()
        in_bmd, ai_ever = con.execute(
            "SELECT count(*) FILTER (in_bmd_analysis), count(*) FILTER (ai_ever) FROM cohort.members WHERE data_cutoff = ?",
            [cutoff],
        ).fetchone()
    shown = attrition.assign(
        patients_remaining=attrition["patients_remaining"].map(suppress_count),
        patients_excluded=attrition["patients_excluded"].map(suppress_count),
    )
    yield dg.MaterializeResult(
        asset_key=["cohort", "members"],
        metadata={**members.metadata, "in_bmd_analysis": suppress_count(in_bmd), "ai_ever": suppress_count(ai_ever)},
    )
    yield dg.MaterializeResult(
        asset_key=["cohort", "attrition"],
        metadata={"dagster/row_count": len(attrition), "attrition": dg.MetadataValue.md(markdown_table(shown))},
    )
